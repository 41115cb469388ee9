"""Expected-Last-Id: store only if the channel's last id is the expected one
at commit time, else a 409 naming the last id; a failed expectation never
fails its neighbours, and of writers racing on one expectation exactly one
wins, across processes."""
from __future__ import annotations

import json
from typing import Iterator, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.client import Response, get, request
from tests.servers import ServerProcess

CTX = "expect"


@pytest.fixture(scope="module")
def servers(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two server processes sharing the session's database."""
    procs = []
    try:
        for name in ("expect-a", "expect-b"):
            procs.append(ServerProcess(["--dsn", dsn], tmp_path_factory.mktemp(name)).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def post(server: ServerProcess, channel: str, body: bytes, expected: Optional[object] = None,
         key: Optional[str] = None) -> "defer.Deferred[Response]":
    headers = {"X-EVENT-ISSUER": "tests"}
    if expected is not None:
        headers["Expected-Last-Id"] = str(expected)
    if key is not None:
        headers["Idempotency-Key"] = key
    return defer.ensureDeferred(
        request("POST", server.url(f"/events/{CTX}/{channel}"), data=body, headers=headers))


async def ids(server: ServerProcess, channel: str) -> list[int]:
    return [e["id"] for e in (await get(server.url(f"/events/{CTX}/{channel}"))).json()]


def assert_conflict(r: Response, last_id: int) -> None:
    assert r.code == 409, r
    assert r.header("Content-Type") == "application/json"
    body = r.json()
    assert body["last_id"] == last_id and "Expected-Last-Id" in body["error"], body


@pytest_twisted.ensureDeferred
async def test_zero_expects_an_empty_channel_and_a_wrong_expectation_is_a_409_with_the_last_id(
        servers, channel_name):
    a, b = servers
    assert_conflict(await post(a, channel_name, b'{"n": 0}', expected=1), 0)
    first = await post(a, channel_name, b'{"n": 1}', expected=0)
    assert first.code == 201 and first.json()["id"] == 1
    assert first.header("Location") == f"/events/{CTX}/{channel_name}/1"
    assert_conflict(await post(b, channel_name, b'{"n": 2}', expected=0), 1)
    assert_conflict(await post(b, channel_name, b'{"n": 2}', expected=7), 1)
    second = await post(b, channel_name, b'{"n": 2}', expected=1)
    assert second.code == 201 and second.json()["id"] == 2
    assert await ids(a, channel_name) == [1, 2]


@pytest_twisted.ensureDeferred
async def test_a_batch_is_stored_whole_when_its_expectation_holds_and_not_at_all_when_not(
        servers, channel_name):
    a, _ = servers
    batch = b'[{"i": 0}, {"i": 1}, {"i": 2}]'
    r = await post(a, channel_name, batch, expected=0)
    assert r.code == 201 and [e["id"] for e in r.json()] == [1, 2, 3]
    assert_conflict(await post(a, channel_name, batch, expected=0), 3)
    r = await post(a, channel_name, batch, expected=3)
    assert r.code == 201 and [e["id"] for e in r.json()] == [4, 5, 6]
    assert await ids(a, channel_name) == [1, 2, 3, 4, 5, 6]


@pytest_twisted.ensureDeferred
async def test_writers_racing_on_one_expectation_through_two_processes_exactly_one_wins(
        servers, channel_name):
    a, b = servers
    assert (await post(a, channel_name, b'[{"n": 1}, {"n": 2}]')).code == 201
    for round_ in range(3):
        head = 2 + round_
        answers = await defer.gatherResults([
            post(servers[i % 2], channel_name, json.dumps({"writer": i}).encode(), expected=head)
            for i in range(20)])
        winners = [r for r in answers if r.code == 201]
        assert len(winners) == 1, answers
        assert winners[0].json()["id"] == head + 1
        for r in answers:
            if r.code != 201:
                assert_conflict(r, head + 1)
    assert await ids(a, channel_name) == [1, 2, 3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_a_failed_expectation_does_not_fail_its_neighbours_in_the_group(servers, channel_name):
    """Plain and conditional publishes, all at once on one process (they
    share group commits): every plain one is stored, of the conditional
    ones exactly those whose expectation holds, with gapless ids."""
    a, _ = servers
    plain = [post(a, channel_name, json.dumps({"plain": i}).encode()) for i in range(30)]
    doomed = [post(a, channel_name, b'{"doomed": 1}', expected=10**6) for _ in range(10)]
    other = f"{channel_name}-new"
    fresh = [post(a, other, json.dumps({"w": i}).encode(), expected=0) for i in range(10)]
    answers = await defer.gatherResults(plain + doomed + fresh)
    assert all(r.code == 201 for r in answers[:30]), answers[:30]
    for r in answers[30:40]:
        assert r.code == 409 and r.json()["last_id"] in range(0, 31), r
    assert sorted(r.code for r in answers[40:]) == [201] + [409] * 9
    assert [r.json()["last_id"] for r in answers[40:] if r.code == 409] == [1] * 9
    assert await ids(a, channel_name) == list(range(1, 31))
    assert await ids(a, other) == [1]


@pytest_twisted.ensureDeferred
async def test_an_expectation_chain_from_one_writer_never_loses_or_duplicates(servers, channel_name):
    """A writer that always expects what it last saw, racing a plain
    publisher: every 409 tells it where to resume, and it never overwrites."""
    a, b = servers
    head, stored = 0, 0
    background = [post(b, channel_name, b'{"plain": 1}') for _ in range(20)]
    while stored < 10:
        r = await post(a, channel_name, b'{"mine": 1}', expected=head)
        if r.code == 201:
            head = r.json()["id"]
            stored += 1
        else:
            assert r.code == 409, r
            assert r.json()["last_id"] > head
            head = r.json()["last_id"]
    assert all(r.code == 201 for r in await defer.gatherResults(background))
    assert await ids(a, channel_name) == list(range(1, 31))


@pytest_twisted.ensureDeferred
async def test_a_retry_with_its_key_replays_even_once_the_expectation_is_stale(servers, channel_name):
    a, b = servers
    first = await post(a, channel_name, b'{"n": 1}', expected=0, key="once")
    assert first.code == 201
    again = await post(b, channel_name, b'{"n": 1}', expected=0, key="once")
    assert again.code == 201 and again.header("Idempotent-Replayed") == "true"
    assert again.body == first.body
    assert await ids(a, channel_name) == [1]


@pytest_twisted.ensureDeferred
async def test_a_keyed_publish_whose_expectation_failed_leaves_no_key(servers, channel_name):
    a, _ = servers
    assert (await post(a, channel_name, b'{"n": 0}')).code == 201
    assert_conflict(await post(a, channel_name, b'{"n": 1}', expected=0, key="k"), 1)
    r = await post(a, channel_name, b'{"n": 1}', expected=1, key="k")
    assert r.code == 201 and r.header("Idempotent-Replayed") is None and r.json()["id"] == 2


@pytest_twisted.ensureDeferred
async def test_a_conditional_publish_wakes_waiters_in_every_process(servers, channel_name):
    a, b = servers
    url = f"/events/{CTX}/{channel_name}?peek=0&timeout=20"
    waiters = [defer.ensureDeferred(get(server.url(url))) for server in servers]
    await task.deferLater(reactor, 0.3, lambda: None)
    r = await post(a, channel_name, b'{"n": 1}', expected=0, key="wake")
    assert r.code == 201
    for w in await defer.gatherResults(waiters):
        assert w.code == 200 and w.json() == r.json()


@pytest_twisted.ensureDeferred
async def test_bad_expectations_are_400s_that_store_nothing(servers, channel_name):
    a, _ = servers
    for value in ["-1", "abc", "1.5", "", "9223372036854775807", "0x10", "+1"]:
        r = await post(a, channel_name, b'{"n": 1}', expected=value)
        assert r.code == 400 and "Expected-Last-Id" in r.json()["error"], (value, r)
    assert await ids(a, channel_name) == []
