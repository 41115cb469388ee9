"""The twisted.web Site: refuses oversized bodies before buffering them.

twisted.web reads a whole request body before any resource sees it, so the
``--max-body`` limit has to act at the channel level: on the announced
``Content-Length`` as soon as the headers are in, and on the running total
for chunked bodies.  The refusal is a 413 written straight to the transport,
after which the connection is half-closed and further upload is discarded.
"""
from __future__ import annotations

from typing import Any

from twisted.web import server

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
        body = error_body(f"request body exceeds the limit of {self._max_body} bytes")
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        try:
            transport.loseWriteConnection()
        except AttributeError:  # not a TCP transport (tests): just close
            transport.loseConnection()
            return
        self.channel.site.reactor.callLater(DISCARD_GRACE_S, _abort, transport)


def _abort(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


class EventBusSite(server.Site):
    requestFactory = LimitedRequest

    def __init__(self, resource: Any, max_body: int = DEFAULT_MAX_BODY, **kwargs: Any) -> None:
        # Never parse form bodies into request.args: `curl --data` sends JSON
        # as application/x-www-form-urlencoded; we only read request.content.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body = max_body

