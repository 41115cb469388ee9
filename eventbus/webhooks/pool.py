"""Outbound connections of webhook delivery: a bounded keep-alive pool, and
the open-files guard.

Invariant: at most ``limit`` sockets to receivers are open at once, whatever
their state (connecting, carrying a request, idle, closing: a socket counts
until it is closed).  Idle connections are kept per (scheme, host, port)
and reused, the most recent first; one idle for :data:`IDLE_TIMEOUT_S` is
closed, and so is the oldest idle one when a socket to another receiver is
needed and the limit is reached.  Every new connection is made by the
endpoint Agent passes in (:class:`~.addresses.CheckedEndpoint`: resolve,
check every address, connect to the checked one), so a reused connection
always leads to an address that was checked when it was opened.

A request that fails on a *reused* connection before any byte of a response
arrived (the receiver closed the connection while it was idle, as HTTP/1.0
servers and idle timeouts do without a word) is sent again at once on a new
connection: it is not a failed attempt.  The request body must therefore be
one that can be produced twice (``Sender`` sends bytes).

:class:`FileLimit` says when the process is near its open-files limit
(``ulimit -n``): then outbound work waits and idle connections are closed,
so the descriptors left are for the server's clients.

Layer rule: the webhooks package; no SQL, no HTTP server code.  The pool
interface Agent calls (``getConnection``, ``persistent``) and
``HTTP11ClientProtocol``'s quiescent callback and ``state`` are Twisted
internals: ``tests/unit/test_private_apis.py`` checks them.
"""

from __future__ import annotations

import os
import resource
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.web._newclient import (
    HTTP11ClientProtocol,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)

#: An idle kept-alive connection is closed after this long.
IDLE_TIMEOUT_S = 30.0
#: Outbound work waits while fewer descriptors than this are free: at least
#: FILES_RESERVE_MIN, or an eighth of the limit if that is more.
FILES_RESERVE_MIN = 128
#: The count of open descriptors is read again at most this often.
FILES_CHECK_S = 0.1


class _Counted(HTTP11ClientProtocol):
    """An HTTP client connection that tells the pool when its socket is closed."""

    def __init__(self, quiescent: Callable[[Any], None], closed: Callable[[], None]) -> None:
        super().__init__(quiescent)
        self._closed = closed

    def connectionLost(self, reason: Failure | None = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self._closed()


class _Factory(Factory):
    """Builds the one connection of one socket and releases its count once."""

    noisy = False  # no "Starting factory" log line per outgoing connection

    def __init__(self, pool: ConnectionPool, key: Hashable) -> None:
        self.pool = pool
        self.key = key
        self.released = False

    def buildProtocol(self, addr: Any) -> _Counted:  # noqa: N802 (Twisted's name)
        protocol: _Counted | None = None

        def quiescent(p: Any) -> None:
            self.pool._put(self.key, p)

        def closed() -> None:
            self.release(protocol)

        protocol = _Counted(quiescent, closed)
        return protocol

    def release(self, protocol: _Counted | None = None) -> None:
        if protocol is not None:
            self.pool._forget(protocol)
        if not self.released:
            self.released = True
            self.pool._socket_closed()


class _Reused:
    """A connection taken from the idle ones: a request it cannot even get
    an answer to goes out again at once on a new connection."""

    def __init__(self, connection: _Counted, fresh: Callable[[], defer.Deferred]) -> None:
        self.connection = connection
        self.fresh = fresh

    def request(self, request: Any) -> defer.Deferred:
        def failed(failure: Failure) -> Any:
            if never_answered(failure):
                return self.fresh().addCallback(lambda connection: connection.request(request))
            return failure

        return self.connection.request(request).addErrback(failed)


def never_answered(failure: Failure) -> bool:
    """The request failed before any response byte, and not because it was cancelled."""
    if not failure.check(RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived):
        return False
    reasons = getattr(failure.value, "reasons", None) or []
    return not any(reason.check(defer.CancelledError) for reason in reasons)


class ConnectionPool:
    """Persistent HTTP connections, at most ``limit`` sockets in all."""

    #: Read by Agent: requests are sent without ``Connection: close``.
    persistent = True

    def __init__(self, reactor: Any, limit: int) -> None:
        self.reactor = reactor
        self.limit = limit
        #: Sockets open now (connecting, busy, idle or closing).
        self.sockets = 0
        #: The most sockets ever open at once.
        self.peak = 0
        #: Idle connections, oldest first: their key and their idle timer.
        self._idle: dict[_Counted, tuple[Hashable, Any]] = {}
        self._waiting: deque[defer.Deferred[None]] = deque()

    # -- what Agent calls ------------------------------------------------------------
    def getConnection(self, key: Hashable, endpoint: Any) -> defer.Deferred:  # noqa: N802 (Twisted's name)
        """An idle connection for ``key`` if there is one, else a new one."""
        return defer.ensureDeferred(self._get(key, endpoint, reuse=True))

    async def _get(self, key: Hashable, endpoint: Any, reuse: bool) -> Any:
        while True:
            if reuse:
                idle = self._take_idle(key)
                if idle is not None:
                    return _Reused(idle, lambda: defer.ensureDeferred(self._get(key, endpoint, False)))
            if self.sockets < self.limit:
                return await self._connect(key, endpoint)
            self._close_oldest_idle()
            await self._room()

    async def _connect(self, key: Hashable, endpoint: Any) -> Any:
        self.sockets += 1
        self.peak = max(self.peak, self.sockets)
        factory = _Factory(self, key)
        try:
            return await endpoint.connect(factory)
        except BaseException:
            factory.release()
            raise

    # -- bookkeeping -------------------------------------------------------------------
    def _take_idle(self, key: Hashable) -> _Counted | None:
        for connection in reversed(list(self._idle)):
            if self._idle[connection][0] == key:
                self._forget(connection)
                if connection.state == "QUIESCENT":
                    return connection
        return None

    def _put(self, key: Hashable, connection: Any) -> None:
        """The quiescent callback: a connection finished its request."""
        if connection.state != "QUIESCENT":
            return
        timer = self.reactor.callLater(IDLE_TIMEOUT_S, self._close_idle, connection)
        self._idle[connection] = (key, timer)
        self._wake()

    def _forget(self, connection: _Counted) -> None:
        entry = self._idle.pop(connection, None)
        if entry is not None and entry[1].active():
            entry[1].cancel()

    def _close_idle(self, connection: _Counted) -> None:
        self._forget(connection)
        if connection.transport is not None:
            connection.transport.loseConnection()

    def _close_oldest_idle(self) -> None:
        if self._idle:
            self._close_idle(next(iter(self._idle)))

    def _socket_closed(self) -> None:
        self.sockets -= 1
        self._wake()

    def _room(self) -> defer.Deferred[None]:
        """Fires after the next socket closes or connection goes idle."""

        def cancel(d: defer.Deferred[None]) -> None:
            if d in self._waiting:
                self._waiting.remove(d)

        d: defer.Deferred[None] = defer.Deferred(cancel)
        self._waiting.append(d)
        return d

    def _wake(self) -> None:
        if self._waiting:
            self._waiting.popleft().callback(None)

    def close_idle(self) -> None:
        """Close every idle connection (near the open-files limit, at shutdown)."""
        for connection in list(self._idle):
            self._close_idle(connection)


# -- open files ----------------------------------------------------------------------
def open_files() -> int | None:
    """How many descriptors this process has open (None where it cannot tell)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(path)) - 1  # the listing's own descriptor
        except OSError:
            continue
    return None


def files_limit() -> int | None:
    """The open-files limit (``ulimit -n``); None if there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def files_reserve(limit: int) -> int:
    """Descriptors kept free for the server's clients: outbound work waits below this."""
    return max(FILES_RESERVE_MIN, limit // 8)


class FileLimit:
    """Is the process near its open-files limit?

    Counting descriptors costs a directory listing, so the count is read at
    most every :data:`FILES_CHECK_S` and the pool's own sockets opened since
    are added to it.
    """

    def __init__(
        self,
        reactor: Any,
        own: Callable[[], int],
        count: Callable[[], int | None] = open_files,
        limit: Callable[[], int | None] = files_limit,
    ) -> None:
        self.reactor = reactor
        self._own = own
        self._count = count
        self._limit = limit
        self._checked_at: float | None = None
        self._counted: int | None = None
        self._own_then = 0

    def open_and_limit(self) -> tuple[int, int] | None:
        """(open descriptors, limit), or None when there is no limit to keep."""
        limit = self._limit()
        if limit is None:
            return None
        now = self.reactor.seconds()
        if self._checked_at is None or now - self._checked_at >= FILES_CHECK_S:
            self._checked_at = now
            self._counted = self._count()
            self._own_then = self._own()
        if self._counted is None:
            return None
        return self._counted + max(0, self._own() - self._own_then), limit

    def near(self) -> bool:
        state = self.open_and_limit()
        if state is None:
            return False
        used, limit = state
        return limit - used < files_reserve(limit)
