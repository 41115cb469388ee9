"""The twisted.web Site: refuses oversized bodies before buffering them.

twisted.web reads a whole request body before any resource sees it, so the
``--max-body`` limit has to act at the channel level: on the announced
``Content-Length`` as soon as the headers are in, and on the running total
for chunked bodies.  The refusal is a 413 written straight to the transport,
after which the connection is half-closed and further upload is discarded.

Requests twisted.web itself refuses as malformed (request line, header or
body framing) get a JSON 400 from :class:`JsonErrorChannel`, so every error
the server sends is JSON.
"""
from __future__ import annotations

from typing import Any

from twisted.web import http, server

from eventbus.model import error_body

DEFAULT_MAX_BODY = 1024 * 1024
#: How long we keep reading (and discarding) an oversized upload after the
#: 413 so the client reads our answer instead of a connection reset.
DISCARD_GRACE_S = 2.0


class LimitedRequest(server.Request):
    _received = 0
    _refused = False

    @property
    def _max_body(self) -> int:
        return getattr(self.channel.site, "max_body", DEFAULT_MAX_BODY)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._max_body:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        # No "100 Continue" after our final answer.
        self.requestHeaders.removeHeader(b"Expect")
        transport = self.channel.transport
        transport.write(_raw_error(
            b"413 Payload Too Large",
            f"request body exceeds the limit of {self._max_body} bytes"))
        try:
            transport.loseWriteConnection()
        except AttributeError:  # not a TCP transport (tests): just close
            transport.loseConnection()
            return
        self.channel.site.reactor.callLater(DISCARD_GRACE_S, _abort, transport)


def _abort(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


def _raw_error(status: bytes, message: str) -> bytes:
    """A whole JSON error response, for writing straight to a transport."""
    body = error_body(message)
    return (b"HTTP/1.1 " + status + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class JsonErrorChannel(http.HTTPChannel):
    """Twisted answers a malformed request with a bare "400 Bad Request" and
    drops an over-long request or header line without any answer; both get a
    JSON 400 here instead."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.transport.write(_raw_error(
            b"400 Bad Request",
            "malformed HTTP request (request line, a header or the body framing)"))
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


class EventBusSite(server.Site):
    requestFactory = LimitedRequest
    # A plain channel rather than Twisted's HTTP/2-negotiating wrapper: we
    # serve HTTP/1.1 on plain TCP only.
    protocol = JsonErrorChannel

    def __init__(self, resource: Any, max_body: int = DEFAULT_MAX_BODY, **kwargs: Any) -> None:
        # Never parse form bodies into request.args: `curl --data` sends JSON
        # as application/x-www-form-urlencoded; we only read request.content.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body = max_body

