"""A small raw-TCP Server-Sent Events client for the tests.

Raw, so a test sees exactly the bytes the server framed (after removing the
HTTP/1.1 chunked transfer coding), can drop the connection at any moment, and
can send any headers.  The SSE parsing follows the WHATWG algorithm closely
enough for our messages: fields end at CR, LF or CRLF, a blank line
dispatches, ``data`` fields are joined with LF, ``:`` starts a comment.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable, NamedTuple, Optional

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

_LINE = re.compile(rb"\r\n|\r|\n")


class Message(NamedTuple):
    id: Optional[str]
    event: Optional[str]
    data: str


class SSEParser:
    """Feed it the response body; it collects messages and comments."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.comments: list[str] = []
        self.body = bytearray()
        self._pending = bytearray()
        self._fields: dict[str, list[str]] = {}

    def feed(self, data: bytes) -> None:
        self.body += data
        self._pending += data
        # Only complete lines; a trailing CR may be the first half of CRLF.
        end = max(self._pending.rfind(b"\n"), self._pending.rfind(b"\r", 0, -1))
        if end < 0:
            return
        complete, self._pending = self._pending[:end + 1], self._pending[end + 1:]
        for line in _LINE.split(bytes(complete))[:-1]:
            self._line(line.decode("utf-8"))

    def _line(self, line: str) -> None:
        if line == "":
            if "data" in self._fields:
                f = self._fields
                self.messages.append(Message(
                    f.get("id", [None])[-1], f.get("event", [None])[-1], "\n".join(f["data"])))
            self._fields = {}
        elif line.startswith(":"):
            self.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            self._fields.setdefault(name, []).append(value)


class SSEClient(Protocol):
    """Sends one GET and parses the response: status, headers, SSE body."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.parser = SSEParser()
        self.status: Optional[int] = None
        self.headers: dict[str, str] = {}
        self.raw = bytearray()
        self._head_done = False
        self._chunked = False
        self._buf = b""
        self.lost: defer.Deferred = defer.Deferred()

    # -- protocol -------------------------------------------------------------
    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        if not self._head_done:
            self._buf += data
            head, sep, rest = self._buf.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self._chunked = self.headers.get("transfer-encoding") == "chunked"
            self._head_done = True
            self._buf = b""
            data = rest
        if self._chunked:
            self._buf += data
            self._dechunk()
        else:
            self.parser.feed(data)

    def _dechunk(self) -> None:
        buf, pos = self._buf, 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";")[0], 16)
            if len(buf) < eol + 2 + size + 2:
                break
            self.parser.feed(buf[eol + 2:eol + 2 + size])
            pos = eol + 2 + size + 2
        self._buf = buf[pos:]

    def connectionLost(self, reason: object) -> None:
        self.lost.callback(None)

    # -- for tests --------------------------------------------------------------
    @property
    def messages(self) -> list[Message]:
        return self.parser.messages

    @property
    def comments(self) -> list[str]:
        return self.parser.comments

    def ids(self) -> list[int]:
        return [int(m.id) for m in self.messages if m.id is not None]

    def body_json(self) -> Any:
        import json

        return json.loads(self.raw.partition(b"\r\n\r\n")[2])

    async def close(self) -> None:
        self.transport.loseConnection()
        await self.lost


def stream_request(path: str, headers: Optional[dict[str, str]] = None,
                   method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_stream(port: int, path: str,
                      headers: Optional[dict[str, str]] = None) -> SSEClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await connectProtocol(endpoint, SSEClient(stream_request(path, headers)))


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await sleep(0.01)
