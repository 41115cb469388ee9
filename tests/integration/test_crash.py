"""Durability across ``kill -9`` of a server process.

A 201 is sent only after commit, so whatever a client saw acknowledged must
survive the process dying at any instant, with its id and payload; requests
cut off by the crash may or may not have been stored, but at most once each,
and the id sequence stays ``1..N`` without gaps.  A restarted process goes on
from ``N + 1``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import psycopg2
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from tests.client import get, publish
from tests.servers import ServerProcess

CTX = "crash"
CLIENTS = 8
#: Acknowledged events to wait for before pulling the plug.
KILL_AFTER_ACKS = 120
#: Give up on reaching KILL_AFTER_ACKS after this many seconds (kill anyway).
KILL_DEADLINE_S = 20.0
ORPHAN_WAIT_S = 30.0
WALK_PEEK_TIMEOUT_S = 1
WALK_IDLE_LIMIT = 3
WALK_MAX_STEPS = 2000


def _sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def _start(proc: ServerProcess) -> defer.Deferred:
    """Start a server without blocking the reactor while it gets ready."""
    return threads.deferToThread(proc.start)


def _wait_for_orphaned_appends(dsn: str) -> None:
    """Wait until no database session still runs an append of a killed process.

    PostgreSQL notices a dead client only when it next talks to it, so a
    publish that was executing at the kill commits (unacknowledged) a moment
    later.  Counting events before that would race with it.
    """
    deadline = time.monotonic() + ORPHAN_WAIT_S
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE pid <> pg_backend_pid() AND state <> 'idle'"
                    " AND query LIKE '%%eventbus_append%%'"
                )
                if cur.fetchone()[0] == 0:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError("appends of the killed process never finished")
                time.sleep(0.05)
    finally:
        conn.close()


async def _publish_until_failure(base: str, channel: str, client: int,
                                 acked: list[dict[str, Any]],
                                 unconfirmed: list[dict[str, Any]]) -> None:
    """Publish one event after another until a request gets no 201."""
    seq = 0
    while True:
        payload = {"client": client, "seq": seq, "tag": f"c{client}-s{seq}"}
        seq += 1
        try:
            r = await publish(base, CTX, channel, payload, issuer=f"client-{client}")
        except Exception:
            unconfirmed.append(payload)  # reset or refused: outcome unknown
            return
        if r.code != 201:
            unconfirmed.append(payload)
            return
        event = r.json()
        assert event["payload"] == payload
        acked.append(event)


async def _walk(server: ServerProcess, channel: str, until: list[int]) -> list[dict[str, Any]]:
    """A consumer chaining peeks until its cursor reaches ``until[0]`` once that is set."""
    seen: list[dict[str, Any]] = []
    cursor = 0
    idle = 0
    for _ in range(WALK_MAX_STEPS):
        if until and cursor >= until[0]:
            break
        r = await get(server.url(
            f"/events/{CTX}/{channel}?peek={cursor}&timeout={WALK_PEEK_TIMEOUT_S}"))
        if r.code == 204:
            idle += 1 if until else 0
            if idle >= WALK_IDLE_LIMIT:
                break
            continue
        assert r.code == 200, r
        idle = 0
        seen.append(r.json())
        cursor = seen[-1]["id"]
    return seen


def _check_survivors(stored: list[dict[str, Any]], acked: list[dict[str, Any]],
                     unconfirmed: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in stored]
    n = len(stored)
    assert ids == list(range(1, n + 1)), "stored ids are not 1..N"
    by_id = {e["id"]: e for e in stored}
    acked_ids = [e["id"] for e in acked]
    assert len(set(acked_ids)) == len(acked_ids), "two publishes acknowledged with one id"
    lost = [e for e in acked if by_id.get(e["id"]) != e]
    assert not lost, f"{len(lost)} acknowledged events lost or altered, e.g. {lost[:3]}"
    # Each request cut off by the crash is stored at most once, and nothing
    # else is stored: N lies between the acknowledged and the attempted.
    assert len(acked) <= n <= len(acked) + len(unconfirmed)
    tags = [e["payload"]["tag"] for e in stored]
    assert len(set(tags)) == len(tags), "an event was stored twice"
    attempted = {p["tag"] for p in unconfirmed} | {e["payload"]["tag"] for e in acked}
    assert set(tags) <= attempted
    # A client publishes its next event only after the last 201: its ids
    # follow its own order.
    for client in range(CLIENTS):
        mine = [e["id"] for e in sorted(stored, key=lambda e: e["payload"]["seq"])
                if e["payload"]["client"] == client]
        assert mine == sorted(mine), (client, mine)


@pytest_twisted.ensureDeferred
async def test_acknowledged_events_survive_kill_9_during_concurrent_publishing(
        dsn, tmp_path: Path, channel_name):
    victim = ServerProcess(["--dsn", dsn], tmp_path / "victim")
    # Another process whose consumer walks the channel through the crash:
    # events committed by the victim's sessions after its death (never
    # acknowledged) must still reach it, like every other event.
    witness = ServerProcess(["--dsn", dsn], tmp_path / "witness")
    survivor: Optional[ServerProcess] = None
    try:
        await defer.gatherResults([_start(victim), _start(witness)], consumeErrors=True)
        final_count: list[int] = []
        walker = defer.ensureDeferred(_walk(witness, channel_name, final_count))
        acked: list[dict[str, Any]] = []
        unconfirmed: list[dict[str, Any]] = []
        clients = defer.DeferredList(
            [defer.ensureDeferred(
                _publish_until_failure(victim.base, channel_name, c, acked, unconfirmed))
             for c in range(CLIENTS)],
            consumeErrors=True,
        )
        deadline = time.monotonic() + KILL_DEADLINE_S
        while len(acked) < KILL_AFTER_ACKS and not clients.called \
                and time.monotonic() < deadline:
            await _sleep(0.02)
        assert not clients.called, f"publishing stopped before the kill: {victim.log_tail()}"
        victim.kill()
        for ok, failure in await clients:
            if not ok:
                failure.raiseException()
        assert acked, "nothing was acknowledged before the kill"
        assert len(unconfirmed) == CLIENTS  # every client ended on the crash

        # A new process on the same port, as after a restart by a supervisor.
        await threads.deferToThread(_wait_for_orphaned_appends, dsn)
        survivor = ServerProcess(["--dsn", dsn], tmp_path / "survivor", port=victim.port)
        await _start(survivor)
        history = await get(survivor.url(f"/events/{CTX}/{channel_name}"))
        assert history.code == 200
        stored = history.json()
        _check_survivors(stored, acked, unconfirmed)
        final_count.append(len(stored))
        assert await walker == stored
        for event in acked[:: max(1, len(acked) // 10)]:
            one = await get(survivor.url(f"/events/{CTX}/{channel_name}/{event['id']}"))
            assert one.code == 200 and one.json() == event

        # The sequence goes on from N + 1, and a waiter at the head sees it.
        n = len(stored)
        waiter = defer.ensureDeferred(
            get(survivor.url(f"/events/{CTX}/{channel_name}?peek={n}&timeout=20")))
        r = await publish(survivor.base, CTX, channel_name, {"after": "restart"})
        assert r.code == 201 and r.json()["id"] == n + 1
        woken = await waiter
        assert woken.code == 200 and woken.json() == r.json()
        r = await publish(survivor.base, CTX, channel_name, {"after": "restart", "n": 2})
        assert r.code == 201 and r.json()["id"] == n + 2
    finally:
        for proc in (victim, witness, survivor):
            if proc is not None:
                proc.stop()


@pytest_twisted.ensureDeferred
async def test_restarted_process_continues_the_sequence_and_wakes_other_processes(
        dsn, tmp_path: Path, channel_name):
    url = f"/events/{CTX}/{channel_name}"
    a = ServerProcess(["--dsn", dsn], tmp_path / "a")
    b = ServerProcess(["--dsn", dsn], tmp_path / "b")
    restarted: Optional[ServerProcess] = None
    try:
        await defer.gatherResults([_start(a), _start(b)], consumeErrors=True)
        acked = []
        for i in range(5):
            r = await publish(a.base, CTX, channel_name, {"i": i})
            assert r.code == 201
            acked.append(r.json())
        # Long-polls held open on both processes when one of them dies.
        on_a = defer.ensureDeferred(get(a.url(f"{url}?peek=5&timeout=30")))
        on_b = defer.ensureDeferred(get(b.url(f"{url}?peek=5&timeout=30")))
        await _sleep(0.3)
        a.kill()
        try:
            r = await on_a
        except Exception:
            pass  # the connection died with the process: the client retries
        else:
            raise AssertionError(f"a killed process answered a long-poll: {r}")
        assert not on_b.called

        restarted = ServerProcess(["--dsn", dsn], tmp_path / "a", port=a.port)
        await _start(restarted)
        retry = defer.ensureDeferred(get(restarted.url(f"{url}?peek=5&timeout=30")))
        r = await publish(restarted.base, CTX, channel_name, {"i": 5})
        assert r.code == 201 and r.json()["id"] == 6, r
        sixth = r.json()
        for waiter in (on_b, retry):
            got = await waiter
            assert got.code == 200 and got.json() == sixth
        r = await publish(b.base, CTX, channel_name, {"i": 6})
        assert r.code == 201 and r.json()["id"] == 7
        history = await get(restarted.url(url))
        assert history.json() == [*acked, sixth, r.json()]
    finally:
        for proc in (a, b, restarted):
            if proc is not None:
                proc.stop()
