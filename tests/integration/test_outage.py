"""Database outages: fast 503s, recovery by itself, no lost long-poll wake-ups.

These tests stop and restart PostgreSQL, so they run against a PRIVATE
embedded PostgreSQL (not the session one other tests share) with two server
processes pointing at it.

To publish "while this process's LISTEN connection is down" deterministically,
server A is frozen with SIGSTOP across the database restart: its LISTEN
backend dies with the old postmaster and it cannot open a new one until it is
thawed, by which time server B has already committed the event.  Only A's
re-LISTEN plus re-check of waiting channels can deliver it.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from eventbus.storage.embedded import EmbeddedPostgres
from tests.client import Response, get, publish, request
from tests.servers import ServerProcess

CTX = "outage"
#: The contract's "within a few seconds" for a 503 while the database is down.
FAST_503_S = 10.0
#: Generous bound for recovery (reconnect backoff is capped at a few seconds).
RECOVERY_S = 20.0
#: Long-poll timeout for waiters that must outlive the outage.
LONG_POLL_S = 120


@pytest.fixture(scope="module")
def servers(private_pg: EmbeddedPostgres,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    workdir: Path = tmp_path_factory.mktemp("outage-servers")
    a = ServerProcess(["--dsn", private_pg.dsn(), "--pool-size", "2"], workdir)
    b = ServerProcess(["--dsn", private_pg.dsn(), "--pool-size", "2"], workdir)
    try:
        a.start()
        b.start()
    except BaseException:
        a.stop()
        b.stop()
        raise
    yield a, b
    codes = (a.stop(), b.stop())
    assert codes == (0, 0), f"unclean exit {codes}:\n{a.log_tail()}\n{b.log_tail()}"


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def timed(awaitable: Awaitable[Response], limit: float) -> tuple[Response, float]:
    """Await a request; fail (rather than hang) if it takes longer than ``limit``."""
    start = time.monotonic()
    d = defer.ensureDeferred(awaitable)
    d.addTimeout(limit, reactor)
    try:
        r = await d
    except defer.TimeoutError:
        raise AssertionError(f"no answer within {limit} s") from None
    return r, time.monotonic() - start


def long_poll(base: str, channel: str, cursor: int, timeout: int = LONG_POLL_S) -> defer.Deferred:
    # Own connection, so nothing else is queued behind the held request.
    return defer.ensureDeferred(
        get(f"{base}/events/{CTX}/{channel}?peek={cursor}&timeout={timeout}", persistent=False))


async def assert_pending(d: defer.Deferred, what: str) -> None:
    await sleep(0.5)
    assert not d.called, f"{what} answered early: {_peek_result(d)}"


def _peek_result(d: defer.Deferred) -> Any:
    out: list = []
    d.addBoth(lambda v: (out.append(v), v)[1])
    return out[0] if out else None


async def wait_healthy(server: ServerProcess, limit: float = RECOVERY_S) -> float:
    start = time.monotonic()
    last = None
    while time.monotonic() - start < limit:
        r, _ = await timed(get(server.url("/health"), persistent=False), FAST_503_S)
        last = r
        if r.code == 200:
            assert r.json() == {"status": "ok"}
            return time.monotonic() - start
        assert_503_json(r, "health while recovering")
        await sleep(0.2)
    raise AssertionError(f"{server.base} not healthy {limit} s after the database came back: "
                         f"{last}\n{server.log_tail()}")


def assert_503_json(r: Response, what: str) -> None:
    assert r.code == 503, f"{what}: {r}"
    assert r.header("Content-Type") == "application/json", f"{what}: {r.headers}"
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], f"{what}: {body}"


async def stop_db(pg: EmbeddedPostgres) -> None:
    await threads.deferToThread(pg.stop, True)
    assert not pg.is_running()


async def restart_db(pg: EmbeddedPostgres) -> None:
    await threads.deferToThread(pg.restart_after_outage)


@pytest_twisted.ensureDeferred
async def test_health_is_200_when_the_database_answers(servers, db_up):
    a, _ = servers
    r = await get(a.url("/health"))
    assert r.code == 200 and r.json() == {"status": "ok"}


@pytest_twisted.ensureDeferred
async def test_outage_gives_fast_503s_and_recovery_wakes_a_waiter_from_before(
        servers, db_up, channel_name):
    a, _ = servers
    pg = db_up
    r = await publish(a.base, CTX, channel_name, {"n": 1})
    assert r.code == 201, r
    waiter = long_poll(a.base, channel_name, 1)
    await assert_pending(waiter, "the long poll")

    await stop_db(pg)
    calls = {
        "health": lambda: get(a.url("/health")),
        "publish": lambda: publish(a.base, CTX, channel_name, {"n": "lost"}),
        "history": lambda: get(a.url(f"/events/{CTX}/{channel_name}")),
        "history with start": lambda: get(a.url(f"/events/{CTX}/{channel_name}?start=0")),
        # peek=1: event 1 may be answered from memory (it is immutable); the
        # event after the head needs the database.
        "peek timeout=0": lambda: get(a.url(f"/events/{CTX}/{channel_name}?peek=1&timeout=0")),
        "peek with timeout": lambda: get(a.url(f"/events/{CTX}/{channel_name}?peek=1&timeout=5")),
        "single event": lambda: get(a.url(f"/events/{CTX}/{channel_name}/1")),
    }
    for round_ in range(2):  # the first round finds the connections dead, the second knows
        for what, call in calls.items():
            r, elapsed = await timed(call(), FAST_503_S + 5)
            assert_503_json(r, f"{what} (round {round_})")
            assert elapsed < FAST_503_S, f"{what} took {elapsed:.1f} s"
    assert not waiter.called, f"waiter answered during the outage: {_peek_result(waiter)}"

    await restart_db(pg)
    await wait_healthy(a)
    assert not waiter.called, f"waiter answered without an event: {_peek_result(waiter)}"
    r = await publish(a.base, CTX, channel_name, {"n": 2})
    assert r.code == 201, r
    assert r.json()["id"] == 2, "the publish refused during the outage left a trace"
    woken, _ = await timed(waiter, RECOVERY_S)
    assert woken.code == 200, woken
    assert woken.json()["id"] == 2 and woken.json()["payload"] == {"n": 2}

    history = await get(a.url(f"/events/{CTX}/{channel_name}"))
    assert history.code == 200
    assert [e["payload"]["n"] for e in history.json()] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_event_published_by_another_server_while_listener_was_down_is_delivered(
        servers, db_up, channel_name):
    a, b = servers
    pg = db_up
    waiter = long_poll(a.base, channel_name, 0)
    await assert_pending(waiter, "the long poll")

    await stop_db(pg)
    # Let A see its connections die before freezing it (the order must not
    # matter, but this is the common case: A is in its reconnect backoff).
    r, _ = await timed(get(a.url("/health")), FAST_503_S)
    assert r.code == 503, r
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        await restart_db(pg)
        await wait_healthy(b)
        r = await publish(b.base, CTX, channel_name, {"from": "B during A's outage"})
        assert r.code == 201, r
        assert r.json()["id"] == 1
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)

    woken, _ = await timed(waiter, RECOVERY_S)
    assert woken.code == 200, f"{woken}\n{a.log_tail()}"
    assert woken.json()["id"] == 1
    assert woken.json()["payload"] == {"from": "B during A's outage"}

    # A listens again: a waiter registered after recovery is woken by a
    # publish on B, which only the re-established LISTEN can carry to A.
    await wait_healthy(a)
    later = long_poll(a.base, channel_name, 1, timeout=int(RECOVERY_S))
    await assert_pending(later, "the second long poll")
    r = await publish(b.base, CTX, channel_name, {"from": "B after recovery"})
    assert r.code == 201, r
    woken, _ = await timed(later, RECOVERY_S + 5)
    assert woken.code == 200, f"{woken} (a 204 means the wake-up never arrived)"
    assert woken.json()["id"] == 2


@pytest_twisted.ensureDeferred
async def test_waiter_is_woken_by_another_server_after_a_plain_outage(
        servers, db_up, channel_name):
    a, b = servers
    pg = db_up
    waiter = long_poll(a.base, channel_name, 0)
    await assert_pending(waiter, "the long poll")
    await stop_db(pg)
    await sleep(1.0)
    await restart_db(pg)
    await wait_healthy(b)
    r = await publish(b.base, CTX, channel_name, {"from": "B"})
    assert r.code == 201, r
    woken, _ = await timed(waiter, RECOVERY_S)
    assert woken.code == 200, f"{woken}\n{a.log_tail()}"
    assert woken.json()["id"] == 1 and woken.json()["payload"] == {"from": "B"}


def _postgres_pids(pg: EmbeddedPostgres) -> list[int]:
    """The postmaster and its children (backends, checkpointer, ...)."""
    postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                pids.append(int(entry.name))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest_twisted.ensureDeferred
async def test_a_hung_database_gives_503s_not_hangs(servers, db_up, channel_name):
    """A database that accepts but never answers (frozen, or a partition)."""
    from eventbus.storage.database import QUERY_TIMEOUT_S

    a, _ = servers
    r = await publish(a.base, CTX, channel_name, {"n": 1})
    assert r.code == 201, r
    frozen = _postgres_pids(db_up)
    _signal_all(frozen, signal.SIGSTOP)
    try:
        calls = {
            "health": get(a.url("/health")),
            "publish": publish(a.base, CTX, channel_name, {"n": "maybe"}),
            "history": get(a.url(f"/events/{CTX}/{channel_name}")),
            "peek timeout=0": get(a.url(f"/events/{CTX}/{channel_name}?peek=5&timeout=0")),
            "single event": get(a.url(f"/events/{CTX}/{channel_name}/1")),
        }
        limit = QUERY_TIMEOUT_S + 5  # the server's own query timeout, plus slack
        results = await defer.gatherResults(
            [defer.ensureDeferred(timed(c, limit + 5)) for c in calls.values()],
            consumeErrors=True)
        for what, (r, elapsed) in zip(calls, results):
            assert_503_json(r, what)
            assert elapsed < (FAST_503_S if what == "health" else limit), \
                f"{what} took {elapsed:.1f} s"
    finally:
        _signal_all(frozen, signal.SIGCONT)
    await wait_healthy(a)
    r = await publish(a.base, CTX, channel_name, {"n": 3})
    assert r.code == 201, r


def _metric(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"no {name} in the exposition")


@pytest_twisted.ensureDeferred
async def test_an_outage_is_one_warning_per_process_no_traceback_and_its_503s_are_counted(
        servers, db_up, channel_name):
    """txpostgres used to log every lost connection as "Unhandled Error" with a
    traceback (idle ones from the reactor, transactions from a failed ROLLBACK)."""
    a, b = servers
    pg = db_up
    marks = [len(s.log_path.read_bytes()) for s in servers]
    r = await request("PUT", a.url(f"/consumers/{CTX}/{channel_name}/c"), json_body={"mode": "shared"})
    assert r.code == 201, r
    before = (await get(a.url("/metrics"))).body.decode()
    unavailable = 0  # the 503s server A gives this test

    async def load(server: ServerProcess) -> None:
        """Publishes and leasing transactions, in flight when the database stops."""
        nonlocal unavailable
        while not stopping:
            for r in (await publish(server.base, CTX, channel_name, {"n": 1}),
                      await request("POST", server.url(f"/consumers/{CTX}/{channel_name}/c/next?timeout=0"))):
                assert r.code in (200, 201, 204, 503), r
                unavailable += server is a and r.code == 503

    stopping = False
    loads = [defer.ensureDeferred(load(s)) for s in servers for _ in range(2)]
    await sleep(0.5)
    await stop_db(pg)
    await sleep(1.0)
    stopping = True
    await defer.gatherResults(loads)
    await restart_db(pg)
    await wait_healthy(b)
    while True:  # wait_healthy(a), counting its 503s
        r, _ = await timed(get(a.url("/health"), persistent=False), FAST_503_S)
        if r.code == 200:
            break
        unavailable += r.code == 503
        await sleep(0.2)

    def new_lines(i: int) -> str:
        return servers[i].log_path.read_bytes()[marks[i]:].decode(errors="replace")

    deadline = time.monotonic() + RECOVERY_S
    while not all("database connections re-established" in new_lines(i) for i in range(2)):
        assert time.monotonic() < deadline, f"no recovery line:\n{new_lines(0)}\n{new_lines(1)}"
        await sleep(0.2)
    for i in range(2):
        text = new_lines(i)
        assert "Traceback" not in text and "Unhandled" not in text, text
        assert text.count("database connection lost") == 1, text
        assert text.count("database connections re-established") == 1, text
        assert "database unavailable: " not in text, text  # the 503s are not logged one by one
    after = (await get(a.url("/metrics"))).body.decode()
    assert unavailable > 0
    assert _metric(after, "eventbus_db_unavailable_total") - _metric(
        before, "eventbus_db_unavailable_total") == unavailable
    assert _metric(after, "eventbus_listener_reconnects_total") - _metric(
        before, "eventbus_listener_reconnects_total") == 1
    assert _metric(after, "eventbus_listener_connected") == 1
