"""Ordering seen by long-polling consumers, with two server processes on one database.

The store promises per-channel ids ``1..N`` without gaps, in commit order,
and the notifier promises that a ``peek`` chain never skips nor repeats an
event, whichever process published it.  These tests drive both promises
through real HTTP, real processes and real LISTEN/NOTIFY.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.client import get, publish
from tests.servers import ServerProcess

#: Run against each (tests/deployments.py): several processes, through PgBouncer,
#: on PostgreSQL 15, and as --workers.
DEPLOYMENTS = ("embedded", "pgbouncer", "pg15", "workers")
CTX = "ordering"
PUBLISHERS = 12
EVENTS_PER_PUBLISHER = 25
TOTAL = PUBLISHERS * EVENTS_PER_PUBLISHER
#: Long-poll timeout of the consumers' peek chains.
CONSUMER_PEEK_TIMEOUT_S = 5
#: A consumer that gets this many 204s in a row after the publishers are done
#: stops: the events it still lacks are not coming.
CONSUMER_IDLE_LIMIT = 2


@pytest.fixture(scope="module")
def servers(deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Two server processes sharing one database (so one LISTEN/NOTIFY bus)."""
    procs = []
    try:
        for name in ("ordering-a", "ordering-b"):
            procs.append(ServerProcess(deployment.server_args(), tmp_path_factory.mktemp(name)).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def _sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def _channel_url(server: ServerProcess, channel: str, context: str = CTX) -> str:
    return server.url(f"/events/{context}/{channel}")


async def _peek(server: ServerProcess, channel: str, cursor: int, timeout: float,
                context: str = CTX):
    return await get(f"{_channel_url(server, channel, context)}?peek={cursor}&timeout={timeout}")


async def _publisher(server: ServerProcess, channel: str, number: int,
                     acked: list[dict[str, Any]], floors: dict[str, int]) -> None:
    """Publish EVENTS_PER_PUBLISHER events one after the other (each after the last 201).

    ``floors`` maps each event's tag to the highest id any publisher had
    been acknowledged when this publish was sent: that event committed
    before this one began, so this one's id must be higher.
    """
    for seq in range(EVENTS_PER_PUBLISHER):
        payload = {"publisher": number, "seq": seq, "tag": f"p{number}-s{seq}"}
        floors[payload["tag"]] = max((e["id"] for e in acked), default=0)
        r = await publish(server.base, CTX, channel, payload, issuer=f"publisher-{number}")
        assert r.code == 201, (number, seq, r)
        event = r.json()
        assert event["payload"] == payload
        acked.append(event)


async def _consumer(server: ServerProcess, channel: str, publishers_done: defer.Deferred,
                    ) -> list[dict[str, Any]]:
    """Walk the channel with chained peeks, as a client would, until TOTAL is reached.

    Every answer is recorded as is (not de-duplicated, not reordered), so the
    caller sees exactly what a client would have processed.
    """
    seen: list[dict[str, Any]] = []
    cursor = 0
    idle = 0
    # Bounded so that a server answering with old events cannot loop forever.
    for _ in range(TOTAL * 3):
        if cursor >= TOTAL:
            break
        r = await _peek(server, channel, cursor, CONSUMER_PEEK_TIMEOUT_S)
        if r.code == 204:
            if publishers_done.called:
                idle += 1
                if idle >= CONSUMER_IDLE_LIMIT:
                    break
            continue
        assert r.code == 200, r
        idle = 0
        event = r.json()
        seen.append(event)
        cursor = event["id"]
    return seen


@pytest_twisted.ensureDeferred
async def test_peek_chains_on_both_processes_see_every_event_once_in_gap_free_order(
        servers, channel_name):
    a, b = servers
    publishers_done: defer.Deferred = defer.Deferred()
    # Consumers first, so they are long-polling while the publishers race.
    consumers = [
        defer.ensureDeferred(_consumer(server, channel_name, publishers_done))
        for server in (a, b, b)
    ]
    await _sleep(0.3)
    acked: list[dict[str, Any]] = []
    floors: dict[str, int] = {}
    outcomes = await defer.DeferredList(
        [defer.ensureDeferred(_publisher(servers[n % 2], channel_name, n, acked, floors))
         for n in range(PUBLISHERS)],
        consumeErrors=True,
    )
    # Let the consumers finish even if a publisher failed, then report that.
    publishers_done.callback(None)
    seen_by = await defer.gatherResults(consumers, consumeErrors=True)
    for ok, failure in outcomes:
        if not ok:
            failure.raiseException()

    # Acknowledged ids: exactly 1..N, one per publish.
    assert len(acked) == TOTAL
    by_id = {e["id"]: e for e in acked}
    assert len(by_id) == TOTAL, "two publishes were acknowledged with the same id"
    assert sorted(by_id) == list(range(1, TOTAL + 1))
    expected = [by_id[i] for i in range(1, TOTAL + 1)]

    # Ids follow commit order: a publish sent after another one's 201 (by
    # any publisher, through either process) gets a higher id.
    out_of_order = [(e["id"], floors[e["payload"]["tag"]]) for e in acked
                    if e["id"] <= floors[e["payload"]["tag"]]]
    assert not out_of_order, f"(id, id acknowledged before it was sent): {out_of_order[:10]}"

    # Timestamps never go backwards along the ids.
    stamps = [e["timestamp"] for e in expected]
    assert stamps == sorted(stamps)

    for which, seen in enumerate(seen_by):
        ids = [e["id"] for e in seen]
        duplicates = sorted(i for i in set(ids) if ids.count(i) > 1)
        missing = sorted(set(range(1, TOTAL + 1)) - set(ids))
        assert not duplicates, f"consumer {which} saw ids twice: {duplicates[:20]}"
        assert not missing, f"consumer {which} never saw ids: {missing[:20]}"
        assert ids == list(range(1, TOTAL + 1)), f"consumer {which} saw ids out of order"
        # Same id, same event: issuer, timestamp, payload and all.
        assert seen == expected, f"consumer {which} saw different events"
    assert seen_by[0] == seen_by[1] == seen_by[2]

    for server in servers:
        history = await get(_channel_url(server, channel_name))
        assert history.code == 200
        assert history.json() == expected


@pytest_twisted.ensureDeferred
async def test_publish_wakes_only_waiters_of_its_own_channel(servers, channel_name):
    a, b = servers
    target = channel_name
    busy = f"{channel_name}-busy"  # has events; its waiters sit at the head
    for i in range(2):
        assert (await publish(a.base, CTX, busy, {"i": i})).code == 201
    # Channels that look like the target: a longer name, the same name in
    # another context, and a channel at its head.
    others = [
        (CTX, f"{channel_name}-x", 0),
        (f"{CTX}-other", target, 0),
        (CTX, busy, 2),
    ]
    other_waits = {
        (context, channel, server.port): defer.ensureDeferred(
            _peek(server, channel, cursor, 4, context=context))
        for (context, channel, cursor), server in itertools.product(others, servers)
    }
    own_waits = [defer.ensureDeferred(_peek(server, target, 0, 20)) for server in servers]
    await _sleep(0.5)
    assert not any(d.called for d in [*own_waits, *other_waits.values()])

    first = await publish(a.base, CTX, target, {"wake": "target"})
    assert first.code == 201 and first.json()["id"] == 1
    for r in await defer.gatherResults(own_waits, consumeErrors=True):
        assert r.code == 200, r
        assert r.json() == first.json()
    # The target's waiters were answered; nobody else may have been.
    assert [key for key, d in other_waits.items() if d.called] == []
    assert (await publish(b.base, CTX, target, {"wake": "again"})).code == 201

    results = await defer.gatherResults(list(other_waits.values()), consumeErrors=True)
    for key, r in zip(other_waits, results):
        assert r.code == 204, (key, r)
    for context, channel, _ in others:
        history = await get(_channel_url(a, channel, context))
        assert len(history.json()) == (2 if channel == busy and context == CTX else 0)


@pytest_twisted.ensureDeferred
async def test_peek_beyond_the_head_returns_only_the_next_id(servers, channel_name):
    a, b = servers
    # Nothing there yet: an immediate answer is "nothing after 5".
    assert (await _peek(a, channel_name, 5, 0)).code == 204
    waits = [defer.ensureDeferred(_peek(server, channel_name, 5, 20)) for server in servers]
    await _sleep(0.3)
    acked = []
    for i in range(6):
        r = await publish(servers[i % 2].base, CTX, channel_name, {"i": i})
        assert r.code == 201 and r.json()["id"] == i + 1, r
        acked.append(r.json())
    for r in await defer.gatherResults(waits, consumeErrors=True):
        assert r.code == 200, r
        assert r.json() == acked[5]
    for server in servers:
        r = await _peek(server, channel_name, 5, 0)
        assert r.code == 200 and r.json() == acked[5]
        assert (await _peek(server, channel_name, 6, 0)).code == 204
        r = await _peek(server, channel_name, 0, 0)
        assert r.code == 200 and r.json() == acked[0]


# -- the counter row's lock is held until the events are in -----------------------
def _waiting_appends(dsn: str) -> int:
    """Server backends running an append that wait for a lock."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND application_name = 'eventbus'"
            "   AND query LIKE '%%eventbus_append%%'")
        return cur.fetchone()[0]


def _visible(dsn: str, channel: str) -> tuple[int, list[int]]:
    """(the channel's head, the ids of its events) as any reader sees them now."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, last_id FROM channels WHERE context = %s AND channel = %s",
                    (CTX, channel))
        channel_id, head = cur.fetchone()
        cur.execute("SELECT id FROM events WHERE channel_id = %s ORDER BY id", (channel_id,))
        return head, [row[0] for row in cur.fetchall()]


@pytest_twisted.ensureDeferred
async def test_no_id_below_the_visible_head_is_missing_while_writers_are_held(
        servers, deployment, channel_name):
    """Two writers, one per process, are held after bumping the channel's
    counter and before their events are in (the test holds a lock every
    INSERT INTO events needs).  A reader must never see a head with an id
    below it missing: the counter's new value may become visible only with
    the events, in the same commit.  (If the counter were committed on its
    own first, the reader would see head 3 and events [1] here, and a
    consumer at cursor 1 could move past ids that appear a moment later.)"""
    a, b = servers
    dsn = deployment.dsn()
    assert (await publish(a.base, CTX, channel_name, {"n": 1})).code == 201
    holder = psycopg2.connect(dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE events IN SHARE MODE")  # blocks INSERTs, not reads
        first = defer.ensureDeferred(publish(a.base, CTX, channel_name, {"n": 2}))
        second = defer.ensureDeferred(publish(b.base, CTX, channel_name, {"n": 3}))
        for _ in range(200):
            if _waiting_appends(dsn) >= 2:
                break
            await _sleep(0.05)
        assert _waiting_appends(dsn) >= 2, "both writers should be held by now"
        assert not first.called and not second.called
        for _ in range(5):
            head, ids = _visible(dsn, channel_name)
            assert ids == list(range(1, head + 1)), f"head {head} visible with only ids {ids}"
            await _sleep(0.05)
        assert head == 1
    finally:
        holder.rollback()  # releases the lock: both writers go on
        holder.close()
    answers = [await first, await second]
    assert all(r.code == 201 for r in answers), answers
    assert sorted(r.json()["id"] for r in answers) == [2, 3]
    head, ids = _visible(dsn, channel_name)
    assert (head, ids) == (3, [1, 2, 3])
    history = await get(_channel_url(a, channel_name))
    assert [e["id"] for e in history.json()] == [1, 2, 3]
