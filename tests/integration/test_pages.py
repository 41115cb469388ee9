"""Reads of runs of events are bounded in bytes: the store against a real
PostgreSQL (storage/pages.py).

Each read (pages, wake-up reads, a consumer's dead letters) is checked for what it returns (a prefix of the range, in order,
payloads exactly as published, at most the budget or one event) and for
what the database sent to get it: the payloads left out of a page are never
fetched.
"""
from __future__ import annotations

import json
import os
from base64 import b64encode
from typing import Any, AsyncIterator

import pytest_twisted

from eventbus.storage.consumers import ConsumerStore
from eventbus.storage.migrate import migrate
from eventbus.storage.pages import PAGE_BYTES
from tests.client import request
from tests.inprocess import Publisher

CTX = "pages"
KB = 1024


def payload(size: int, tag: int) -> str:
    """A JSON object of exactly ``size`` bytes of random text."""
    head = '{"n": %d, "s": "' % tag
    body = b64encode(os.urandom(size)).decode()[: size - len(head) - 2]
    text = head + body + '"}'
    assert len(text.encode()) == size
    return text


class Recorded:
    """Wraps a database's query to add up the payload text it returned."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self.original = database.query
        self.text = 0
        self.queries = 0
        database.query = self.query

    async def query(self, sql: str, params: Any = None, timeout: Any = None) -> Any:
        rows = await self.original(sql, params, timeout)
        self.queries += 1
        self.text += sum(len(v) for row in rows for v in row if isinstance(v, str))
        return rows

    def restore(self) -> None:
        self.database.query = self.original


@pytest_twisted.async_yield_fixture
async def store(dsn: str) -> AsyncIterator[Publisher]:
    publisher = await Publisher(dsn).open()
    try:
        await migrate(publisher.database)
        yield publisher
    finally:
        publisher.close()


async def publish(store: Publisher, channel: str, payloads: list[str]) -> None:
    for p in payloads:  # one at a time: a batch is bounded by --max-body only
        await store.events.append(CTX, channel, "tests", [p])


@pytest_twisted.ensureDeferred
async def test_pages_stop_at_the_byte_budget_and_never_fetch_what_they_leave_out(store, channel_name):
    sizes = [100, 300 * KB, 300 * KB, 300 * KB, 300 * KB, 100, 3 * PAGE_BYTES, 100, 200, 600 * KB, 600 * KB]
    payloads = [payload(size, n) for n, size in enumerate(sizes, start=1)]
    await publish(store, channel_name, payloads)
    recorded = Recorded(store.database)
    try:
        pages, after = [], 0
        while True:
            before = recorded.text
            page = await store.events.page(CTX, channel_name, after, len(sizes))
            fetched = recorded.text - before
            pages.append([e.id for e in page])
            assert page, "a page is never empty while the range holds events"
            total = sum(len(e.payload.encode()) for e in page)
            assert total <= PAGE_BYTES or len(page) == 1, (pages, total)
            # What the database sent: the page, plus small payloads it dropped.
            assert fetched <= total + PAGE_BYTES, (pages, fetched, total)
            for event in page:
                assert event.payload == payloads[event.id - 1]
            after = page[-1].id
            if not page.cut:
                break
    finally:
        recorded.restore()
    assert pages == [[1, 2, 3, 4], [5, 6], [7], [8, 9, 10], [11]]
    assert [i for p in pages for i in p] == list(range(1, len(sizes) + 1))


@pytest_twisted.ensureDeferred
async def test_a_page_of_small_events_is_cut_at_its_count_and_takes_one_round_trip(store, channel_name):
    await store.append(CTX, channel_name, "tests", json.dumps([{"n": n} for n in range(30)]))
    recorded = Recorded(store.database)
    try:
        page = await store.events.page(CTX, channel_name, 0, 30, limit=10)
        assert [e.id for e in page] == list(range(1, 11)) and page.cut
        assert recorded.queries == 1
        last = await store.events.page(CTX, channel_name, 20, 30, limit=10)
        assert [e.id for e in last] == list(range(21, 31)) and not last.cut
        assert (await store.events.page(CTX, channel_name, 30, 30)) == []
    finally:
        recorded.restore()


@pytest_twisted.ensureDeferred
async def test_the_budget_counts_utf8_bytes_as_stored(store, channel_name):
    wide = '{"s": "%s"}' % ("é" * 1000)  # 2 bytes a character in UTF-8
    await publish(store, channel_name, [wide, wide, wide])
    page = await store.events.page(CTX, channel_name, 0, 3, max_bytes=2 * len(wide))
    assert [e.id for e in page] == [1] and page.cut
    assert page[0].payload == wide


@pytest_twisted.ensureDeferred
async def test_a_wake_up_read_always_has_the_events_waited_for_and_reads_ahead_within_the_budget(
        store, channel_name):
    big = [payload(400 * KB, n) for n in range(1, 9)]
    await publish(store, channel_name, big)
    found = await store.events.events_by_id(CTX, channel_name, {1, 7}, range(1, 9))
    # 1 and 7 are waited for; of the read-ahead, what fits after them.
    assert sorted(found) == [1, 2, 7]
    assert all(found[i].payload == big[i - 1] for i in found)
    everything = await store.events.events_by_id(CTX, channel_name, {1, 2, 3, 4, 5}, ())
    assert sorted(everything) == [1, 2, 3, 4, 5]  # waited for: never cut


@pytest_twisted.ensureDeferred
async def test_dead_letters_are_listed_in_full_a_bounded_page_at_a_time(server, store, channel_name):
    """A consumer's dead letters (GET .../dead) are read like the history:
    pages within the byte budget, streamed; the list is whole and in order."""
    big = [payload(400 * KB, n) for n in range(1, 6)]
    await publish(store, channel_name, big)
    base = server.url(f"/consumers/{CTX}/{channel_name}/poison")
    assert (await request("PUT", base, json_body={"max_deliveries": 1})).code == 201
    for _ in big:  # a nack of the last allowed delivery dead-letters it
        leased = await request("POST", f"{base}/next?timeout=0")
        assert leased.code == 200, leased
        nacked = await request("POST", f"{base}/nack", json_body={"lease": leased.json()["lease"]})
        assert nacked.code == 204
    listed = await request("GET", f"{base}/dead")
    assert listed.code == 200
    assert [(d["event"]["id"], d["deliveries"]) for d in listed.json()] == [(n, 1) for n in range(1, 6)]
    assert [json.dumps(d["event"]["payload"]) for d in listed.json()] == [
        json.dumps(json.loads(p)) for p in big]
    consumers = ConsumerStore(store.database)
    first, more = await consumers.dead(CTX, channel_name, "poison")
    assert [d.event.id for d in first] == [1, 2] and more
    rest, more = await consumers.dead(CTX, channel_name, "poison", after=4)
    assert [d.event.id for d in rest] == [5] and not more
    unknown = await request("GET", server.url(f"/consumers/{CTX}/{channel_name}/nobody/dead"))
    assert unknown.code == 404
