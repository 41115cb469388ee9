"""GET of a whole channel streams from the database, paced by the client."""
from __future__ import annotations

import json
import socket

import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.client import request
from tests.servers import vm_rss_kb

CTX = "history"
EVENTS = 6000
PAYLOAD_BYTES = 10_000
BATCH = 50
#: How much the server may grow while a non-reading client is ~60 MB behind.
MAX_GROWTH_KB = 40 * 1024


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(120)
    data = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(data)
        data += chunk


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while True:
        end = body.index(b"\r\n", i)
        size = int(body[i:end], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        i = end + 2 + size + 2


@pytest_twisted.ensureDeferred
async def test_history_of_a_large_channel_streams_with_flat_memory(server, channel_name):
    filler = "x" * PAYLOAD_BYTES
    for start in range(0, EVENTS, BATCH):
        body = "[" + ",".join(json.dumps({"n": n, "fill": filler})
                              for n in range(start, start + BATCH)) + "]"
        r = await request("POST", server.url(f"/events/{CTX}/{channel_name}"),
                          data=body.encode(), headers={"X-EVENT-ISSUER": "t"})
        assert r.code == 201, r
    pid = server.proc.pid
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    try:
        before = vm_rss_kb(pid)
        sock.sendall(f"GET /events/{CTX}/{channel_name} HTTP/1.1\r\nHost: x\r\n"
                     "Connection: close\r\n\r\n".encode())
        # ~60 MB to send to a client that reads nothing for a while: a server
        # that buffered the whole answer would grow by about that much.
        peak = before
        for _ in range(20):
            await task.deferLater(reactor, 0.1, lambda: None)
            peak = max(peak, vm_rss_kb(pid))
        assert peak - before < MAX_GROWTH_KB, f"server grew by {peak - before} kB"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        raw = await threads.deferToThread(_read_all, sock)
    finally:
        sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    events = json.loads(_dechunk(body))
    assert [e["id"] for e in events] == list(range(1, EVENTS + 1))
    assert all(e["payload"] == {"n": i, "fill": filler} for i, e in enumerate(events))
