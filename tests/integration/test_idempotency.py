"""Idempotent publish: a repeat of an ``Idempotency-Key`` gets the first
answer and stores nothing, whichever process it reaches and whenever it
arrives (while the first commits, after a 503, after a restart)."""
from __future__ import annotations

import json
from typing import Iterator, Optional, Union

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from eventbus.storage.conditional import ConditionalAppends, delete_expired_keys
from eventbus.storage.database import QUERY_TIMEOUT_S, Database
from tests.client import Response, get, request
from tests.servers import ServerProcess

CTX = "idem"


@pytest.fixture(scope="module")
def servers(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two server processes sharing the session's database."""
    procs = []
    try:
        for name in ("idem-a", "idem-b"):
            procs.append(ServerProcess(["--dsn", dsn], tmp_path_factory.mktemp(name)).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def post(server: ServerProcess, channel: str, body: bytes, key: Optional[Union[str, bytes]] = None,
         issuer: str = "tests", **headers: str) -> "defer.Deferred[Response]":
    sent: dict = {"X-EVENT-ISSUER": issuer, **headers}
    if key is not None:
        sent["Idempotency-Key"] = key
    return defer.ensureDeferred(
        request("POST", server.url(f"/events/{CTX}/{channel}"), data=body, headers=sent))


async def history(server: ServerProcess, channel: str) -> list[dict]:
    return (await get(server.url(f"/events/{CTX}/{channel}"))).json()


def _sleep(seconds: float) -> "defer.Deferred[None]":
    return task.deferLater(reactor, seconds, lambda: None)


def _replayed(r: Response) -> bool:
    return r.header("Idempotent-Replayed") == "true"


def _stored_keys(dsn: str, channel: str) -> list[tuple[str, int, int]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT k.key, k.first_id, k.count FROM idempotency_keys k"
                    " JOIN channels c ON c.id = k.channel_id"
                    " WHERE c.context = %s AND c.channel = %s ORDER BY k.key", (CTX, channel))
        return cur.fetchall()


# -- the replay ----------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_repeat_with_the_same_key_and_body_gets_the_original_answer_and_stores_nothing(
        servers, dsn, channel_name):
    a, b = servers
    await post(a, channel_name, b'{"before": 1}')
    body = b'{"n": 1, "big": 123456789012345678901234567890}'
    first = await post(a, channel_name, body, key="order-17")
    assert first.code == 201 and not _replayed(first), first
    for server in (a, b, a):
        again = await post(server, channel_name, body, key="order-17")
        assert again.code == 201 and _replayed(again), again
        assert again.body == first.body  # same id, same timestamp, same payload text
        assert again.header("Location") == first.header("Location") == f"/events/{CTX}/{channel_name}/2"
    assert [e["id"] for e in await history(a, channel_name)] == [1, 2]
    assert _stored_keys(dsn, channel_name) == [("order-17", 2, 1)]


@pytest_twisted.ensureDeferred
async def test_a_repeated_batch_gets_the_original_events_back(servers, channel_name):
    a, b = servers
    body = b'[{"i": 0}, {"i": 1}, {"i": 2}]'
    first = await post(a, channel_name, body, key="batch-1")
    assert first.code == 201 and [e["id"] for e in first.json()] == [1, 2, 3]
    await post(a, channel_name, b'{"after": 1}')
    again = await post(b, channel_name, body, key="batch-1")
    assert again.code == 201 and _replayed(again) and again.body == first.body
    assert again.header("Location") is None  # as the first answer
    assert [e["id"] for e in await history(a, channel_name)] == [1, 2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_a_key_reused_for_another_request_is_a_422_that_stores_nothing(servers, channel_name):
    a, b = servers
    assert (await post(a, channel_name, b'{"n": 1}', key="k")).code == 201
    for server, body, issuer in [
        (a, b'{"n": 2}', "tests"),      # another payload
        (b, b'{"n":1}', "tests"),       # equal as JSON, not byte for byte
        (a, b'[{"n": 1}]', "tests"),    # a batch of the same event
        (b, b'{"n": 1}', "someone"),    # another issuer
    ]:
        r = await post(server, channel_name, body, key="k", issuer=issuer)
        assert r.code == 422, (body, issuer, r)
        assert "Idempotency-Key" in r.json()["error"] and not _replayed(r)
    assert [e["payload"] for e in await history(a, channel_name)] == [{"n": 1}]


@pytest_twisted.ensureDeferred
async def test_keys_are_scoped_per_channel(servers, channel_name):
    a, _ = servers
    body = b'{"n": 1}'
    assert (await post(a, channel_name + "-x", b'{"x": 1}')).code == 201
    one = await post(a, channel_name + "-x", body, key="shared")
    other = await post(a, channel_name + "-y", body, key="shared")
    assert one.code == other.code == 201
    assert not _replayed(one) and not _replayed(other)
    assert (one.json()["id"], other.json()["id"]) == (2, 1)


@pytest_twisted.ensureDeferred
async def test_a_plain_publish_neither_needs_nor_leaves_a_key(servers, dsn, channel_name):
    a, _ = servers
    first = await post(a, channel_name, b'{"n": 1}')
    second = await post(a, channel_name, b'{"n": 1}')
    assert (first.json()["id"], second.json()["id"]) == (1, 2)
    assert not _replayed(second)
    assert _stored_keys(dsn, channel_name) == []


# -- concurrency and the commit -------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_requests_with_one_key_through_two_processes_store_one_event(
        servers, channel_name):
    body = b'{"payment": 4242}'
    answers = await defer.gatherResults(
        [post(servers[i % 2], channel_name, body, key="pay-4242") for i in range(50)])
    assert all(r.code == 201 for r in answers), [r for r in answers if r.code != 201][:3]
    assert {r.json()["id"] for r in answers} == {1}
    assert len({r.body for r in answers}) == 1
    assert sum(not _replayed(r) for r in answers) == 1
    assert len(await history(servers[0], channel_name)) == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_with_distinct_keys_are_each_stored_once(servers, channel_name):
    bodies = [json.dumps({"i": i}).encode() for i in range(40)]
    answers = await defer.gatherResults(
        [post(servers[i % 2], channel_name, body, key=f"k{i % 20}-{i // 20}")
         for i, body in enumerate(bodies)]
        + [post(servers[i % 2], channel_name, body, key=f"k{i % 20}-{i // 20}")
           for i, body in enumerate(bodies)])
    assert all(r.code == 201 for r in answers)
    first, repeat = answers[:40], answers[40:]
    for one, two in zip(first, repeat):
        assert one.body == two.body
    assert sum(_replayed(r) for r in answers) == 40
    stored = await history(servers[0], channel_name)
    assert [e["id"] for e in stored] == list(range(1, 41))
    assert sorted(e["payload"]["i"] for e in stored) == list(range(40))


def _hold_channel(dsn: str, channel: str) -> "psycopg2.extensions.connection":
    """Lock the channel's row as a writer does: appends to it wait until rollback."""
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT last_id FROM channels WHERE context = %s AND channel = %s FOR UPDATE",
                    (CTX, channel))
        assert cur.fetchone() is not None
    return conn


def _waiting_appends(dsn: str) -> list[int]:
    """Backends of server processes held in a conditional append by a lock."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name = 'eventbus' AND query LIKE '%%eventbus_append_checked%%'")
        return [row[0] for row in cur.fetchall()]


async def _until_waiting(dsn: str, count: int) -> list[int]:
    for _ in range(200):
        pids = await threads.deferToThread(_waiting_appends, dsn)
        if len(pids) >= count:
            return pids
        await _sleep(0.05)
    raise AssertionError(f"expected {count} appends waiting for the channel lock")


@pytest_twisted.ensureDeferred
async def test_a_repeat_arriving_while_the_first_commits_waits_and_gets_the_replay(
        servers, dsn, channel_name):
    a, b = servers
    assert (await post(a, channel_name, b'{"n": 0}')).code == 201
    holder = _hold_channel(dsn, channel_name)
    try:
        first = post(a, channel_name, b'{"n": 1}', key="slow")
        await _until_waiting(dsn, 1)
        repeat = post(b, channel_name, b'{"n": 1}', key="slow")
        await _until_waiting(dsn, 2)
        assert not first.called and not repeat.called
    finally:
        holder.rollback()
        holder.close()
    answers = [await first, await repeat]
    assert [r.code for r in answers] == [201, 201], answers
    assert answers[0].body == answers[1].body and answers[0].json()["id"] == 2
    assert sorted(_replayed(r) for r in answers) == [False, True]
    assert len(await history(a, channel_name)) == 2


@pytest_twisted.ensureDeferred
async def test_a_retry_after_a_503_replays_the_publish_that_committed_meanwhile(
        servers, dsn, channel_name):
    """A 503 means "outcome unknown": the statement was still waiting when
    the server gave up on it, and committed later."""
    a, b = servers
    assert (await post(a, channel_name, b'{"n": 0}')).code == 201
    holder = _hold_channel(dsn, channel_name)
    try:
        first = post(a, channel_name, b'{"n": 1}', key="retry-me")
        await _until_waiting(dsn, 1)
        r = await first
        assert r.code == 503, r
    finally:
        holder.rollback()  # the held statement goes on and commits
        holder.close()
    for server in (b, a):
        retry = await post(server, channel_name, b'{"n": 1}', key="retry-me")
        assert retry.code == 201 and _replayed(retry), retry
        assert retry.json()["id"] == 2
    assert [e["id"] for e in await history(a, channel_name)] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_a_publish_rolled_back_after_its_503_leaves_no_key_and_its_retry_stores_it(
        servers, dsn, channel_name):
    a, b = servers
    assert (await post(a, channel_name, b'{"n": 0}')).code == 201
    holder = _hold_channel(dsn, channel_name)
    try:
        first = post(a, channel_name, b'{"n": 1}', key="lost")
        [pid] = await _until_waiting(dsn, 1)
        assert (await first).code == 503
        with holder.cursor() as cur:  # its connection dies: the transaction rolls back
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        holder.rollback()
        holder.close()
    assert _stored_keys(dsn, channel_name) == []
    retry = await post(b, channel_name, b'{"n": 1}', key="lost")
    assert retry.code == 201 and not _replayed(retry), retry
    assert [e["id"] for e in await history(a, channel_name)] == [1, 2]
    again = await post(a, channel_name, b'{"n": 1}', key="lost")
    assert again.code == 201 and _replayed(again) and again.body == retry.body


# -- time: restarts and the window ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_replays_survive_a_server_restart(dsn, tmp_path, channel_name):
    body = b'{"n": 1}'
    server = ServerProcess(["--dsn", dsn], tmp_path / "before").start()
    try:
        first = await post(server, channel_name, body, key="durable")
        assert first.code == 201
    finally:
        server.stop()
    server = ServerProcess(["--dsn", dsn], tmp_path / "after").start()
    try:
        again = await post(server, channel_name, body, key="durable")
        assert again.code == 201 and _replayed(again) and again.body == first.body
        assert len(await history(server, channel_name)) == 1
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_key_older_than_the_window_is_forgotten(dsn, tmp_path, channel_name):
    server = ServerProcess(["--dsn", dsn, "--idempotency-window", "1"], tmp_path / "s").start()
    try:
        body = b'{"n": 1}'
        first = await post(server, channel_name, body, key="short")
        assert (await post(server, channel_name, body, key="short")).json()["id"] == 1
        await _sleep(1.5)
        # Not pruned (no pruner ran), yet past the window: a new publish.
        later = await post(server, channel_name, body, key="short")
        assert later.code == 201 and not _replayed(later) and later.json()["id"] == 2
        assert first.json()["id"] == 1
        assert _stored_keys(dsn, channel_name) == [("short", 2, 1)]
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_expired_keys_are_deleted_in_small_batches(servers, dsn, channel_name):
    a, _ = servers
    for i in range(5):
        assert (await post(a, channel_name, b'{"n": %d}' % i, key=f"old-{i}")).code == 201
    database = Database(reactor, dsn, pool_size=1)
    await database.open()
    try:
        # Younger than the window: kept.
        assert await delete_expired_keys(database, 3600.0, limit=2) >= 0
        assert len(_stored_keys(dsn, channel_name)) == 5
        await _sleep(1.2)
        deleted = []
        while True:  # as the pruner does: until a batch is not full
            n = await delete_expired_keys(database, 1.0, limit=2)
            assert n <= 2
            deleted.append(n)
            if n < 2:
                break
        assert sum(deleted) >= 5 and len(deleted) >= 3
        assert _stored_keys(dsn, channel_name) == []
        # The pruner's step does the same, batch after batch.
        for i in range(3):
            assert (await post(a, channel_name, b'{"m": %d}' % i, key=f"step-{i}")).code == 201
        step = ConditionalAppends(database, lambda *_: None, window_s=3600.0).prune_expired_keys
        assert await step() >= 0 and len(_stored_keys(dsn, channel_name)) == 3
        await _sleep(1.2)
        assert await ConditionalAppends(database, lambda *_: None, window_s=1.0).prune_expired_keys() >= 3
        assert _stored_keys(dsn, channel_name) == []
    finally:
        database.close()
    # Forgotten: the same key stores again.
    r = await post(a, channel_name, b'{"n": 0}', key="old-0")
    assert r.code == 201 and not _replayed(r) and r.json()["id"] == 9


# -- bad values -------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_bad_idempotency_keys_are_400s_that_store_nothing(servers, channel_name):
    a, _ = servers
    for key in [b"", b"  ", b"k" * 256, "café".encode(), b"a b", b"tab\there", b"\x7f"]:
        r = await post(a, channel_name, b'{"n": 1}', key=key)
        assert r.code == 400 and "Idempotency-Key" in r.json()["error"], (key, r)
    ok = await post(a, channel_name, b'{"n": 1}', key="k" * 255)
    assert ok.code == 201 and ok.json()["id"] == 1
    assert len(await history(a, channel_name)) == 1
