"""Durable consumers over real HTTP, two real server processes, one database.

Leases here are short (0.5-2 s) so expiry is quick; nothing asserts how long
anything took, only what was delivered, acked or dead-lettered.
"""
from __future__ import annotations

import itertools
from typing import Any, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.client import get, publish, request
from tests.servers import ServerProcess

#: Run against each (tests/deployments.py).
DEPLOYMENTS = ("embedded", "pgbouncer", "pg15", "workers")
CTX = "cons"


# -- fixtures and helpers ------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(deployment, tmp_path_factory):
    """Two server processes on the deployment's database (started in parallel)."""
    procs = [ServerProcess(deployment.server_args(), tmp_path_factory.mktemp("consumers"))
             for _ in range(2)]
    for p in procs:
        p.start(wait=False)
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def server(servers):
    return servers[0]


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class Consumer:
    """One consumer name over one server's HTTP API."""

    def __init__(self, server: ServerProcess, channel: str, name: str = "c") -> None:
        self.server, self.channel, self.name = server, channel, name
        self.base = server.url(f"/consumers/{CTX}/{channel}/{name}")

    def via(self, server: ServerProcess) -> "Consumer":
        return Consumer(server, self.channel, self.name)

    async def put(self, **config: Any):
        return await request("PUT", self.base, json_body=config)

    async def status(self):
        return await get(self.base)

    async def next(self, timeout: float = 0):
        return await request("POST", f"{self.base}/next?timeout={timeout}")

    async def ack(self, lease: str) -> int:
        return (await request("POST", f"{self.base}/ack", json_body={"lease": lease})).code

    async def nack(self, lease: str, delay: Optional[float] = None) -> int:
        body: dict[str, Any] = {"lease": lease}
        if delay is not None:
            body["delay"] = delay
        return (await request("POST", f"{self.base}/nack", json_body=body)).code

    async def dead(self):
        return await get(f"{self.base}/dead")

    async def retry(self, event_id: int) -> int:
        return (await request("POST", f"{self.base}/dead/{event_id}/retry")).code


async def publish_n(server: ServerProcess, channel: str, n: int) -> None:
    for i in range(n):
        r = await publish(server.base, CTX, channel, {"i": i})
        assert r.code == 201, r


async def take(c: Consumer, timeout: float = 0) -> dict:
    r = await c.next(timeout)
    assert r.code == 200, r
    return r.json()


# -- endpoints ---------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_put_creates_201_then_updates_200_and_get_list_delete(server, channel_name):
    c = Consumer(server, channel_name, "billing")
    r = await c.put(mode="shared", lease=10, max_deliveries=3)
    assert r.code == 201, r
    assert r.json() == {"name": "billing", "mode": "shared", "cursor": 0, "lag": 0,
                        "in_flight": 0, "dead": 0, "expired": 0, "lease": 10, "max_deliveries": 3}
    r = await c.put(mode="ordered", lease=2.5)
    assert r.code == 200, r
    assert r.json()["mode"] == "ordered" and r.json()["lease"] == 2.5
    assert r.json()["max_deliveries"] == 5  # PUT sets the whole configuration
    assert (await Consumer(server, channel_name, "audit").put()).code == 201
    listed = await get(server.url(f"/consumers/{CTX}/{channel_name}"))
    assert listed.code == 200
    assert [s["name"] for s in listed.json()] == ["audit", "billing"]
    assert listed.json()[1] == (await c.status()).json()
    r = await request("DELETE", c.base)
    assert r.code == 204
    assert (await c.status()).code == 404
    assert (await request("DELETE", c.base)).code == 404
    assert [s["name"] for s in (await get(server.url(f"/consumers/{CTX}/{channel_name}"))).json()] == ["audit"]
    empty = await get(server.url(f"/consumers/{CTX}/none-{channel_name}"))
    assert empty.code == 200 and empty.json() == []


@pytest_twisted.ensureDeferred
async def test_next_on_unknown_consumer_creates_it_ordered_from_earliest(server, channel_name):
    await publish_n(server, channel_name, 3)
    c = Consumer(server, channel_name)
    assert (await c.status()).code == 404
    got = await take(c)
    assert got["event"]["id"] == 1 and got["deliveries"] == 1
    assert got["event"]["payload"] == {"i": 0} and got["event"]["channel"] == channel_name
    assert isinstance(got["lease"], str)
    s = (await c.status()).json()
    assert s == {"name": "c", "mode": "ordered", "cursor": 0, "lag": 3, "in_flight": 1,
                 "dead": 0, "expired": 0, "lease": 30, "max_deliveries": 5}
    # ordered: nothing else while event 1 is leased
    assert (await c.next()).code == 204
    assert await c.ack(got["lease"]) == 204
    assert (await take(c))["event"]["id"] == 2
    s = (await c.status()).json()
    assert (s["cursor"], s["lag"], s["in_flight"]) == (1, 2, 1)


@pytest_twisted.ensureDeferred
async def test_start_latest_and_start_at_an_id(server, channel_name):
    await publish_n(server, channel_name, 3)
    latest = Consumer(server, channel_name, "latest")
    assert (await latest.put(start="latest")).json()["cursor"] == 3
    assert (await latest.next()).code == 204
    at = Consumer(server, channel_name, "at")
    assert (await at.put(start=2)).json()["cursor"] == 1
    assert (await take(at))["event"]["id"] == 2
    await publish_n(server, channel_name, 1)
    assert (await take(latest))["event"]["id"] == 4
    # start applies only on creation: a repeated PUT does not rewind
    assert (await latest.put(start="earliest")).json()["cursor"] == 3


@pytest_twisted.ensureDeferred
async def test_next_long_poll_is_woken_by_a_publish_through_the_other_server(servers,
                                                                             channel_name):
    c = Consumer(servers[0], channel_name)
    waiting = defer.ensureDeferred(c.next(timeout=30))
    await sleep(0.3)
    assert not waiting.called
    published = await publish(servers[1].base, CTX, channel_name, {"wake": 1})
    r = await waiting
    assert r.code == 200 and r.json()["event"] == published.json()


@pytest_twisted.ensureDeferred
async def test_next_times_out_with_204(server, channel_name):
    r = await Consumer(server, channel_name).next(timeout=0.3)
    assert r.code == 204 and r.body == b""


@pytest_twisted.ensureDeferred
async def test_ack_and_nack_of_unknown_or_expired_lease_is_409(server, channel_name):
    await publish_n(server, channel_name, 2)
    c = Consumer(server, channel_name)
    assert (await c.put(lease=1)).code == 201  # the shortest lease
    got = await take(c)
    for bad in ("nonsense", "1.nonsense", "99.x", "99999999999999999999.x", ".x", "1.",
                got["lease"] + "x"):
        r = await request("POST", f"{c.base}/ack", json_body={"lease": bad})
        assert r.code == 409 and "error" in r.json(), (bad, r)
        assert await c.nack(bad) == 409
    # the right token on another consumer's URL is unknown there
    assert await Consumer(server, channel_name, "other").ack(got["lease"]) == 409
    await sleep(1.3)
    assert await c.ack(got["lease"]) == 409  # expired
    assert await c.nack(got["lease"]) == 409
    again = await take(c)
    assert again["event"]["id"] == 1 and again["deliveries"] == 2
    assert await c.ack(again["lease"]) == 204
    assert await c.ack(again["lease"]) == 409  # already acked
    assert (await take(c))["event"]["id"] == 2


@pytest_twisted.ensureDeferred
async def test_nack_makes_the_event_available_again_after_its_delay(server, channel_name):
    await publish_n(server, channel_name, 2)
    c = Consumer(server, channel_name)
    got = await take(c)
    assert await c.nack(got["lease"]) == 204
    again = await take(c)
    assert again["event"]["id"] == 1 and again["deliveries"] == 2
    assert await c.nack(again["lease"], delay=2) == 204
    # ordered: event 1 is delayed, and event 2 may not overtake it
    assert (await c.next()).code == 204
    s = (await c.status()).json()
    assert (s["cursor"], s["lag"], s["in_flight"]) == (0, 2, 0)
    later = await take(c, timeout=10)  # woken when the delay ends
    assert later["event"]["id"] == 1 and later["deliveries"] == 3
    # shared: a delayed event does not hold the others back
    s = Consumer(server, channel_name, "s")
    await s.put(mode="shared")
    first = await take(s)
    assert await s.nack(first["lease"], delay=60) == 204
    assert (await take(s))["event"]["id"] == 2


@pytest_twisted.ensureDeferred
async def test_dead_letter_after_max_deliveries_then_retry(server, channel_name):
    await publish_n(server, channel_name, 3)
    c = Consumer(server, channel_name)
    await c.put(max_deliveries=2)
    for n in (1, 2):
        got = await take(c)
        assert (got["event"]["id"], got["deliveries"]) == (1, n)
        assert await c.nack(got["lease"]) == 204
    # event 1 is dead: skipped, ordered delivery goes on with 2
    got = await take(c)
    assert got["event"]["id"] == 2 and got["deliveries"] == 1
    assert await c.ack(got["lease"]) == 204
    # expiry counts too: event 3 is leased twice and never acked
    assert (await c.put(max_deliveries=2, lease=1)).code == 200
    for n in (1, 2):
        got = await take(c, timeout=10)
        assert (got["event"]["id"], got["deliveries"]) == (3, n)
    await sleep(1.2)
    assert (await c.next()).code == 204
    s = (await c.status()).json()
    assert (s["cursor"], s["lag"], s["in_flight"], s["dead"]) == (3, 0, 0, 2)
    dead = await c.dead()
    assert dead.code == 200
    assert [(d["event"]["id"], d["deliveries"]) for d in dead.json()] == [(1, 2), (3, 2)]
    assert dead.json()[0]["event"]["payload"] == {"i": 0}
    assert await c.retry(2) == 404  # acked, not dead
    assert await c.retry(99) == 404
    assert await c.retry(1) == 204
    assert await c.retry(1) == 404
    s = (await c.status()).json()
    assert (s["cursor"], s["lag"], s["dead"]) == (0, 1, 1)
    got = await take(c)
    assert got["event"]["id"] == 1 and got["deliveries"] == 1
    assert await c.ack(got["lease"]) == 204
    s = (await c.status()).json()
    assert (s["cursor"], s["lag"], s["dead"]) == (3, 0, 1)
    assert [d["event"]["id"] for d in (await c.dead()).json()] == [3]


@pytest_twisted.ensureDeferred
async def test_unknown_consumer_is_404_for_status_delete_dead_and_retry(server, channel_name):
    c = Consumer(server, channel_name, "ghost")
    assert (await c.status()).code == 404
    assert (await request("DELETE", c.base)).code == 404
    r = await c.dead()
    assert r.code == 404 and "error" in r.json()
    assert await c.retry(1) == 404
    assert (await c.status()).code == 404  # none of these created it


@pytest.mark.parametrize("method, suffix, body, status", [
    ("PUT", "", b"{", 400),
    ("PUT", "", b"[]", 400),
    ("PUT", "", b'{"mode": "fifo"}', 400),
    ("PUT", "", b'{"mode": 1}', 400),
    ("PUT", "", b'{"colour": "red"}', 400),
    ("PUT", "", b'{"lease": -1}', 400),
    ("PUT", "", b'{"lease": 0}', 400),
    ("PUT", "", b'{"lease": "30"}', 400),
    ("PUT", "", b'{"lease": true}', 400),
    ("PUT", "", b'{"lease": 1e9}', 400),
    ("PUT", "", b'{"max_deliveries": 0}', 400),
    ("PUT", "", b'{"max_deliveries": 1.5}', 400),
    ("PUT", "", b'{"start": "middle"}', 400),
    ("PUT", "", b'{"start": 0}', 400),
    ("PUT", "", b'{"start": -3}', 400),
    ("PUT", "", b'{"start": 99999999999999999999999}', 400),
    ("PUT", "", b'{"lease": NaN}', 400),
    ("POST", "/ack", b"", 400),
    ("POST", "/ack", b"{}", 400),
    ("POST", "/ack", b'{"lease": 5}', 400),
    ("POST", "/ack", b'{"lease": "x", "delay": 1}', 400),
    ("POST", "/nack", b'{"lease": "x", "delay": -1}', 400),
    ("POST", "/nack", b'{"lease": "x", "delay": "1"}', 400),
    ("POST", "/nack", b'{"lease": "x"}', 409),
    ("POST", "/ack", b'{"lease": "1.a\\u0000b"}', 409),
    ("POST", "/nack", b'{"lease": "1.a\\u0000b"}', 409),
    ("POST", "/next?timeout=-1", None, 400),
    ("POST", "/next?timeout=301", None, 400),
    ("POST", "/next?timeout=abc", None, 400),
    ("GET", "/next", None, 405),
    ("DELETE", "/ack", None, 405),
    ("POST", "", None, 405),
    ("GET", "/dead/1/retry", None, 405),
    ("POST", "/dead/abc/retry", None, 404),
])
@pytest_twisted.ensureDeferred
async def test_bad_input_is_a_json_4xx_never_a_500(server, method, suffix, body, status):
    base = server.url(f"/consumers/{CTX}/bad-input/c")
    r = await request(method, base + suffix, data=body)
    assert r.code == status, r
    assert "error" in r.json()
    if status == 405:
        assert r.header("Allow")


@pytest_twisted.ensureDeferred
async def test_bad_names_are_400(server):
    for path in ("/consumers/ctx/bad%20channel/c", "/consumers/ctx/ch/bad%20name",
                 "/consumers/b%21d/ch/c", "/consumers/ctx/ch/" + "n" * 129):
        for method, suffix in (("GET", ""), ("PUT", ""), ("POST", "/next"), ("GET", "/dead")):
            r = await request(method, server.url(path + suffix))
            assert r.code == 400 and "error" in r.json(), (method, path, r)


@pytest_twisted.ensureDeferred
async def test_empty_put_body_means_the_defaults(server, channel_name):
    r = await request("PUT", server.url(f"/consumers/{CTX}/{channel_name}/c"))
    assert r.code == 201
    assert (r.json()["mode"], r.json()["lease"], r.json()["max_deliveries"]) == ("ordered", 30, 5)


# -- competing instances ----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_ordered_hot_standby_takes_over_after_the_lease_expires_keeping_order(
        servers, channel_name):
    await publish_n(servers[0], channel_name, 6)
    primary = Consumer(servers[0], channel_name)
    standby = primary.via(servers[1])
    await primary.put(mode="ordered", lease=1)
    handled = []
    for _ in range(2):
        got = await take(primary)
        handled.append(got["event"]["id"])
        assert await primary.ack(got["lease"]) == 204
    crashed = await take(primary)  # event 3: the primary dies holding it
    assert crashed["event"]["id"] == 3
    got = await take(standby, timeout=20)  # woken when the lease expires
    assert got["event"]["id"] == 3 and got["deliveries"] == 2
    assert await primary.ack(crashed["lease"]) == 409  # too late
    handled.append(3)
    assert await standby.ack(got["lease"]) == 204
    # both instances compete from now on; order still holds
    acked: list[int] = []

    async def instance(c: Consumer) -> None:
        while len(acked) < 3:
            r = await c.next(timeout=1)
            if r.code == 200:
                lease = r.json()["lease"]
                event_id = r.json()["event"]["id"]
                await sleep(0.01)
                if await c.ack(lease) == 204:
                    acked.append(event_id)

    await defer.gatherResults([defer.ensureDeferred(instance(primary)),
                               defer.ensureDeferred(instance(standby))])
    assert handled + acked == [1, 2, 3, 4, 5, 6]
    s = (await primary.status()).json()
    assert (s["cursor"], s["lag"], s["in_flight"], s["dead"]) == (6, 0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_an_ack_wakes_an_ordered_standby_waiting_on_the_other_server(servers,
                                                                          channel_name):
    await publish_n(servers[0], channel_name, 2)
    primary = Consumer(servers[0], channel_name)
    await primary.put(lease=60)
    got = await take(primary)
    # The lease outlives the standby's timeout, so only the ack can wake it.
    waiting = defer.ensureDeferred(primary.via(servers[1]).next(timeout=15))
    await sleep(0.3)
    assert not waiting.called
    assert await primary.ack(got["lease"]) == 204
    r = await waiting
    assert r.code == 200 and r.json()["event"]["id"] == 2


@pytest_twisted.ensureDeferred
async def test_a_nack_wakes_a_shared_instance_waiting_on_the_other_server(servers,
                                                                         channel_name):
    await publish_n(servers[0], channel_name, 1)
    c = Consumer(servers[0], channel_name)
    await c.put(mode="shared", lease=60)
    got = await take(c)
    waiting = defer.ensureDeferred(c.via(servers[1]).next(timeout=15))
    await sleep(0.3)
    assert not waiting.called
    assert await c.nack(got["lease"]) == 204
    r = await waiting
    assert r.code == 200
    assert (r.json()["event"]["id"], r.json()["deliveries"]) == (1, 2)


class Tally:
    """What a crowd of instances saw, for the at-most-one-lease checks."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.acked: dict[int, list[int]] = {}  # event id -> instances whose ack succeeded
        self.leases: set[tuple[int, int]] = set()  # (event id, deliveries) handed out
        self.duplicates: list[tuple[int, int]] = []
        self.deliveries: dict[int, int] = {}

    def leased(self, got: dict) -> int:
        key = (got["event"]["id"], got["deliveries"])
        if key in self.leases:
            self.duplicates.append(key)
        self.leases.add(key)
        self.deliveries[key[0]] = max(self.deliveries.get(key[0], 0), key[1])
        return key[0]

    @property
    def done(self) -> bool:
        return len(self.acked) >= self.total

    def check(self, live: set[int]) -> None:
        assert not self.duplicates, f"two leases with the same delivery: {self.duplicates}"
        assert sorted(self.acked) == list(range(1, self.total + 1))
        twice = {k: v for k, v in self.acked.items() if len(v) > 1}
        assert not twice, f"acked more than once: {twice}"
        assert {by[0] for by in self.acked.values()} <= live


async def work(number: int, c: Consumer, tally: Tally, stop_after: Optional[int] = None,
               pause: Any = None) -> list[int]:
    """An instance: next, (pause), ack, until everything is acked; or, with
    ``stop_after``, crash after that many acks, holding three leases."""
    idle = itertools.count()
    handled = 0
    while not tally.done:
        if stop_after is not None and handled >= stop_after:
            held = []
            while len(held) < 3 and not tally.done:
                r = await c.next(timeout=1)
                if r.code == 200:
                    held.append(tally.leased(r.json()))
            return held  # and never acks them
        r = await c.next(timeout=1)
        if r.code == 204:
            assert next(idle) < 30, "no progress"
            continue
        assert r.code == 200, r
        got = r.json()
        event_id = tally.leased(got)
        if pause is not None:
            await sleep(pause())
        code = await c.ack(got["lease"])
        assert code in (204, 409)
        if code == 204:
            tally.acked.setdefault(event_id, []).append(number)
            handled += 1
    return []


@pytest.mark.parametrize("instances", [2, 3])
@pytest_twisted.ensureDeferred
async def test_shared_instances_split_the_channel_and_a_killed_ones_leases_go_to_others(
        servers, channel_name, instances):
    tally = Tally(total=150)
    await publish_n(servers[0], channel_name, tally.total)
    c = Consumer(servers[0], channel_name, "workers")
    assert (await c.put(mode="shared", lease=2, max_deliveries=100)).code == 201
    members = [c.via(servers[i % 2]) for i in range(instances)]
    # instance 0 works for a while, then dies holding three leases
    runs = [defer.ensureDeferred(work(i, m, tally, stop_after=10 if i == 0 else None))
            for i, m in enumerate(members)]
    held, *_ = await defer.gatherResults(runs)
    tally.check(live=set(range(instances)))
    assert len(held) == 3
    for event_id in held:
        assert tally.deliveries[event_id] >= 2
        assert 0 not in tally.acked[event_id]
    assert sum(1 for by in tally.acked.values() if by == [0]) == 10
    if instances == 3:  # both survivors shared the work
        assert {by[0] for by in tally.acked.values()} == {0, 1, 2}
    s = (await c.status()).json()
    assert (s["cursor"], s["lag"], s["in_flight"], s["dead"]) == (tally.total, 0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_shared_leases_expiring_mid_work_are_never_held_twice(servers, channel_name):
    """Leases shorter than some of the work: acks race expiry and takeover."""
    import random

    rng = random.Random(3)
    tally = Tally(total=40)
    await publish_n(servers[0], channel_name, tally.total)
    c = Consumer(servers[0], channel_name)
    await c.put(mode="shared", lease=1, max_deliveries=1000)  # the shortest lease
    runs = [defer.ensureDeferred(work(i, c.via(servers[i % 2]), tally,
                                      pause=lambda: rng.choice((0, 0, 0, 0, 0.05, 1.1))))
            for i in range(3)]
    await defer.gatherResults(runs)
    tally.check(live={0, 1, 2})
    assert max(tally.deliveries.values()) >= 2  # some leases did expire


# -- durability ---------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_consumer_state_survives_a_server_restart(servers, channel_name):
    await publish_n(servers[0], channel_name, 4)
    c = Consumer(servers[1], channel_name)
    await c.put(mode="shared", lease=60, max_deliveries=2)
    first = await take(c)
    assert await c.ack(first["lease"]) == 204
    held = await take(c)  # leased across the restart
    before = (await c.status()).json()
    port = servers[1].port
    servers[1].stop()
    servers[1].start()
    assert servers[1].port == port
    assert (await c.status()).json() == before
    assert await c.ack(held["lease"]) == 204  # the lease is still valid
    assert (await take(c))["event"]["id"] == 3
