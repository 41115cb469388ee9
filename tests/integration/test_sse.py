"""Server-Sent Events: ``GET /events/{context}/{channel}/stream``.

Most tests talk to a real server process (started with ``--heartbeat 0.2``)
over raw TCP, so they see the exact bytes on the wire.  The disconnect and
outage tests run the real store, notifier, listener, API and site inside the
test's reactor instead, so they can look at what the server still holds.
"""
from __future__ import annotations

import json
import socket
import struct
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.logger import globalLogPublisher
from twisted.python import usage

from eventbus.config import Options
from tests.inprocess import Publisher, in_process_bus
from tests.client import get, publish, request
from tests.servers import ServerProcess, vm_rss_kb
from tests.sse_client import SSEClient, open_stream, sleep, stream_request, until

CTX = "ctx"
HEARTBEAT_S = 0.2
#: Generous deadline for things that should happen promptly.
PROMPT_S = 10.0


@pytest.fixture(scope="module")
def sse_server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn, "--heartbeat", str(HEARTBEAT_S)],
                         tmp_path_factory.mktemp("sse-server"))
    proc.start()
    yield proc
    proc.stop()


@pytest_twisted.async_yield_fixture
async def publisher(dsn: str) -> AsyncIterator[Publisher]:
    """A real event store, used from the test process to append in bulk.

    Its pg_notify reaches the server through LISTEN, as a publish through
    another server process would.
    """
    store = await Publisher(dsn).open()
    try:
        yield store
    finally:
        store.close()


def stream_path(channel: str, query: str = "") -> str:
    return f"/events/{CTX}/{channel}/stream" + (f"?{query}" if query else "")


async def connected(client: SSEClient) -> SSEClient:
    """Wait for the response head and the opening comment."""
    await until(lambda: "connected" in client.comments, PROMPT_S, "the stream opening")
    return client


async def got(client: SSEClient, count: int) -> None:
    await until(lambda: len(client.messages) >= count, PROMPT_S, f"{count} SSE messages")


# -- framing and starting points ----------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_each_event_is_one_message_with_id_event_and_json_data(sse_server, channel_name):
    first = (await publish(sse_server.base, CTX, channel_name, {"x": 1, "y": "test"})).json()
    # Line breaks (LF and CRLF) inside the published JSON text, kept as is.
    raw = b'{\n  "a": [1,\r\n 2],\n  "s": "caf\xc3\xa9"\n}'
    r = await request("POST", sse_server.url(f"/events/{CTX}/{channel_name}"), data=raw,
                      headers={"X-EVENT-ISSUER": "multi"})
    assert r.code == 201, r

    client = await connected(await open_stream(sse_server.port, stream_path(channel_name, "after=0")))
    await got(client, 2)
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"

    one, two = client.messages[:2]
    assert (one.id, one.event) == ("1", "event")
    assert json.loads(one.data) == first
    # The exact bytes of a single-line event: id, event, data, blank line.
    stored = (await get(sse_server.url(f"/events/{CTX}/{channel_name}/1"))).body
    assert b"id: 1\nevent: event\ndata: " + stored + b"\n\n" in client.raw
    assert (two.id, two.event) == ("2", "event")
    assert json.loads(two.data) == {
        "id": 2, "issuer": "multi", "context": CTX, "channel": channel_name,
        "timestamp": json.loads(two.data)["timestamp"], "payload": {"a": [1, 2], "s": "café"}}
    await client.close()

    # The static "stream" segment did not swallow the single-event route.
    assert (await get(sse_server.url(f"/events/{CTX}/{channel_name}/2"))).code == 200
    # HEAD answers the headers and ends.
    head = await request("HEAD", sse_server.url(stream_path(channel_name)))
    assert head.code == 200 and head.header("Content-Type") == "text/event-stream"


@pytest_twisted.ensureDeferred
async def test_after_zero_replays_the_channel_then_continues_live(sse_server, channel_name):
    for i in range(3):
        await publish(sse_server.base, CTX, channel_name, {"i": i})
    client = await open_stream(sse_server.port, stream_path(channel_name, "after=0"))
    await got(client, 3)
    for i in range(3, 5):
        await publish(sse_server.base, CTX, channel_name, {"i": i})
    await got(client, 5)
    assert client.ids() == [1, 2, 3, 4, 5]
    assert [json.loads(m.data)["payload"]["i"] for m in client.messages] == [0, 1, 2, 3, 4]
    await client.close()

    later = await open_stream(sse_server.port, stream_path(channel_name, "after=3"))
    await got(later, 2)
    assert later.ids() == [4, 5]
    await later.close()


@pytest_twisted.ensureDeferred
async def test_without_a_starting_point_only_new_events_are_sent(sse_server, channel_name):
    await publish(sse_server.base, CTX, channel_name, {"old": 1})
    await publish(sse_server.base, CTX, channel_name, {"old": 2})
    client = await connected(await open_stream(sse_server.port, stream_path(channel_name)))
    await publish(sse_server.base, CTX, channel_name, {"new": 3})
    await got(client, 1)
    assert client.ids() == [3]
    assert json.loads(client.messages[0].data)["payload"] == {"new": 3}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_last_event_id_resumes_after_a_disconnect_without_loss_or_duplicates(
        sse_server, channel_name):
    client = await connected(await open_stream(sse_server.port, stream_path(channel_name, "after=0")))
    for i in range(1, 4):
        await publish(sse_server.base, CTX, channel_name, {"i": i})
    await got(client, 3)
    last = client.messages[-1].id
    await client.close()

    for i in range(4, 7):  # published while nobody listens
        await publish(sse_server.base, CTX, channel_name, {"i": i})
    # As EventSource reconnects: the same URL (after=0), plus Last-Event-ID.
    again = await open_stream(sse_server.port, stream_path(channel_name, "after=0"),
                              {"Last-Event-ID": last})
    await got(again, 3)
    await publish(sse_server.base, CTX, channel_name, {"i": 7})
    await got(again, 4)
    await sleep(0.3)  # room for a stray duplicate to show up
    assert client.ids() + again.ids() == list(range(1, 8))
    await again.close()


@pytest_twisted.ensureDeferred
async def test_an_idle_stream_gets_keepalive_comments(sse_server, channel_name):
    client = await connected(await open_stream(sse_server.port, stream_path(channel_name)))
    await until(lambda: client.comments.count("keepalive") >= 2, PROMPT_S, "two keep-alives")
    assert b"\n: keepalive\n\n" in client.raw
    assert client.messages == []
    await client.close()


@pytest_twisted.ensureDeferred
async def test_bad_starting_points_and_names_answer_400_json(sse_server, channel_name):
    bad = [
        (stream_path(channel_name, "after=abc"), {}),
        (stream_path(channel_name, "after=-1"), {}),
        (stream_path(channel_name, f"after={2**63}"), {}),
        (stream_path(channel_name, "after="), {}),
        (stream_path(channel_name, "after=1&after=2"), {}),
        (stream_path(channel_name), {"Last-Event-ID": "abc"}),
        (stream_path(channel_name), {"Last-Event-ID": "-3"}),
        (stream_path(channel_name, "after=1"), {"Last-Event-ID": str(2**64)}),
        (f"/events/{CTX}/bad!name/stream", {}),
        (f"/events/bad%20ctx/{channel_name}/stream", {}),
    ]
    for path, headers in bad:
        r = await get(sse_server.url(path), headers=headers)
        assert r.code == 400, (path, headers, r)
        assert r.header("Content-Type") == "application/json"
        assert "error" in r.json()
    r = await request("POST", sse_server.url(stream_path(channel_name)), data=b"{}",
                      headers={"X-EVENT-ISSUER": "t"})
    assert r.code == 405 and "GET" in r.header("Allow")


def test_heartbeat_option_defaults_to_15_seconds_and_must_be_positive():
    options = Options()
    options.parseOptions([])
    assert options["heartbeat"] == 15.0
    options = Options()
    options.parseOptions(["--heartbeat", "0.2"])
    assert options["heartbeat"] == 0.2
    for value in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(["--heartbeat", value])


# -- a slow reader --------------------------------------------------------------------
SLOW_EVENTS = 6000
SLOW_PAYLOAD_BYTES = 10_000
SLOW_BATCH = 500
#: How much the server may grow while a non-reading client falls ~60 MB behind.
MAX_GROWTH_KB = 40 * 1024


def read_until(sock: socket.socket, marker: bytes, limit_s: float = 120.0) -> bytes:
    """Blocking read (run in a thread) until ``marker`` has arrived and the
    HTTP chunk holding it is complete (it ends with an SSE blank line)."""
    sock.settimeout(limit_s)
    data = bytearray()
    seen = False
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}")
        data += chunk
        seen = seen or marker in data[-(len(chunk) + len(marker)):]
        if seen and data.endswith(b"\n\n\r\n"):
            return bytes(data)


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_keeps_server_memory_flat_and_then_gets_every_event(
        sse_server, publisher, channel_name):
    pid = sse_server.proc.pid
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", sse_server.port))
    try:
        sock.sendall(stream_request(stream_path(channel_name, "after=0")))
        head = read_until(sock, b": connected\n\n", 30)
        assert head.startswith(b"HTTP/1.1 200 ")
        before = vm_rss_kb(pid)

        filler = "x" * SLOW_PAYLOAD_BYTES
        for start in range(1, SLOW_EVENTS + 1, SLOW_BATCH):
            batch = ",".join(json.dumps({"n": n, "fill": filler})
                             for n in range(start, start + SLOW_BATCH))
            await publisher.append(CTX, channel_name, "slow", f"[{batch}]")
        # The server now has ~60 MB to send to a client that reads nothing:
        # watch its memory for a while (a buffering server would grow by it).
        peak = before
        for _ in range(20):
            await sleep(0.1)
            peak = max(peak, vm_rss_kb(pid))
        assert peak - before < MAX_GROWTH_KB, f"server grew by {peak - before} kB"

        # Now read it all: every event, in order, intact.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rest = await threads.deferToThread(
            read_until, sock, b"id: %d\nevent: event\n" % SLOW_EVENTS)
    finally:
        sock.close()
    client = SSEClient(b"")
    client.dataReceived(head + rest)
    assert client.ids() == list(range(1, SLOW_EVENTS + 1))
    payloads = [json.loads(m.data)["payload"] for m in client.messages]
    assert [p["n"] for p in payloads] == list(range(1, SLOW_EVENTS + 1))
    assert all(p["fill"] == filler for p in payloads)


# -- in-process: what the server holds ------------------------------------------------
class InProcessBus:
    def __init__(self, inner: Any) -> None:
        self.parts = inner.parts
        self.database = inner.parts.database
        self.streams = inner.parts.streams
        self.notifier = inner.parts.notifier
        self.port_number = inner.port_number
        self.failures: list[dict] = []

    def holds_nothing(self) -> bool:
        streams, notifier = self.streams, self.notifier
        return (streams.open_streams() == 0 and notifier.waiting() == 0
                and notifier.following() == 0 and streams.broadcaster.groups() == 0)

    def caught_up(self) -> int:
        """Streams waiting at the head of their channel (in a broadcast group)."""
        return self.streams.broadcaster.members()


@pytest_twisted.async_yield_fixture
async def bus(dsn: str) -> AsyncIterator[InProcessBus]:
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        async with in_process_bus(dsn, pool_size=2, heartbeat=HEARTBEAT_S) as inner:
            b = InProcessBus(inner)
            b.failures = failures
            yield b
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == [], [e.get("log_failure") for e in failures]


@pytest_twisted.ensureDeferred
async def test_a_disconnected_stream_leaves_no_stream_waiter_or_timer(bus, channel_name):
    assert bus.holds_nothing()
    clients = [await connected(await open_stream(bus.port_number, stream_path(channel_name)))
               for _ in range(2)]
    await until(lambda: bus.caught_up() == 2, PROMPT_S, "two streams waiting")
    assert bus.streams.open_streams() == 2

    clients[0].transport.loseConnection()
    clients[1].transport.abortConnection()  # a reset, not a polite close
    await clients[0].lost
    await clients[1].lost
    await until(bus.holds_nothing, PROMPT_S, "the streams and waiters being dropped")
    # The heartbeat and flush timers went with them.
    assert not [c for c in reactor.getDelayedCalls()
                if c.func.__module__ in ("eventbus.http.broadcast", "eventbus.notifier")]


@pytest_twisted.ensureDeferred
async def test_a_stream_paused_by_its_client_is_freed_when_the_client_goes(
        bus, publisher, channel_name):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bus.port_number))  # the kernel completes it
    sock.sendall(stream_request(stream_path(channel_name, "after=0")))
    sock.setblocking(False)  # and never read
    await until(lambda: bus.streams.open_streams() == 1, PROMPT_S, "the stream opening")

    filler = "y" * 10_000
    for start in range(1, 1501, 500):
        batch = ",".join(json.dumps({"n": n, "fill": filler}) for n in range(start, start + 500))
        await publisher.append(CTX, channel_name, "slow", f"[{batch}]")
    await until(lambda: bus.streams.paused_streams() == 1, PROMPT_S * 3,
                "the transport pausing the stream")

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    await until(bus.holds_nothing, PROMPT_S, "the paused stream being dropped")


@pytest_twisted.ensureDeferred
async def test_a_database_outage_neither_ends_nor_breaks_an_open_stream(
        bus, publisher, channel_name):
    client = await connected(await open_stream(bus.port_number, stream_path(channel_name)))
    await until(lambda: bus.caught_up() == 1, PROMPT_S, "the stream waiting")

    bus.database.close()  # the server's pool goes away
    # The next heartbeat's read fails; keep-alives continue meanwhile.
    seen = len(client.comments)
    await until(lambda: len(client.comments) >= seen + 2, PROMPT_S, "keep-alives in the outage")
    # Opening a stream now is a plain 503.
    refused = await open_stream(bus.port_number, stream_path(channel_name))
    await until(lambda: refused.status is not None and refused.raw.endswith(b"}"),
                PROMPT_S, "the 503")
    assert refused.status == 503 and "error" in refused.body_json()
    await refused.close()

    await publisher.append(CTX, channel_name, "tests", '[{"during": 1}]')
    await sleep(0.3)
    await bus.database.open()
    await got(client, 1)
    assert client.ids() == [1]
    await publisher.append(CTX, channel_name, "tests", '[{"after": 2}]')
    await got(client, 2)
    assert client.ids() == [1, 2]
    assert not client.lost.called
    await client.close()
    await until(bus.holds_nothing, PROMPT_S, "the stream being dropped")
