"""A long-poll client that goes away must not leave its waiter behind.

In-process: the real store, notifier, listener, API and site run in the test's
reactor on a loopback port, so the notifier's waiter count can be observed
directly while a raw TCP client connects, waits and hangs up.
"""
from __future__ import annotations

import time
from typing import AsyncIterator

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.inprocess import InProcessBus, in_process_bus

CTX = "ctx"
#: How long a dropped waiter may linger (it should go at once).
PROMPT_S = 2.0


class RawClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)


class Bus:
    def __init__(self, inner: InProcessBus) -> None:
        self.inner = inner
        self.notifier = inner.parts.notifier
        self.store = inner.parts.events
        self.port_number = inner.port_number

    async def connect(self) -> RawClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
        return await connectProtocol(endpoint, RawClient())


@pytest_twisted.async_yield_fixture
async def bus(dsn: str) -> AsyncIterator[Bus]:
    async with in_process_bus(dsn, pool_size=2) as inner:
        yield Bus(inner)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(predicate, timeout: float, what: str) -> float:
    """Poll ``predicate`` until it holds; return how long that took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await sleep(0.01)
    return time.monotonic() - start


def peek_request(channel: str, cursor: int = 0, timeout: int = 300) -> bytes:
    return (
        f"GET /events/{CTX}/{channel}?peek={cursor}&timeout={timeout} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n\r\n"
    ).encode()


@pytest_twisted.ensureDeferred
async def test_disconnected_long_poll_client_is_removed_at_once(bus, channel_name):
    assert bus.notifier.waiting() == 0
    client = await bus.connect()
    client.transport.write(peek_request(channel_name))
    await until(lambda: bus.notifier.waiting() == 1, 10, "the waiter registering")
    assert client.received == b"", "the peek answered instead of waiting"

    client.transport.loseConnection()
    await client.lost
    await until(lambda: bus.notifier.waiting() == 0, PROMPT_S, "the waiter being dropped")


@pytest_twisted.ensureDeferred
async def test_only_the_disconnected_waiter_is_dropped_and_the_other_still_wakes(
        bus, channel_name):
    leaving = await bus.connect()
    staying = await bus.connect()
    leaving.transport.write(peek_request(channel_name))
    staying.transport.write(peek_request(channel_name))
    await until(lambda: bus.notifier.waiting() == 2, 10, "both waiters registering")

    leaving.transport.abortConnection()  # a reset, not a polite close
    await leaving.lost
    await until(lambda: bus.notifier.waiting() == 1, PROMPT_S, "the waiter being dropped")

    # The remaining waiter is woken through the real LISTEN/NOTIFY path.
    await bus.store.append(CTX, channel_name, "tests", ['{"n": 1}'])
    await until(lambda: b'"n": 1' in staying.received or b'"n":1' in staying.received,
                10, "the remaining waiter being answered")
    assert staying.received.startswith(b"HTTP/1.1 200 ")
    assert b'"id":1' in staying.received
    await until(lambda: bus.notifier.waiting() == 0, PROMPT_S, "the waiter being released")
    staying.transport.loseConnection()
    await staying.lost
