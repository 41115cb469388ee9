"""What readers that stop reading cost a server process, and that it gets
the memory back when they go (issue 8).

A channel of 300 events of 1 MiB each (random text); ten SSE clients
replaying it (``after=0``) and three history clients (``GET`` of the whole
channel), each a raw socket that sends its request and never reads.  The
server must hold about one page per client (a page is cut at
``PAGE_BYTES``, whatever the events' sizes), and once the clients
disconnect its resident memory must come back near where it started, round
after round.  The server is a real process of its own, so its VmRSS is
only its own doing.
"""
from __future__ import annotations

import json
import os
import socket
import time
from base64 import b64encode
from typing import AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import threads

from eventbus.storage.pages import PAGE_BYTES
from tests.inprocess import Publisher
from tests.servers import ServerProcess, vm_rss_kb, wait_quiet

CTX = "memory"
CHANNEL = "big"
EVENTS = 300
EVENT_BYTES = 1024 * 1024
BATCH = 10
SSE_CLIENTS = 10
HISTORY_CLIENTS = 3
ROUNDS = 3
MIB = 1024
#: The issue's bounds, over the resident memory before the first round.
CONNECTED_MAX_KB = 150 * MIB
AFTER_MAX_KB = 50 * MIB
#: How long we let the server settle after the clients went away (it is
#: done at once; this is only a ceiling for a slow machine).
SETTLE_S = 30.0


def big_payload(n: int) -> str:
    """A JSON object of about 1 MiB of random, incompressible text."""
    text = b64encode(os.urandom(EVENT_BYTES * 3 // 4)).decode()[: EVENT_BYTES - 32]
    return json.dumps({"n": n, "s": text})


@pytest.fixture(scope="module")
def server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this module's own: its memory is what the test measures."""
    proc = ServerProcess(["--dsn", dsn], tmp_path_factory.mktemp("memory-server"))
    proc.start()
    yield proc
    proc.stop()


@pytest_twisted.async_yield_fixture
async def big_channel(server: ServerProcess, dsn: str) -> AsyncIterator[str]:
    """300 events of 1 MiB, appended in batches by a store of the test's own."""
    publisher = await Publisher(dsn).open()
    try:
        for start in range(1, EVENTS + 1, BATCH):
            payloads = [big_payload(n) for n in range(start, start + BATCH)]
            await publisher.events.append(CTX, CHANNEL, "tests", payloads)
        yield CHANNEL
    finally:
        publisher.close()


def open_clients(port: int, channel: str, sse: int, history: int) -> list[socket.socket]:
    """Clients that send their request and never read a byte of the answer."""
    paths = [f"/events/{CTX}/{channel}/stream?after=0"] * sse + [f"/events/{CTX}/{channel}"] * history
    clients = []
    for path in paths:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        clients.append(sock)
    return clients


def answered(sock: socket.socket) -> bool:
    try:
        return len(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) == 1
    except BlockingIOError:
        return False


def hold(server: ServerProcess, clients: list[socket.socket]) -> int:
    """Wait until every client has been answered and the server has done what
    it will do for them; the peak resident memory meanwhile, in KiB."""
    pid = server.proc.pid
    peak = vm_rss_kb(pid)
    deadline = time.monotonic() + SETTLE_S
    while not all(answered(s) for s in clients):
        assert time.monotonic() < deadline, "the server did not answer every client"
        peak = max(peak, vm_rss_kb(pid))
        time.sleep(0.05)
    wait_quiet(pid)
    return max(peak, vm_rss_kb(pid))


def released(server: ServerProcess, base_kb: int) -> int:
    """Resident memory (KiB) once the server is quiet after the disconnects,
    waiting a while for it to come within the bound."""
    pid = server.proc.pid
    wait_quiet(pid)
    deadline = time.monotonic() + SETTLE_S
    while vm_rss_kb(pid) - base_kb > AFTER_MAX_KB and time.monotonic() < deadline:
        time.sleep(0.2)
    return vm_rss_kb(pid)


def rounds(server: ServerProcess, channel: str) -> list[tuple[int, int]]:
    # One small round first, so that what the first use of each path
    # allocates for good (code, caches, buffers) is in the baseline.
    for sock in open_clients(server.port, channel, 1, 1):
        sock.close()
    wait_quiet(server.proc.pid)
    base = vm_rss_kb(server.proc.pid)
    figures = []
    for _ in range(ROUNDS):
        clients = open_clients(server.port, channel, SSE_CLIENTS, HISTORY_CLIENTS)
        try:
            peak = hold(server, clients)
        finally:
            for sock in clients:
                sock.close()
        figures.append((peak - base, released(server, base) - base))
    return figures


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_readers_that_never_read_cost_a_page_each_and_give_it_back_when_they_go(
        server, big_channel):
    figures = await threads.deferToThread(rounds, server, big_channel)
    report = ", ".join(f"+{c // MIB} MiB connected, +{a // MIB} MiB after" for c, a in figures)
    print(report)
    for connected, after in figures:
        assert connected < CONNECTED_MAX_KB, report
        assert after < AFTER_MAX_KB, report
    # About a page a client, not the channel: 13 clients, 300 MiB of events.
    assert max(c for c, _ in figures) < (SSE_CLIENTS + HISTORY_CLIENTS) * 4 * PAGE_BYTES // 1024, report
    assert server.proc.poll() is None
