"""SSE fan-out through broadcast groups, over real HTTP.

Streams that have caught up with their channel share one broadcast group
(:mod:`eventbus.http.broadcast`); these tests hold the group to every guarantee a
stream on its own has: every event exactly once and in order (single and
batch publishes racing each other, streams joining late), a client that stops
reading leaves the group without holding up the others or growing the
server, a disconnect is dropped at once, keep-alives on a quiet channel, and
events published through another server process.
"""
from __future__ import annotations

import json
import re
import socket
from typing import Iterator, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from tests.integration import test_sse
from tests.client import request
from tests.servers import ServerProcess, vm_rss_kb
from tests.sse_client import SSEClient, open_stream, sleep, stream_request, until
from tests.integration.test_sse import (
    CTX, HEARTBEAT_S, MAX_GROWTH_KB, PROMPT_S, connected, read_until, stream_path)

# The fixtures of test_sse.py (pytest finds fixtures among a module's names).
sse_server = test_sse.sse_server
publisher = test_sse.publisher
bus = test_sse.bus

STREAMS = 50
ROUNDS = 4
SINGLES_PER_ROUND = 40
#: Larger than the notifier's tail: the group reads the rest from the store.
BIG_BATCH = 300
SMALL_BATCH = 7
LATE_STREAMS = 5


@pytest.fixture(scope="module")
def other_server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second server process on the same database (publishes go through it)."""
    proc = ServerProcess(["--dsn", dsn, "--heartbeat", str(HEARTBEAT_S)],
                         tmp_path_factory.mktemp("sse-other-server"))
    proc.start()
    yield proc
    proc.stop()


async def publish_raw(base: str, channel: str, body: bytes) -> None:
    r = await request("POST", f"{base}/events/{CTX}/{channel}", data=body,
                      headers={"X-EVENT-ISSUER": "fanout"})
    assert r.code == 201, r


async def publish_quickly(base: str, channel: str, round_no: int) -> int:
    """Singles (all in flight at once) racing two batches; the number published."""
    bodies = [json.dumps({"r": round_no, "n": n}).encode() for n in range(SINGLES_PER_ROUND)]
    bodies.append(json.dumps([{"r": round_no, "big": n} for n in range(BIG_BATCH)]).encode())
    bodies.append(json.dumps([{"r": round_no, "small": n} for n in range(SMALL_BATCH)]).encode())
    await defer.gatherResults([defer.ensureDeferred(publish_raw(base, channel, b))
                               for b in bodies], consumeErrors=True)
    return SINGLES_PER_ROUND + BIG_BATCH + SMALL_BATCH


async def all_received(clients: list[SSEClient], total: int) -> None:
    await until(lambda: all(len(c.messages) >= total for c in clients), PROMPT_S * 3,
                f"{total} messages on each of {len(clients)} streams")
    await sleep(0.3)  # room for a stray duplicate to show up


def assert_every_event_once_in_order(clients: list[SSEClient], total: int) -> None:
    for client in clients:
        assert client.ids() == list(range(1, total + 1))
        # The data is the event itself, not a neighbour's.
        assert [json.loads(m.data)["id"] for m in client.messages] == client.ids()


@pytest_twisted.ensureDeferred
async def test_many_streams_on_one_channel_get_every_event_once_and_in_order(
        sse_server, channel_name):
    clients = [await open_stream(sse_server.port, stream_path(channel_name, "after=0"))
               for _ in range(STREAMS)]
    for client in clients:
        await connected(client)
    total = 0
    for round_no in range(ROUNDS):
        if round_no == ROUNDS // 2:
            # Late streams replay from the store, then join the group.
            clients += [await open_stream(sse_server.port, stream_path(channel_name, "after=0"))
                        for _ in range(LATE_STREAMS)]
        total += await publish_quickly(sse_server.base, channel_name, round_no)
    await all_received(clients, total)
    assert_every_event_once_in_order(clients, total)
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_streams_on_another_process_than_the_publisher_get_everything(
        sse_server, other_server, channel_name):
    # Streams here, publishes there: only NOTIFY tells this process.
    clients = [await connected(await open_stream(sse_server.port,
                                                 stream_path(channel_name, "after=0")))
               for _ in range(10)]
    total = 0
    for round_no in range(2):
        total += await publish_quickly(other_server.base, channel_name, round_no)
    await all_received(clients, total)
    assert_every_event_once_in_order(clients, total)
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_keepalives_reach_every_stream_of_a_quiet_channel_before_and_after_events(
        sse_server, channel_name):
    clients = [await connected(await open_stream(sse_server.port, stream_path(channel_name)))
               for _ in range(5)]
    await until(lambda: all(c.comments.count("keepalive") >= 2 for c in clients),
                PROMPT_S, "two keep-alives on every stream")
    await publish_raw(sse_server.base, channel_name, b'{"one": 1}')
    await until(lambda: all(len(c.messages) == 1 for c in clients), PROMPT_S, "the event")
    seen = [c.comments.count("keepalive") for c in clients]
    await until(lambda: all(c.comments.count("keepalive") >= s + 2 for c, s in zip(clients, seen)),
                PROMPT_S, "keep-alives after the event")
    assert all(c.ids() == [1] for c in clients)
    for client in clients:
        await client.close()


# -- a client that stops reading --------------------------------------------------------
_ID_LINE = re.compile(rb"^id: (\d+)$", re.M)


class IdCounter(Protocol):
    """A lean stream client for big volumes: keeps only the ids it got."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.ids: list[int] = []
        self._head: Optional[bytes] = b""
        self._text = b""
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self._head is not None:
            head, sep, data = (self._head + data).partition(b"\r\n\r\n")
            if not sep:
                self._head = head
                return
            self._head = None
        # Chunk-size lines never look like "id: N" lines, so the chunked
        # coding can stay: only whole lines are scanned.
        text = self._text + data
        end = text.rfind(b"\n")
        if end < 0:
            self._text = text
            return
        self.ids.extend(int(m) for m in _ID_LINE.findall(text, 0, end))
        self._text = text[end + 1:]

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)

    async def close(self) -> None:
        self.transport.loseConnection()
        await self.lost


SLOW_EVENTS = 6000
SLOW_PAYLOAD_BYTES = 10_000
SLOW_BATCH = 500


def stalled_socket(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A stream whose client reads nothing after the opening (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(stream_request(path))
    return sock, read_until(sock, b": connected\n\n", 30)


@pytest_twisted.ensureDeferred
async def test_a_stream_whose_client_stops_reading_holds_up_nobody_and_gets_everything_later(
        sse_server, publisher, channel_name):
    path = stream_path(channel_name, "after=0")
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", sse_server.port)
    fast = [await connectProtocol(endpoint, IdCounter(stream_request(path))) for _ in range(3)]
    sock, head = stalled_socket(sse_server.port, path)
    try:
        pid = sse_server.proc.pid
        before = vm_rss_kb(pid)
        filler = "x" * SLOW_PAYLOAD_BYTES
        for start in range(1, SLOW_EVENTS + 1, SLOW_BATCH):
            batch = ",".join(json.dumps({"n": n, "fill": filler})
                             for n in range(start, start + SLOW_BATCH))
            await publisher.append(CTX, channel_name, "slow", f"[{batch}]")
        # The others get everything while the stalled one takes nothing; the
        # server does not keep for it what it sends them.
        peak = before
        while not all(len(c.ids) >= SLOW_EVENTS for c in fast):
            await sleep(0.05)
            peak = max(peak, vm_rss_kb(pid))
            assert peak - before < MAX_GROWTH_KB, f"server grew by {peak - before} kB"
        for client in fast:
            assert client.ids == list(range(1, SLOW_EVENTS + 1))

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rest = await threads.deferToThread(
            read_until, sock, b"id: %d\nevent: event\n" % SLOW_EVENTS)
    finally:
        sock.close()
        for client in fast:
            await client.close()
    stalled = SSEClient(b"")
    stalled.dataReceived(head + rest)
    assert stalled.ids() == list(range(1, SLOW_EVENTS + 1))


# -- in-process: group membership ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_paused_stream_leaves_its_group_and_the_others_stay(bus, publisher, channel_name):
    path = stream_path(channel_name, "after=0")
    fast = [await connected(await open_stream(bus.port_number, path)) for _ in range(2)]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bus.port_number))
    sock.sendall(stream_request(path))
    sock.setblocking(False)  # and never read
    await until(lambda: bus.caught_up() == 3, PROMPT_S, "three streams in the group")

    filler = "y" * 10_000
    for start in range(1, 1501, 500):
        batch = ",".join(json.dumps({"n": n, "fill": filler}) for n in range(start, start + 500))
        await publisher.append(CTX, channel_name, "slow", f"[{batch}]")
    await until(lambda: all(len(c.messages) >= 1500 for c in fast), PROMPT_S * 3,
                "the fast streams getting everything")
    await until(lambda: bus.streams.paused_streams() == 1 and bus.caught_up() == 2,
                PROMPT_S, "the stalled stream out of the group, the others in it")
    assert all(c.ids() == list(range(1, 1501)) for c in fast)

    sock.close()
    await until(lambda: bus.streams.open_streams() == 2, PROMPT_S, "the stalled one dropped")
    for client in fast:
        await client.close()
    await until(bus.holds_nothing, PROMPT_S, "everything being dropped")


@pytest_twisted.ensureDeferred
async def test_a_disconnected_stream_is_removed_from_its_group_at_once(
        bus, publisher, channel_name):
    clients = [await connected(await open_stream(bus.port_number, stream_path(channel_name)))
               for _ in range(3)]
    await until(lambda: bus.caught_up() == 3, PROMPT_S, "three streams in the group")
    assert bus.streams.broadcaster.groups() == 1

    clients[0].transport.abortConnection()
    await clients[0].lost
    await until(lambda: bus.caught_up() == 2 and bus.streams.open_streams() == 2,
                PROMPT_S, "the stream leaving its group")
    await publisher.append(CTX, channel_name, "tests", '[{"after": 1}]')
    await until(lambda: all(len(c.messages) == 1 for c in clients[1:]), PROMPT_S, "the event")

    for client in clients[1:]:
        client.transport.loseConnection()
        await client.lost
    await until(bus.holds_nothing, PROMPT_S, "the group being dissolved")
    assert not [c for c in reactor.getDelayedCalls()
                if c.func.__module__ in ("eventbus.http.broadcast", "eventbus.notifier")]
