"""A minimal asyncio HTTP/1.1 client for the measurements wrk cannot make.

Keep-alive connections, ``Content-Length`` and chunked bodies, and a
streaming read that hands each piece of body to a callback as it arrives
(for timing a large ``GET``).  Deliberately small: the less the client does
per request, the less it colours a latency.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Optional

HOST = "127.0.0.1"
READ_SIZE = 1 << 16


class HTTPError(Exception):
    pass


class Response:
    __slots__ = ("status", "headers", "body", "received_at")

    def __init__(self, status: int, headers: dict[str, str], body: bytes,
                 received_at: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        #: ``time.perf_counter()`` when the last byte of the body arrived.
        self.received_at = received_at


def build_request(method: str, path: str, body: Optional[bytes] = None,
                  headers: Optional[dict[str, str]] = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Connection:
    """One keep-alive connection; requests on it are sequential."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def connect(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 22)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def send(self, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[dict[str, str]] = None) -> None:
        """Write a request without waiting for anything."""
        assert self.writer is not None
        self.writer.write(build_request(method, path, body, headers))

    async def request(self, method: str, path: str, body: Optional[bytes] = None,
                      headers: Optional[dict[str, str]] = None) -> Response:
        self.send(method, path, body, headers)
        return await self.response(head=method == "HEAD")

    async def response(self, head: bool = False,
                       on_data: Optional[Callable[[bytes], None]] = None) -> Response:
        """Read one response.  With ``on_data`` the body is passed on piece by
        piece instead of being kept (``Response.body`` is then empty)."""
        reader = self.reader
        assert reader is not None
        status_line = await reader.readline()
        if not status_line:
            raise HTTPError("connection closed")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {status_line[:80]!r}") from None
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts: list[bytes] = []
        sink = on_data or parts.append
        if head or status in (204, 304) or 100 <= status < 200:
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                sink(await reader.readexactly(size))
                await reader.readexactly(2)
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining:
                piece = await reader.read(min(remaining, READ_SIZE))
                if not piece:
                    raise HTTPError("connection closed mid-body")
                sink(piece)
                remaining -= len(piece)
        else:
            while piece := await reader.read(READ_SIZE):
                sink(piece)
        return Response(status, headers, b"".join(parts), time.perf_counter())
