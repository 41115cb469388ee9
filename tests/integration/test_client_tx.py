"""The Twisted client (``eventbus.client.TxClient``) against real server processes."""
from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from eventbus.client import BadRequest, Conflict, Event, NotFound, TooLarge, Unreachable
from eventbus.client.tx import TxClient
from tests.dropping_proxy import DroppingProxy
from tests.servers import ServerProcess, free_port
from tests.sse_client import sleep, until

DEADLINE_S = 60.0


async def collect(iterator, count: int) -> list[Event]:
    got = []
    async for event in iterator:
        got.append(event)
        if len(got) == count:
            break
    return got


@pytest_twisted.ensureDeferred
async def test_a_published_event_comes_back_typed_and_exactly_as_sent(server, channel_name):
    c = TxClient(server.base, issuer="tx")
    try:
        event = await c.publish("tx", channel_name, '{"price": 1.50}')
        assert (event.id, event.issuer, event.payload) == (1, "tx", {"price": 1.5})
        assert event.raw.endswith('"payload":{"price": 1.50}}')
        assert await c.event("tx", channel_name, 1) == event
        assert await c.peek("tx", channel_name, 0) == event
        assert await c.peek("tx", channel_name, 1, timeout=0) is None
        stored = await c.publish_batch("tx", channel_name, [{"n": i} for i in range(2500)], split=True)
        assert [e.id for e in stored] == list(range(2, 2502))
        history = await collect(c.history("tx", channel_name), 10_000)
        assert [e.id for e in history] == list(range(1, 2502)) and history[0].raw == event.raw
        assert [e.id for e in await collect(c.history("tx", channel_name, limit=2), 10)] == [1, 2]
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_errors_are_typed_and_carry_the_servers_message(server, channel_name):
    c = TxClient(server.base, issuer="tx")
    try:
        with pytest.raises(NotFound, match=f"no event 3 in tx/{channel_name}"):
            await c.event("tx", channel_name, 3)
        with pytest.raises(BadRequest, match="not valid JSON"):
            await c.publish("tx", channel_name, "{")
        with pytest.raises(TooLarge):
            await c.publish_batch("tx", channel_name, [{"n": i} for i in range(1001)])
        with pytest.raises(BadRequest, match="channel must match"):
            await collect(c.history("tx", "bad name!"), 1)
    finally:
        await c.close()
    nobody = TxClient(f"http://127.0.0.1:{free_port()}", attempts=2)
    with pytest.raises(Unreachable, match="cannot connect"):
        await nobody.publish("tx", channel_name, {"a": 1}, issuer="i")


@pytest_twisted.ensureDeferred
async def test_follow_goes_on_across_a_server_restart_without_skipping_or_repeating(dsn, tmp_path, channel_name):
    proc = ServerProcess(["--dsn", dsn], tmp_path)
    await threads.deferToThread(proc.start)
    c = TxClient(proc.base, issuer="tx")
    got: list[int] = []

    async def follow() -> None:
        async for event in c.follow("tx", channel_name):
            got.append(event.id)
            if len(got) == 20:
                return

    try:
        await c.publish_batch("tx", channel_name, [{"n": i} for i in range(5)])
        following = defer.ensureDeferred(follow())
        await until(lambda: len(got) == 5, DEADLINE_S, "the first 5 events")
        for i in range(5):
            await c.publish("tx", channel_name, {"n": 5 + i})
        await until(lambda: len(got) == 10, DEADLINE_S, "10 events")
        await threads.deferToThread(proc.stop)
        await sleep(1.0)  # the follower retries against a closed port meanwhile
        await threads.deferToThread(proc.start)
        await c.publish_batch("tx", channel_name, [{"n": 10 + i} for i in range(10)])
        await until(lambda: following.called, DEADLINE_S, "20 events followed")
        await following
        assert got == list(range(1, 21))
    finally:
        await c.close()
        await threads.deferToThread(proc.stop)


@pytest_twisted.ensureDeferred
async def test_a_lease_acks_when_its_block_succeeds_and_nacks_when_it_raises(server, channel_name):
    c = TxClient(server.base, issuer="tx")
    try:
        await c.publish_batch("tx", channel_name, [{"n": 1}, {"n": 2}])
        consumer = c.consumer("tx", channel_name, "worker")
        with pytest.raises(ValueError):
            async with await consumer.next(10) as lease:
                assert (lease.event.id, lease.deliveries) == (1, 1)
                raise ValueError("handler failed")
        async with await consumer.next(10) as lease:
            assert (lease.event.id, lease.deliveries) == (1, 2)
        async with await consumer.next(10) as lease:
            assert lease.event.id == 2
        state = await consumer.state()
        assert (state["cursor"], state["lag"], state["in_flight"]) == (2, 0, 0)
        assert await consumer.next(0.2) is None
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_run_handles_every_event_with_several_loops_and_stops_when_told(server, channel_name):
    c = TxClient(server.base, issuer="tx")
    try:
        await c.publish_batch("tx", channel_name, [{"n": i} for i in range(20)])
        consumer = c.consumer("tx", channel_name, "pool", mode="shared")
        seen: list[int] = []
        failed_once: set[int] = set()

        async def handle(event: Event) -> None:
            await sleep(0.01)
            if event.id % 5 == 0 and event.id not in failed_once:
                failed_once.add(event.id)
                raise RuntimeError("first try fails")
            seen.append(event.id)

        running = consumer.run(handle, concurrency=3, poll=30)
        await until(lambda: len(seen) == 20, DEADLINE_S, "20 events handled")
        consumer.stop()  # cancels the lease requests being held
        handled = await running
        assert handled == 24 and sorted(seen) == list(range(1, 21))
        state = await consumer.state()
        assert (state["lag"], state["in_flight"]) == (0, 0)
    finally:
        await c.close()


@pytest_twisted.ensureDeferred
async def test_a_publish_retried_after_its_answer_was_lost_is_stored_once(server, channel_name):
    proxy = DroppingProxy(server.port)
    c = TxClient(proxy.base, issuer="tx")
    try:
        proxy.drop = 1
        event = await c.publish("tx", channel_name, {"once": True})
        assert proxy.dropped == 1
        direct = TxClient(server.base)
        stored = await collect(direct.history("tx", channel_name), 10)
        await direct.close()
        assert [e.id for e in stored] == [event.id] == [1]
    finally:
        await c.close()
        proxy.close()


@pytest_twisted.ensureDeferred
async def test_expected_last_id_lets_one_of_two_writers_win(server, channel_name):
    c = TxClient(server.base, issuer="tx")
    try:
        first, second = await defer.DeferredList(
            [c.publish("tx", channel_name, {"w": w}, expected_last_id=0) for w in (1, 2)], consumeErrors=True
        )
        outcomes = sorted([first, second], key=lambda r: r[0], reverse=True)
        assert outcomes[0][0] and outcomes[0][1].id == 1
        assert not outcomes[1][0] and outcomes[1][1].check(Conflict) and outcomes[1][1].value.last_id == 1
    finally:
        await c.close()
