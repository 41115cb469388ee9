"""The access log: its lines (Twisted's combined format, or JSON fields) and batched writing.

Invariant: a line never carries a token (:func:`access_log_line` and
:func:`access_fields` redact every ``access_token=`` value and anything
shaped like a token, in the request line or the ``Referer``), and it
carries the request's ``X-Request-Id``.

Layer rule: the HTTP layer; used by :mod:`eventbus.http.site`.
"""

from __future__ import annotations

import time
from typing import IO, Any

from twisted.internet import task
from twisted.logger import Logger
from twisted.web import http

from eventbus.auth import redact
from eventbus.http import requestid

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
