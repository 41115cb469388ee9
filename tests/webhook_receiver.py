"""A webhook receiver for tests: a real HTTP server on loopback in the test
process, recording every request; it can fail on purpose, hold requests
open, or disappear and come back on the same port."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor, task
from twisted.web import http, server
from twisted.web.resource import Resource


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (Standard Webhooks): HMAC-SHA256 keyed with the
    base64-decoded part of ``whsec_...`` over ``id.timestamp.body``, compared
    with each ``v1,`` signature of the header."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode()):
            return True
    return False


class _Site(server.Site):
    """Remembers its open connections so they can be cut, and counts them."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open: set[Any] = set()
        #: Connections accepted so far, and the most open at once.
        self.accepted = 0
        self.peak_open = 0

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        site = self
        lost = protocol.connectionLost

        def connectionLost(reason: Any) -> None:
            site.open.discard(protocol)
            lost(reason)

        protocol.connectionLost = connectionLost
        self.open.add(protocol)
        self.accepted += 1
        self.peak_open = max(self.peak_open, len(self.open))
        return protocol


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Received] = []
        #: Answer 500 to the first ``fail_first`` requests.
        self.fail_first = 0
        #: Answer 500 to everything while True.
        self.failing = False
        #: Leave requests unanswered while True.
        self.hold = False
        #: Answer each request this many seconds after it arrived (0: at once).
        self.answer_after = 0.0
        #: Requests being held by ``answer_after`` now, and the most at once.
        self.in_flight = 0
        self.peak_in_flight = 0
        self.port: Optional[int] = None
        self._listening: Any = None
        self._site = _Site(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        self._listening = reactor.listenTCP(self.port or 0, self._site, interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self

    async def disappear(self) -> None:
        """Stop listening and cut every open connection (connections are refused)."""
        await self._listening.stopListening()
        for protocol in list(self._site.open):
            protocol._channel.transport.abortConnection()

    def render_POST(self, request: Any) -> Any:
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append(Received(time.monotonic(), headers, request.content.read()))
        if self.hold:
            return server.NOT_DONE_YET
        if self.answer_after > 0:
            return self._answer_later(request)
        if self.failing or len(self.requests) <= self.fail_first:
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            return b"failing on purpose"
        request.setResponseCode(http.OK)
        return b"ok"

    def _answer_later(self, request: Any) -> Any:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        done = []

        def finished(_: Any = None) -> None:
            if not done:
                done.append(True)
                self.in_flight -= 1

        def answer() -> None:
            if not done:
                finished()
                request.setResponseCode(http.OK)
                request.write(b"ok")
                request.finish()

        request.notifyFinish().addBoth(finished)
        reactor.callLater(self.answer_after, answer)
        return server.NOT_DONE_YET

    @property
    def accepted(self) -> int:
        return self._site.accepted

    @property
    def peak_open(self) -> int:
        return self._site.peak_open

    def events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.requests]

    def ids(self) -> list[int]:
        return [r.event["id"] for r in self.requests]


async def until(condition: Callable[[], Any], timeout: float = 10.0,
                what: str = "condition") -> None:
    """Wait (polling the test's own state) until ``condition()`` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


async def until_async(condition: Callable[[], Any], timeout: float = 10.0,
                      what: str = "condition") -> Any:
    """Like :func:`until` with an async condition; returns its last true value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)
