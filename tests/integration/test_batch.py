"""Batch publish and group commit: atomicity, order, 201 only after commit."""
from __future__ import annotations

import psycopg2
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from tests.client import get, publish, request

CTX = "batch"


def _post(server, channel, body: bytes, issuer: str = "tests"):
    return request("POST", server.url(f"/events/{CTX}/{channel}"), data=body,
                   headers={"X-EVENT-ISSUER": issuer})


@pytest_twisted.ensureDeferred
async def test_batch_is_stored_in_array_order_and_returned(server, channel_name):
    await publish(server.base, CTX, channel_name, {"before": True})
    body = b'[{"i": 0}, {"i": 1, "big": 123456789012345678901234567890}, {"i": 2}]'
    r = await _post(server, channel_name, body)
    assert r.code == 201, r
    events = r.json()
    assert [e["id"] for e in events] == [2, 3, 4]
    assert [e["payload"]["i"] for e in events] == [0, 1, 2]
    assert len({e["timestamp"] for e in events}) == 1
    assert b"123456789012345678901234567890" in r.body  # exact text kept
    stored = await get(server.url(f"/events/{CTX}/{channel_name}"))
    assert stored.json()[1:] == events


@pytest_twisted.ensureDeferred
async def test_bad_batches_are_refused_whole_and_store_nothing(server, channel_name):
    for body, status in [
        (b"[]", 400),
        (b'[{"ok": 1}, 2]', 400),
        (b'[{"ok": 1}, [{"nested": 1}]]', 400),
        (b'[{"ok": 1}, null]', 400),
        (b'[{"ok": 1}, {"bad": NaN}]', 400),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", 413),
    ]:
        r = await _post(server, channel_name, body)
        assert r.code == status, (body[:40], r)
        assert r.json()["error"]
    stored = await get(server.url(f"/events/{CTX}/{channel_name}"))
    assert stored.json() == []


@pytest_twisted.ensureDeferred
async def test_concurrent_batches_are_each_contiguous_and_ordered(server, channel_name):
    batches = 12
    size = 25
    posts = [
        _post(server, channel_name,
              ("[" + ",".join(f'{{"b": {b}, "i": {i}}}' for i in range(size)) + "]").encode())
        for b in range(batches)
    ]
    results = await defer.gatherResults([defer.ensureDeferred(p) for p in posts])
    for r in results:
        assert r.code == 201, r
        events = r.json()
        ids = [e["id"] for e in events]
        assert ids == list(range(ids[0], ids[0] + size))
        assert [e["payload"]["i"] for e in events] == list(range(size))
        assert len({e["payload"]["b"] for e in events}) == 1
    stored = (await get(server.url(f"/events/{CTX}/{channel_name}"))).json()
    assert [e["id"] for e in stored] == list(range(1, batches * size + 1))
    # Each batch occupies one contiguous run, in array order.
    for start in range(0, batches * size, size):
        run = stored[start:start + size]
        assert len({e["payload"]["b"] for e in run}) == 1
        assert [e["payload"]["i"] for e in run] == list(range(size))


@pytest_twisted.ensureDeferred
async def test_concurrent_publishes_are_grouped_into_fewer_commits(server, dsn, channel_name):
    def commits() -> int:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_stat_force_next_flush()")
                cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                return cur.fetchone()[0]
        finally:
            conn.close()

    before = await threads.deferToThread(commits)
    n = 200
    channels = [f"{channel_name}-{i % 4}" for i in range(n)]
    results = await defer.gatherResults([
        defer.ensureDeferred(publish(server.base, CTX, ch, {"i": i}))
        for i, ch in enumerate(channels)
    ])
    assert all(r.code == 201 for r in results)
    after = await threads.deferToThread(commits)
    # Without grouping there would be at least one commit per publish.
    assert after - before < n * 0.8, (before, after)
    for i in range(4):
        stored = (await get(server.url(f"/events/{CTX}/{channel_name}-{i}"))).json()
        assert [e["id"] for e in stored] == list(range(1, n // 4 + 1))


@pytest_twisted.ensureDeferred
async def test_201_is_sent_only_after_commit(server, dsn, channel_name):
    await publish(server.base, CTX, channel_name, {"i": 0})
    conn = psycopg2.connect(dsn)
    try:
        cur = conn.cursor()
        # Hold the channel's counter row: the next append cannot commit.
        cur.execute("SELECT last_id FROM channels WHERE context = %s AND channel = %s FOR UPDATE",
                    (CTX, channel_name))
        pending = defer.ensureDeferred(publish(server.base, CTX, channel_name, {"i": 1}))
        await task.deferLater(reactor, 1.0, lambda: None)
        assert not pending.called, "201 before the transaction could commit"
        conn.rollback()  # release the row lock
        r = await pending
        assert r.code == 201 and r.json()["id"] == 2
        # Committed: visible to an independent connection right away.
        cur.execute("SELECT count(*) FROM events e JOIN channels c ON c.id = e.channel_id"
                    " WHERE c.context = %s AND c.channel = %s", (CTX, channel_name))
        assert cur.fetchone()[0] == 2
    finally:
        conn.close()
