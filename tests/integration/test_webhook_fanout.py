"""Bounded webhook fan-out over real HTTP: real server processes (some with
``ulimit -n 1024``), the real database, real receivers on loopback in the
test process.

Each server gets a database of its own: every process delivers every
subscription of its database.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from tests.client import get, publish, request
from tests.servers import ServerProcess
from tests.webhook_receiver import Receiver, sleep, until, until_async

#: The open-files limit of the servers started with ``ulimit -n``.
FILES_LIMIT = 1024
#: Retry delays are 1/20 of the real ones.
SCALE = "0.05"


class LimitedServer(ServerProcess):
    """A server process started under ``ulimit -n FILES_LIMIT``."""

    def __init__(self, args: list[str], workdir: Any) -> None:
        super().__init__(args, workdir, open_files=FILES_LIMIT)

    def descriptors_in_use(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _database(postgres: Any, name: str) -> str:
    conn = psycopg2.connect(postgres.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return postgres.dsn(name)


def _args(postgres: Any, db: str, *extra: str) -> list[str]:
    return ["--dsn", _database(postgres, db), "--pool-size", "4", "--webhook-allow-private",
            "--webhook-retry-scale", SCALE, *extra]


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = ServerProcess(_args(postgres, "fanout_main"), tmp_path_factory.mktemp("fanout"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    if r._listening is not None and r._listening.connected:
        r._listening.stopListening()


async def _subscribe(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    r = await request("POST", server.url("/subscriptions"), json_body=fields)
    assert r.code == 201, r
    return r.json()


async def _status_if(server: ServerProcess, sid: int, predicate: Any) -> Any:
    r = await get(server.url(f"/subscriptions/{sid}"))
    assert r.code == 200, r
    status = r.json()
    return status if predicate(status) else None


def _failed_attempts(server: ServerProcess, sid: int) -> list[str]:
    return [line for line in server.log_path.read_text(errors="replace").splitlines()
            if f"webhook {sid}/" in line and " failed (" in line]


async def _within(d: Any, seconds: float = 10.0) -> Any:
    """A client request that must answer within ``seconds`` (no hang)."""
    return await defer.ensureDeferred(d).addTimeout(seconds, reactor)


# -- the storm ------------------------------------------------------------------------------
CHANNELS = 2000
BOUND = 32
ANSWER_AFTER_S = 0.25


async def _publish_many(server: ServerProcess, context: str, channels: list[str]) -> None:
    semaphore = defer.DeferredSemaphore(32)

    async def one(channel: str) -> None:
        r = await publish(server.base, context, channel, {"channel": channel})
        assert r.code == 201, r

    await defer.gatherResults([semaphore.run(lambda c=c: defer.ensureDeferred(one(c)))
                               for c in channels], consumeErrors=True)


@pytest_twisted.ensureDeferred
async def test_a_wildcard_subscription_over_2000_lagging_channels_stays_within_the_bound(
        postgres, tmp_path_factory, receiver):
    """The issue's scenario, with the receiver's hold scaled down to 0.25 s:
    under ``ulimit -n 1024`` clients are served throughout, every channel is
    delivered, and the receiver never sees more connections or requests at
    once than --webhook-concurrency."""
    proc = LimitedServer(
        _args(postgres, "fanout_storm", "--webhook-concurrency", str(BOUND),
              "--webhook-subscription-concurrency", str(2 * BOUND)),
        tmp_path_factory.mktemp("storm"))
    proc.start()
    try:
        channels = [f"c{n:04}" for n in range(CHANNELS)]
        await _publish_many(proc, "storm", channels)
        receiver.answer_after = ANSWER_AFTER_S
        sub = await _subscribe(proc, context="storm", channel="*", url=receiver.url,
                               start="earliest")
        checks_during_storm = 0
        for _ in range(600):
            if len({e["channel"] for e in receiver.events()}) == CHANNELS:
                break
            storming = receiver.in_flight > 0
            health = await _within(get(proc.url("/health"), persistent=False))
            assert health.code == 200, health
            published = await _within(publish(proc.base, "calm", "ch", {"during": "storm"}))
            assert published.code == 201, published
            checks_during_storm += storming and receiver.in_flight > 0
            await sleep(0.2)
        got = sorted((e["channel"], e["id"]) for e in receiver.events())
        assert sorted(set(got)) == [(c, 1) for c in channels]
        assert checks_during_storm >= 3  # the checks did run while deliveries were held
        assert receiver.peak_open <= BOUND, receiver.peak_open
        assert receiver.peak_in_flight <= BOUND, receiver.peak_in_flight
        assert receiver.peak_in_flight >= BOUND // 2  # the bound was what held it back
        await until_async(lambda: _status_if(proc, sub["id"], lambda s: s["lag"] == 0),
                          timeout=30, what="every cursor at its channel's head")
        assert "Too many open files" not in proc.log_path.read_text(errors="replace")
        assert _failed_attempts(proc, sub["id"]) == []
    finally:
        proc.stop()


# -- near the open-files limit ----------------------------------------------------------------
async def _fill_descriptors(proc: LimitedServer, free: int) -> list[socket.socket]:
    """Idle client connections until the server has ``free`` descriptors left."""
    held: list[socket.socket] = []
    while proc.descriptors_in_use() < FILES_LIMIT - free:
        chunk = min(40, FILES_LIMIT - free - proc.descriptors_in_use())
        before = proc.descriptors_in_use()
        for _ in range(chunk):
            held.append(socket.create_connection(("127.0.0.1", proc.port)))
        await until(lambda b=before, c=chunk: proc.descriptors_in_use() >= b + c, what="accepted")
    return held


@pytest_twisted.ensureDeferred
async def test_near_the_open_files_limit_delivery_waits_and_clients_are_still_served(
        postgres, tmp_path_factory, receiver, channel_name):
    proc = LimitedServer(_args(postgres, "fanout_files"), tmp_path_factory.mktemp("files"))
    proc.start()
    held: list[socket.socket] = []
    try:
        sub = await _subscribe(proc, context="files", channel=channel_name, url=receiver.url,
                               start="latest")
        await publish(proc.base, "files", channel_name, {"n": 1})
        await until(lambda: receiver.ids() == [1], what="the first delivery")
        # Clients take all but 115 descriptors: less than the 128 webhooks keep
        # free for clients, more than the server's own cap on client
        # connections leaves (it closes idle ones beyond limit - 128).
        held = await _fill_descriptors(proc, free=115)
        published = await _within(publish(proc.base, "files", channel_name, {"n": 2}))
        assert published.code == 201, published
        assert (await _within(get(proc.url("/health"), persistent=False))).code == 200
        await sleep(1.5)
        assert receiver.ids() == [1]  # outbound work waits ...
        status = (await get(proc.url(f"/subscriptions/{sub['id']}"))).json()
        assert status["lag"] == 1 and status["consecutive_failures"] == 0  # ... and has not failed
        assert status["last_error"] is None
        for s in held:
            s.close()
        held = []
        await until(lambda: receiver.ids() == [1, 2], timeout=20, what="delivery once room is back")
        status = await until_async(lambda: _status_if(proc, sub["id"], lambda s: s["lag"] == 0),
                                   what="cursor 2")
        assert status["consecutive_failures"] == 0 and _failed_attempts(proc, sub["id"]) == []
        assert "webhook delivery waits" in proc.log_path.read_text(errors="replace")
    finally:
        for s in held:
            s.close()
        proc.stop()


# -- keep-alive ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_deliveries_to_one_receiver_reuse_one_connection(server, receiver, channel_name):
    await _subscribe(server, context="keep", channel=channel_name, url=receiver.url,
                     start="latest")
    for n in range(10):
        await publish(server.base, "keep", channel_name, {"n": n})
    await until(lambda: len(receiver.requests) == 10, what="10 deliveries")
    assert receiver.ids() == list(range(1, 11))
    assert receiver.accepted == 1


class _ClosesReusedConnections(Protocol):
    """Answers the first request of a connection (keep-alive) and closes the
    connection without a word when another request arrives on it: an idle
    timeout racing the client."""

    def __init__(self, events: list, dropped: list) -> None:
        self.events, self.dropped = events, dropped
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        if len(rest) < length:
            return
        body, self.buffer = rest[:length], rest[length:]
        if self.answered:
            self.dropped.append(json.loads(body)["id"])
            self.transport.loseConnection()
            return
        self.answered = True
        self.events.append(json.loads(body)["id"])
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest_twisted.ensureDeferred
async def test_a_receiver_closing_idle_connections_costs_no_failed_attempt(server, channel_name):
    events: list[int] = []
    dropped: list[int] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: _ClosesReusedConnections(events, dropped)),
                             interface="127.0.0.1")
    try:
        sub = await _subscribe(server, context="race", channel=channel_name,
                               url=f"http://127.0.0.1:{port.getHost().port}/hook", start="latest")
        for n in range(10):
            await publish(server.base, "race", channel_name, {"n": n})
        await until(lambda: len(events) == 10, what="10 deliveries")
        assert events == list(range(1, 11))
        assert dropped  # reused connections were tried, and closed under them
        await until_async(lambda: _status_if(server, sub["id"], lambda s: s["lag"] == 0),
                          what="cursor 10")
        assert _failed_attempts(server, sub["id"]) == []
    finally:
        await port.stopListening()


class _ReadmeReceiver(BaseHTTPRequestHandler):
    """The README's receiver (standard library, HTTP/1.0: it closes after
    each answer without saying so), minus the signature check."""

    events: list[int] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.events.append(json.loads(body)["id"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_an_http_1_0_receiver_gets_every_event_once_without_failed_attempts(
        server, channel_name):
    httpd = HTTPServer(("127.0.0.1", 0), _ReadmeReceiver)
    _ReadmeReceiver.events = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        sub = await _subscribe(server, context="http10", channel=channel_name,
                               url=f"http://127.0.0.1:{httpd.server_port}/", start="latest")
        for n in range(10):
            await publish(server.base, "http10", channel_name, {"n": n})
        await until(lambda: len(_ReadmeReceiver.events) >= 10, what="10 deliveries")
        await until_async(lambda: _status_if(server, sub["id"], lambda s: s["lag"] == 0),
                          what="cursor 10")
        assert _ReadmeReceiver.events == list(range(1, 11))
        assert _failed_attempts(server, sub["id"]) == []
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the smaller items -----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_receiver_that_never_answers_shows_no_response_within_10_s(
        server, receiver, channel_name):
    receiver.hold = True
    sub = await _subscribe(server, context="silent", channel=channel_name, url=receiver.url,
                           start="latest")
    await publish(server.base, "silent", channel_name, {"n": 1})
    status = await until_async(
        lambda: _status_if(server, sub["id"], lambda s: s["consecutive_failures"] >= 1),
        timeout=30, what="the first failed attempt")
    assert status["last_error"] == "no response within 10 s", status
    assert status["last_status"] is None
    receiver.hold = False
    await until(lambda: receiver.ids()[-1:] == [1] and len(receiver.requests) >= 2,
                timeout=20, what="the retry")


@pytest_twisted.ensureDeferred
async def test_a_url_with_port_0_is_a_400_and_ports_1_to_65535_are_accepted(server, channel_name):
    for url in ["http://127.0.0.1:0/hook", "http://127.0.0.1:00/", "http://127.0.0.1:65536/"]:
        r = await request("POST", server.url("/subscriptions"),
                          json_body={"context": "ports", "channel": channel_name, "url": url,
                                     "start": "latest"})
        assert r.code == 400, (url, r)
        assert r.json()["error"] == "url port must be from 1 to 65535", r
    for url in ["http://127.0.0.1:1/hook", "http://127.0.0.1:65535/"]:
        sub = await _subscribe(server, context="ports", channel=channel_name, url=url,
                               start="latest")
        assert (await request("DELETE", server.url(f"/subscriptions/{sub['id']}"))).code == 204
