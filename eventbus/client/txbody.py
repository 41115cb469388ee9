"""The bytes of a treq response, read by one caller as they come, with backpressure.

Invariant: at most :data:`HIGH_WATER` bytes of a body wait for their
reader (past it the connection is paused, and resumed below
:data:`LOW_WATER`), so a slow ``async for`` over a long history or stream
costs constant memory; a body that stays silent for ``silence`` seconds is
taken for dead (the connection is closed, and the reader told), which is
how a stream notices a connection that went away without a word.

Layer rule: the client library; the standard library and Twisted only.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any, cast

import treq
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from eventbus.client.errors import EventBusError, Unreachable

#: A long answer's bytes waiting for the caller beyond which the connection is paused.
HIGH_WATER = 1024 * 1024
#: What ends the connection's pause.
LOW_WATER = 256 * 1024

#: The failures of a request that mean "no answer" (connection refused, cut, timed out).
NO_ANSWER = (
    error.ConnectError,
    error.ConnectionLost,
    error.ConnectionDone,
    error.DNSLookupError,
    error.TimeoutError,
    ResponseFailed,
    ResponseNeverReceived,
)


async def read_all(response: IResponse) -> tuple[int, dict[str, str], bytes]:
    body: bytes = await treq.content(response)
    headers = {
        k.decode("latin-1").lower(): v[0].decode("latin-1") for k, v in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


class Body(Protocol):
    """A response body read chunk by chunk by one caller, with backpressure,
    and taken for dead after ``silence`` seconds without a byte."""

    def __init__(self, reactor: Any, silence: float | None) -> None:
        self.reactor = reactor
        self.silence = silence
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._waiter: defer.Deferred[None] | None = None
        self._end: Failure | None = None
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._arm()

    def _arm(self) -> None:
        if self.silence is None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.silence)
        else:
            self._timer = self.reactor.callLater(self.silence, self._silent)

    def _silent(self) -> None:
        self._finish(Failure(Unreachable(f"no byte of the answer for {self.silence:g} s")))
        self._close()

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._arm()
        if self._size > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        self._wake()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._finish(reason)

    def _finish(self, reason: Failure) -> None:
        if self._end is None:
            self._end = reason
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.called:
            waiter.callback(None)

    async def read(self) -> bytes | None:
        """The next chunk; None at the end of the body."""
        while not self._chunks and self._end is None:
            self._waiter = defer.Deferred(self._cancelled)
            await self._waiter
        if self._chunks:
            chunk = self._chunks.popleft()
            self._size -= len(chunk)
            if self._paused and self._size < LOW_WATER and self.transport is not None:
                self._paused = False
                cast(IPushProducer, self.transport).resumeProducing()
            return chunk
        assert self._end is not None
        if self._end.check(ResponseDone, PotentialDataLoss):
            return None
        if isinstance(self._end.value, EventBusError):
            raise self._end.value
        raise Unreachable(f"the answer was cut: {self._end.getErrorMessage()}")

    def _cancelled(self, waiter: defer.Deferred[None]) -> None:
        self._waiter = None
        self.abort()

    def abort(self) -> None:
        """Stop reading and close the connection (synchronous: usable in a finally)."""
        if self._end is None:
            self._finish(Failure(defer.CancelledError()))
            self._close()

    def _close(self) -> None:
        self._chunks.clear()
        if self.transport is not None:
            with contextlib.suppress(Exception):  # the connection is gone already
                cast(IPushProducer, self.transport).stopProducing()


def unreachable(url: str, e: Exception) -> Unreachable:
    if isinstance(e, error.TimeoutError):
        return Unreachable(f"no answer from {url} in time")
    if isinstance(e, error.ConnectError):
        return Unreachable(f"cannot connect to {url}: {e}")
    return Unreachable(f"connection to {url} failed: {type(e).__name__}")
