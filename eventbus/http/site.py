"""The twisted.web Site: refuses oversized bodies and slow requests.

twisted.web reads a whole request body before any resource sees it, so the
``--max-body`` limit has to act at the channel level: on the announced
``Content-Length`` as soon as the headers are in, and on the running total
for chunked bodies.  The refusal is a 413 written straight to the transport,
after which the connection is half-closed and further upload is discarded.

Requests twisted.web itself refuses as malformed (request line, header or
body framing) get a JSON 400 from :class:`JsonErrorChannel`, so every error
the server sends is JSON.

Every response carries ``X-Request-Id`` (:mod:`eventbus.http.requestid`),
the refusals written straight to the transport included, and the access
log line of a request carries it too: in ``--log-format text`` at the end
of Twisted's combined format, in ``json`` as a field beside the route
pattern, the status and the duration.

Access log lines never carry a token: :mod:`eventbus.http.accesslog` replaces
every ``access_token=`` value and anything shaped like a token (in the
request line or the ``Referer``) before a line is written anywhere.

Every request must arrive whole (head and body) within ``--request-timeout``
seconds of its first byte, or it gets a JSON 408 and the connection is
closed: twisted.web's idle timeout restarts at every byte, so a client
trickling its headers would otherwise hold its connection for ever.  Once
the request has arrived its answer may take as long as it needs (a held
peek, an SSE stream, a consumer's ``next``).  How many connections are held
at all is :mod:`eventbus.http.connections`'s business.

Layer rule: the HTTP layer; twisted.web plumbing only, no routes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server

from eventbus import logs
from eventbus.http import requestid
from eventbus.http.accesslog import (
    ACCESS_LOG_OFF,
    ACCESS_LOG_STDOUT,
    ACCESS_LOG_TWISTD,
    BatchedLogFile,
    access_fields,
    access_log,
    access_log_line,
)
from eventbus.http.connections import ConnectionBudget, connection_limit
from eventbus.http.render import error_body
from eventbus.http.router import route_of
from eventbus.http.wire import drop_unsent
from eventbus.metrics import HttpMetrics

#: How long we keep reading (and discarding) an oversized upload after the
#: 413 so the client reads our answer instead of a connection reset.
DISCARD_GRACE_S = 2.0
#: The response header naming the worker process that answered (``--workers``).
WORKER_HEADER = b"X-Worker"


#: The status counted for a request whose client left before its answer
#: began (nginx's "client closed request").
CLIENT_LEFT = 499


class LimitedRequest(server.Request):
    # What the server keeps on a request before it is answered (the gate,
    # principal and hold of :mod:`.access`, the id and route pattern of
    # :mod:`.requestid`, the metrics route of :mod:`.router`) lives in
    # slots, not in the instance dict: the dicts of a class's instances
    # share one key table only while each adds the same attributes in the
    # same order (CPython's split dicts); ours, added after twisted.web's
    # own, made the dict of each held request a table of its own, 1.5 KiB
    # per held request (``python -m bench.memprofile``).
    __slots__ = (
        "_eventbus_gate",
        "_eventbus_hold",
        "_eventbus_principal",
        "_eventbus_request_id",
        "_eventbus_route",
        "_eventbus_route_pattern",
    )

    _received = 0
    _refused = False
    #: ``time.monotonic()`` when the request had arrived whole.
    started: float | None = None

    def process(self) -> None:
        self.started = time.monotonic()
        requestid.of(self)
        super().process()

    #: A status written straight to the transport (413, 408, 400), if any.
    raw_status: int | None = None
    _counted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: When its first line arrived: what its duration is counted from.
        self.began = time.monotonic()

    def connectionLost(self, reason: Failure) -> None:
        # A request not finished: its client left (an SSE stream, a long poll), or
        # it was refused on the wire; counted here, the finished ones by the site.
        if not self.finished:
            self._site.count(self)
        super().connectionLost(reason)

    @property
    def _site(self) -> EventBusSite:
        site: EventBusSite = cast(Any, self.channel).site
        return site

    @property
    def _max_body(self) -> int:
        return self._site.max_body

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
        worker = self._site.worker_header
        if worker is not None:
            self.responseHeaders.setRawHeaders(WORKER_HEADER, [worker])
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self.raw_status = 413
        # No "100 Continue" after our final answer.
        self.requestHeaders.removeHeader(b"Expect")
        transport: Any = cast(Any, self.channel).transport
        transport.write(
            _raw_error(
                b"413 Payload Too Large",
                f"request body exceeds the limit of {self._max_body} bytes",
                requestid.of(self),
            )
        )
        try:
            transport.loseWriteConnection()
        except AttributeError:  # not a TCP transport (tests): just close
            transport.loseConnection()
            return
        self._site.reactor.callLater(DISCARD_GRACE_S, _abort, transport)


def _abort(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


def _raw_error(status: bytes, message: str, request_id: str | None = None) -> bytes:
    """A whole JSON error response, for writing straight to a transport
    (``request_id``: of the request it refuses; else a new one)."""
    body = error_body(message)
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"X-Request-Id: " + (request_id or requestid.new()).encode("ascii") + b"\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class JsonErrorChannel(http.HTTPChannel):
    """Twisted answers a malformed request with a bare "400 Bad Request" and
    drops an over-long request or header line without any answer; both get a
    JSON 400 here instead.  A request that does not arrive in time gets a 408.

    (``allContentReceived``, ``requestDone`` and ``callLater`` are
    HTTPChannel's documented hooks: the first runs when a request has
    arrived whole, the second when its answer is finished.)
    """

    site: EventBusSite
    #: Fires ``--request-timeout`` after the first byte of a request.
    _deadline: IDelayedCall | None = None
    #: Whether bytes that arrive belong to a request still to be read (no
    #: request is being served; while one is, twisted.web buffers them).
    _reading = True
    _admitted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._admitted = self.site.connections.admit(self)
        if not self._admitted:
            assert self.transport is not None
            self.transport.write(
                _raw_error(b"503 Service Unavailable", "too many open connections; try again later")
            )
            self.loseConnection()

    def evict(self) -> None:
        self._admitted = False
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and self._reading and self._admitted and data:
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        self._reading = False
        self.site.connections.serving(self)
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        self._reading = True
        self.site.connections.waiting(self)
        super().requestDone(request)  # replays bytes that came meanwhile

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        self.site.connections.closed(self)
        # What the client never took is of no use now; do not keep it until
        # the transport object happens to be collected.
        drop_unsent(self.transport)
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.requests and getattr(self.requests[-1], "_refused", False):
            return  # answered 413 already; that refusal closes the connection
        self._raw_status(408)
        transport: Any = self.transport
        if transport is None:
            return
        transport.write(
            _raw_error(
                b"408 Request Timeout",
                f"the request did not arrive within {self.site.request_timeout:g} s of its first byte",
            )
        )
        self.loseConnection()
        self.site.reactor.callLater(DISCARD_GRACE_S, _abort, transport)

    def _raw_status(self, status: int) -> None:
        """The request being read is answered on the wire (its metrics say so)."""
        if self.requests and isinstance(self.requests[-1], LimitedRequest):
            self.requests[-1].raw_status = status

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._raw_status(400)
        assert self.transport is not None
        self.transport.write(
            _raw_error(
                b"400 Bad Request", "malformed HTTP request (request line, a header or the body framing)"
            )
        )
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


class EventBusSite(server.Site):
    requestFactory = LimitedRequest
    # A plain channel rather than Twisted's HTTP/2-negotiating wrapper: we
    # serve HTTP/1.1 on plain TCP only.
    protocol = JsonErrorChannel  # type: ignore[assignment]  # a channel class is such a callable

    def __init__(
        self,
        resource: Any,
        *,
        max_body: int,
        access_log: str,
        request_timeout: float,
        max_connections: int | None = None,
        log_format: str = logs.TEXT,
        metrics: HttpMetrics | None = None,
        worker: int | None = None,
        **kwargs: Any,
    ) -> None:
        """``max_connections``: client connections held at most (None: from
        the open-files limit, see :func:`~eventbus.http.connections.connection_limit`);
        ``worker``: this process's number among ``--workers`` (sent as
        ``X-Worker`` on every answer), None when it serves alone."""
        # Never parse form bodies into request.args: `curl --data` sends JSON
        # as application/x-www-form-urlencoded; we only read request.content.
        super().__init__(resource, parsePOSTFormSubmission=False, logFormatter=access_log_line, **kwargs)
        self.max_body = max_body
        self.access_log = access_log
        self.log_format = log_format
        self.request_timeout = request_timeout
        #: Requests answered, by route pattern, method and status.
        self.metrics = metrics if metrics is not None else HttpMetrics()
        self.worker_header = None if worker is None else str(worker).encode("ascii")
        self.connections = ConnectionBudget(
            connection_limit() if max_connections is None else max_connections
        )

    def startFactory(self) -> None:
        super().startFactory()
        if self.access_log == ACCESS_LOG_OFF:
            self._logFile = None
        elif self.access_log == ACCESS_LOG_STDOUT:
            self._logFile = BatchedLogFile(sys.stdout, self.reactor, owned=False)
        elif self.access_log != ACCESS_LOG_TWISTD:
            self._logFile = BatchedLogFile(
                open(self.access_log, "a", encoding="utf-8", newline="\n"),  # noqa: SIM115 (BatchedLogFile closes it)
                self.reactor,
            )

    def log(self, request: Any) -> None:
        """Called by twisted.web once per finished request: counted, and its
        access log line written (``--log-format json``: an object)."""
        if isinstance(request, LimitedRequest):
            self.count(request)
        if self.log_format != logs.JSON:
            super().log(request)
            return
        if self._logFile is None:  # --access-log off
            return
        fields = access_fields(request)
        if self.access_log == ACCESS_LOG_TWISTD:
            access_log.info("{method} {path} {status}", **fields)
            return
        message = f"{fields['method']} {fields['path']} {fields['status']}"
        own = {"timestamp": logs.timestamp(time.time()), "level": "info", "logger": access_log.namespace}
        self._logFile.write(logs.line({**own, "message": message, **fields}).decode("utf-8"))

    def count(self, request: LimitedRequest) -> None:
        """Count a request once: finished, or lost (its client left, or it was
        refused on the wire before it arrived)."""
        if request._counted:
            return
        request._counted = True
        if request.finished or request.startedWriting:
            code = request.code
        elif request.raw_status is not None:
            code = request.raw_status
        elif isinstance(getattr(request, "path", None), bytes):
            code = CLIENT_LEFT
        else:
            return  # its client left before it even arrived: no request
        method = request.method.decode("latin-1") if isinstance(request.method, bytes) else "other"
        self.metrics.answered(route_of(request), method, code, time.monotonic() - request.began)

    def stopFactory(self) -> None:
        if isinstance(self._logFile, BatchedLogFile):
            self._logFile.close()
            self._logFile = None
        super().stopFactory()
