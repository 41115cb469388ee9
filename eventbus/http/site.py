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

Access log lines never carry a token: :func:`access_log_line` replaces
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
from typing import IO, Any, cast

from twisted.internet import task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from eventbus import logs
from eventbus.auth import redact
from eventbus.http import requestid
from eventbus.http.connections import ConnectionBudget, connection_limit
from eventbus.http.render import error_body
from eventbus.http.wire import drop_unsent

#: How long we keep reading (and discarding) an oversized upload after the
#: 413 so the client reads our answer instead of a connection reset.
DISCARD_GRACE_S = 2.0
#: The response header naming the worker process that answered (``--workers``).
WORKER_HEADER = b"X-Worker"


class LimitedRequest(server.Request):
    _received = 0
    _refused = False
    #: ``time.monotonic()`` when the request had arrived whole.
    started: float | None = None

    def process(self) -> None:
        self.started = time.monotonic()
        requestid.of(self)
        super().process()

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

    def _respondToBadRequestAndDisconnect(self) -> None:
        assert self.transport is not None
        self.transport.write(
            _raw_error(
                b"400 Bad Request", "malformed HTTP request (request line, a header or the body framing)"
            )
        )
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


#: ``--access-log`` values that are not a path.
ACCESS_LOG_TWISTD = "twistd"
ACCESS_LOG_STDOUT = "-"
ACCESS_LOG_OFF = "off"
#: How often a batched access log is written out.
ACCESS_LOG_FLUSH_S = 0.2
ACCESS_LOG_MAX_BUFFER = 256 * 1024


class BatchedLogFile:
    """An access log written in batches: one write per ``interval`` (or per
    256 KiB) instead of one per request, and no trip through the logging
    system's per-event formatting.  Lines keep their order; at most
    ``interval`` seconds of them are lost if the process is killed."""

    def __init__(
        self, stream: IO[str], reactor: Any, interval: float = ACCESS_LOG_FLUSH_S, owned: bool = True
    ) -> None:
        self.stream = stream
        self.owned = owned
        self._lines: list[str] = []
        self._size = 0
        self._loop = task.LoopingCall(self.flush)
        self._loop.clock = reactor
        self._loop.start(interval, now=False)

    def write(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size > ACCESS_LOG_MAX_BUFFER:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            data, self._lines, self._size = "".join(self._lines), [], 0
            self.stream.write(data)
            self.stream.flush()

    def close(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.flush()
        if self.owned:
            self.stream.close()


def access_log_line(timestamp: str, request: Any) -> str:
    """Twisted's combined log format, with tokens redacted, then the request's id in quotes."""
    line: str = http.combinedLogFormatter(timestamp, request)
    if "ebt_" in line or "access_token" in line.lower():
        line = redact(line)
    return f'{line} "{requestid.of(request)}"'


access_log = Logger(namespace="eventbus.access")


def access_fields(request: Any) -> dict[str, Any]:
    """What the JSON access log says about a request (tokens redacted)."""
    started = getattr(request, "started", None)
    referer = request.getHeader(b"referer")
    agent = request.getHeader(b"user-agent")
    return {
        "request_id": requestid.of(request),
        "method": request.method.decode("latin-1"),
        "path": redact(request.uri.decode("latin-1")),
        "route": requestid.route_of(request),
        "status": request.code,
        "duration": None if started is None else round(time.monotonic() - started, 6),
        "bytes": request.sentLength,
        "peer": getattr(request.getClientAddress(), "host", None),
        "user_agent": None if agent is None else agent.decode("latin-1"),
        "referer": None if referer is None else redact(referer.decode("latin-1")),
    }


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
        """The access log line of a finished request (``--log-format json``: an object)."""
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

    def stopFactory(self) -> None:
        if isinstance(self._logFile, BatchedLogFile):
            self._logFile.close()
            self._logFile = None
        super().stopFactory()
