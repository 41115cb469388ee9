"""Log lines as JSON (``--log-format json``), for log shippers.

Invariant: in ``json`` mode every event of the process's log (ours,
twistd's, Twisted's legacy ones) is one line of one JSON object:
``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` (the namespace),
``message`` (the event's text), then its structured fields (those whose
values are JSON scalars: ``request_id``, ``route``, ``status``,
``duration``…), and ``traceback`` for a failure.  A field never replaces one
of the four.  In ``text`` mode (the default) twistd's own observer stays.

twistd begins logging after the plugin's options are parsed and before the
service starts; the plugin chooses the observer through twistd's own
``--logger`` option (``Options.parent``), so its start-up lines are JSON
too.

Layer rule: wiring, like :mod:`eventbus.config`; imports nothing of ours.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python import logfile
from zope.interface import implementer

TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)
#: Keys of Twisted's legacy events that restate what the line already says.
_LEGACY = frozenset({"message", "time", "isError", "format", "why", "failure", "system"})
#: The line's own members, which no field may replace.
OWN = ("timestamp", "level", "logger", "message")
_SCALARS = (str, int, float, bool, type(None))


def timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="microseconds")


def record(event: LogEvent) -> dict[str, Any]:
    """The JSON object of one log event."""
    failure = event.get("log_failure")
    text = formatEvent({k: v for k, v in event.items() if k != "log_failure"} if failure else event)
    level = event.get("log_level")
    line: dict[str, Any] = {
        "timestamp": timestamp(event.get("log_time") or 0.0),
        "level": getattr(level, "name", "info"),
        "logger": event.get("log_namespace", "-"),
        "message": text,
    }
    system = event.get("log_system")
    if isinstance(system, str) and system != "-":
        line["system"] = system
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or key in line:
            continue
        if isinstance(value, _SCALARS) and not (isinstance(value, float) and value != value):
            line[key] = value
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return line


def line(values: dict[str, Any]) -> bytes:
    """One JSON line (anything that is not JSON is written as its ``str``)."""
    return orjson.dumps(values, default=str) + b"\n"


@implementer(ILogObserver)
class JsonLineObserver:
    """Writes each log event as one JSON line to a text stream."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        self.stream.write(line(record(event)).decode("utf-8"))
        self.stream.flush()


#: twistd's ``--logfile`` (None or "-": standard output), for :func:`json_observer`.
destination: str | None = None
#: The name twistd's ``--logger`` takes (it imports the factory by name).
FACTORY = "eventbus.logs.json_observer"


def json_observer() -> JsonLineObserver:
    """The factory twistd's ``--logger`` names: writes where twistd would
    have (its ``--logfile``, else standard output)."""
    if not destination or destination == "-":
        return JsonLineObserver(sys.stdout)
    return JsonLineObserver(logfile.LogFile.fromFullPath(destination))


def log_through_json(twistd: Any) -> None:
    """Have twistd (the options of the command that runs our plugin) log
    through the JSON observer, wherever its ``--logfile`` says."""
    global destination
    destination = twistd.get("logfile")
    twistd["logger"] = FACTORY
