"""Database outages for durable consumers and webhook delivery.

Like :mod:`tests.integration.test_outage`, these stop and restart PostgreSQL, so they run
against a PRIVATE embedded PostgreSQL with two server processes of their own
(which may deliver webhooks to loopback).  A server frozen with SIGSTOP
across the restart misses every notification sent while its LISTEN
connection is down; only its re-LISTEN and re-check can wake it.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer

from eventbus.storage.embedded import EmbeddedPostgres
from tests.client import get, publish, request
from tests.servers import ServerProcess
from tests.integration.test_outage import (
    FAST_503_S,
    RECOVERY_S,
    assert_503_json,
    restart_db,
    stop_db,
    timed,
    wait_healthy,
)
from tests.webhook_receiver import Receiver, sleep, until, until_async

CTX = "durable-outage"


@pytest.fixture(scope="module")
def servers(private_pg: EmbeddedPostgres,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    workdir: Path = tmp_path_factory.mktemp("durable-outage-servers")
    # A long webhook lease: the owner keeps its subscriptions across the
    # few seconds it is frozen, so the test knows who must resume delivery.
    args = ["--dsn", private_pg.dsn(), "--pool-size", "2", "--webhook-allow-private",
            "--webhook-retry-scale", "0.05", "--webhook-lease", "60"]
    procs = [ServerProcess(args, workdir).start(wait=False) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
    except BaseException:
        for p in procs:
            p.stop()
        raise
    yield procs
    codes = [p.stop() for p in procs]
    assert codes == [0, 0], f"unclean exit {codes}:\n" + "\n".join(p.log_tail() for p in procs)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    if r._listening is not None and r._listening.connected:
        r._listening.stopListening()


def _consumer(server: ServerProcess, channel: str, name: str = "c") -> str:
    return server.url(f"/consumers/{CTX}/{channel}/{name}")


async def _publish(server: ServerProcess, channel: str, payload: dict) -> dict:
    r = await publish(server.base, CTX, channel, payload)
    assert r.code == 201, r
    return r.json()


@pytest_twisted.ensureDeferred
async def test_consumers_answer_503_json_while_the_database_is_down_then_work_again(
        servers, db_up, channel_name):
    a, b = servers
    pg = db_up
    base = _consumer(a, channel_name)
    assert (await request("PUT", base, json_body={"lease": 120})).code == 201
    for n in (1, 2):
        await _publish(a, channel_name, {"n": n})
    r = await request("POST", f"{base}/next?timeout=0")
    assert r.code == 200 and r.json()["event"]["id"] == 1, r
    lease = r.json()["lease"]
    # An instance of another consumer, caught up, waits on B across the outage.
    standby_base = _consumer(b, channel_name, "standby")
    assert (await request("PUT", standby_base, json_body={"start": "latest"})).code == 201
    standby = defer.ensureDeferred(request("POST", f"{standby_base}/next?timeout=120",
                                           persistent=False))
    await sleep(0.5)
    assert not standby.called

    await stop_db(pg)
    calls: dict[str, Any] = {
        "PUT": lambda: request("PUT", base, json_body={"lease": 120}),
        "GET": lambda: get(base),
        "list": lambda: get(a.url(f"/consumers/{CTX}/{channel_name}")),
        "next timeout=0": lambda: request("POST", f"{base}/next?timeout=0"),
        "next with timeout": lambda: request("POST", f"{base}/next?timeout=3"),
        "ack": lambda: request("POST", f"{base}/ack", json_body={"lease": lease}),
        "nack": lambda: request("POST", f"{base}/nack", json_body={"lease": lease}),
        "dead": lambda: get(f"{base}/dead"),
        "retry": lambda: request("POST", f"{base}/dead/1/retry"),
        "DELETE": lambda: request("DELETE", base),
    }
    for round_ in range(2):  # the first round finds the connections dead, the second knows
        for what, call in calls.items():
            r, elapsed = await timed(call(), FAST_503_S + 5)
            assert_503_json(r, f"{what} (round {round_})")
            assert elapsed < FAST_503_S, f"{what} took {elapsed:.1f} s"

    await restart_db(pg)
    await wait_healthy(a)
    await wait_healthy(b)
    # Nothing refused during the outage happened: the lease still holds.
    assert (await request("POST", f"{base}/ack", json_body={"lease": lease})).code == 204
    r = await request("POST", f"{base}/next?timeout=5")
    assert r.code == 200 and r.json()["event"]["id"] == 2, r
    assert (await request("POST", f"{base}/ack", json_body={"lease": r.json()["lease"]})).code \
        == 204
    status = (await get(base)).json()
    assert (status["cursor"], status["lag"], status["in_flight"]) == (2, 0, 0), status
    # The standby held open across the outage is still served (it may also
    # have been answered 503, which its client would simply retry).
    await _publish(a, channel_name, {"n": 3})
    woken, _ = await timed(standby, RECOVERY_S)
    if woken.code == 503:
        woken = await request("POST", f"{standby_base}/next?timeout=5")
    assert woken.code == 200, f"{woken}\n{b.log_tail()}"
    assert woken.json()["event"]["id"] == 3 and woken.json()["deliveries"] == 1


async def _status_if(server: ServerProcess, sid: int, predicate: Any) -> Any:
    r = await get(server.url(f"/subscriptions/{sid}"))
    assert r.code == 200, r
    return r.json() if predicate(r.json()) else None


@pytest_twisted.ensureDeferred
async def test_webhook_delivery_resumes_in_order_after_an_outage_and_a_listen_reconnect(
        servers, db_up, receiver, channel_name):
    pg = db_up
    r = await request("POST", servers[0].url("/subscriptions"), json_body={
        "context": CTX, "channel": channel_name, "url": receiver.url, "start": "latest"})
    assert r.code == 201, r
    sid = r.json()["id"]
    status = await until_async(lambda: _status_if(servers[0], sid, lambda s: s["owner"]),
                               what="an owner")
    owner_pid = int(status["owner"].split(":")[1])
    (owner,) = [s for s in servers if s.proc.pid == owner_pid]
    (other,) = [s for s in servers if s is not owner]
    await _publish(other, channel_name, {"n": 1})
    await until(lambda: receiver.ids() == [1], what="event 1")

    await stop_db(pg)
    r, _ = await timed(get(owner.url("/health")), FAST_503_S)
    assert r.code == 503, r
    os.kill(owner.proc.pid, signal.SIGSTOP)
    try:
        await restart_db(pg)
        await wait_healthy(other)
        # Published while the owner's LISTEN connection is down: their
        # notifications never reach it.
        for n in (2, 3, 4):
            await _publish(other, channel_name, {"n": n})
    finally:
        os.kill(owner.proc.pid, signal.SIGCONT)

    await until(lambda: receiver.ids()[-1:] == [4], timeout=RECOVERY_S,
                what=f"events 2-4 after recovery\n{owner.log_tail()}")
    # LISTEN works again: a publish through the other server reaches the owner.
    await wait_healthy(owner)
    await _publish(other, channel_name, {"n": 5})
    await until(lambda: receiver.ids()[-1:] == [5], timeout=RECOVERY_S, what="event 5")
    await sleep(0.3)
    assert receiver.ids() == [1, 2, 3, 4, 5]
    assert [e["payload"]["n"] for e in receiver.events()] == [1, 2, 3, 4, 5]
    status = await until_async(lambda: _status_if(owner, sid, lambda s: s["cursor"] == 5),
                               what="cursor 5")
    assert status["owner"] and int(status["owner"].split(":")[1]) == owner.proc.pid
