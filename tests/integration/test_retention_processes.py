"""Retention with two server processes on one database: pruning while both
publish, one pruner at a time, and a takeover when the pruning one dies.

Each test gets a database of its own and two ``python -m eventbus``
processes pruning every 0.2 s.
"""
from __future__ import annotations

from typing import Any, Iterator

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.client import get, publish, request
from tests.integration.test_retention import channel_info, database, pruned_to, set_retention
from tests.servers import ServerProcess
from tests.webhook_receiver import until_async

CTX = "two"


@pytest.fixture
def two(postgres: Any, tmp_path_factory: Any, request: Any) -> Iterator[tuple[ServerProcess, ServerProcess, str]]:
    dsn = database(postgres, "retention_" + request.node.name[:40].lower())
    procs = [ServerProcess(["--dsn", dsn, "--retention-interval", "0.2"], tmp_path_factory.mktemp("two"))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    yield procs[0], procs[1], dsn
    for proc in procs:
        proc.stop()


def owner(dsn: str) -> Any:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT owner FROM retention_pruner WHERE lease_until > clock_timestamp()")
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


@pytest_twisted.ensureDeferred
async def test_pruning_while_two_processes_publish_keeps_ids_gapless_and_never_reuses_one(two):
    a, b, _ = two
    channel = "busy"
    await set_retention(a, channel, context=CTX, max_events=50)
    ids: list[int] = []
    firsts: set[Any] = set()
    stop = False

    async def publisher(server: ServerProcess) -> None:
        while not stop:
            r = await publish(server.base, CTX, channel, {"n": len(ids)})
            assert r.code == 201, r
            ids.append(r.json()["id"])

    async def watcher() -> None:
        nonlocal stop
        # Publish until the pruner has moved first_id several times meanwhile.
        while len(firsts) < 5 and len(ids) < 30_000:
            firsts.add((await channel_info(b, channel, CTX))["first_id"])
        stop = True

    await defer.gatherResults([defer.ensureDeferred(c) for c in (
        publisher(a), publisher(b), publisher(a), publisher(b), watcher())], consumeErrors=True)
    assert len(firsts) >= 5, f"pruning was not seen during the publishes ({len(ids)} published)"
    assert sorted(ids) == list(range(1, len(ids) + 1))  # every id once, none reused
    last = len(ids)
    info = await pruned_to(a, channel, last - 49, CTX)
    assert (info["last_id"], info["count"]) == (last, 50)
    history = (await get(a.url(f"/events/{CTX}/{channel}"))).json()
    assert [e["id"] for e in history] == list(range(last - 49, last + 1))
    assert (await publish(b.base, CTX, channel, {"after": True})).json()["id"] == last + 1


@pytest_twisted.ensureDeferred
async def test_one_process_prunes_at_a_time_and_the_other_takes_over_when_it_dies(two):
    a, b, dsn = two
    holder = await until_async(lambda: _now(owner(dsn)), what="a pruner lease")
    pid = int(holder.split(":")[1])
    leader, other = (a, b) if a.proc is not None and a.proc.pid == pid else (b, a)
    assert leader.proc is not None and leader.proc.pid == pid
    assert "now pruning for retention" in leader.log_tail(200)
    assert "now pruning for retention" not in other.log_tail(200)
    leader.kill()
    await set_retention(other, "after-death", context=CTX, max_events=2)
    for n in range(6):
        r = await publish(other.base, CTX, "after-death", {"n": n})
        assert r.code == 201
    await pruned_to(other, "after-death", 5, CTX)  # within three rounds of the lease
    assert int(owner(dsn).split(":")[1]) == other.proc.pid


async def _now(value: Any) -> Any:
    return value


@pytest_twisted.ensureDeferred
async def test_a_cleanly_stopped_pruner_hands_its_lease_over_at_once(two):
    a, b, dsn = two
    holder = await until_async(lambda: _now(owner(dsn)), what="a pruner lease")
    leader = a if a.proc is not None and a.proc.pid == int(holder.split(":")[1]) else b
    other = b if leader is a else a
    leader_pid = leader.proc.pid
    leader.stop()
    # Released before the process exited (its lease would hold three rounds more).
    assert not (owner(dsn) or "").startswith(f"{_host(holder)}:{leader_pid}:")
    # And taken by the other process at its next round.
    await until_async(lambda: _now((owner(dsn) or "").startswith(f"{_host(holder)}:{other.proc.pid}:")),
                      what="the other process taking the lease")
    r = await request("GET", other.url("/health"))
    assert r.code == 200


def _host(owner_text: str) -> str:
    return owner_text.split(":")[0]
