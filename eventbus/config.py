"""The server's options, and :class:`Settings`: every default in one place.

Invariant: a :class:`Settings` is valid once built (``Options.postOptions``
refuses anything else with a usage error before the server starts), and no
other module defines a default for an option: they take the value they are
given.

Layer rule: may import everything; nothing but :mod:`eventbus.tap` (and
tests) imports it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.python import usage

from eventbus import logs
from eventbus.auth import LOCAL, MODES, OFF, is_loopback
from eventbus.errors import InvalidInput
from eventbus.http.accesslog import ACCESS_LOG_TWISTD
from eventbus.model import Retention
from eventbus.retention import check_max_age, check_max_events


@dataclass(frozen=True)
class Settings:
    """Everything the command line can set, with its default."""

    #: Twisted endpoint strings to serve HTTP on.
    listen: tuple[str, ...] = ("tcp:33002",)
    #: An external PostgreSQL; None: the embedded one in ``data_dir``.
    dsn: str | None = None
    #: The LISTEN connection's PostgreSQL (a direct connection to the primary
    #: when ``dsn`` goes through a transaction pooler); None: ``dsn``.
    listen_dsn: str | None = None
    #: Server processes sharing the ``listen`` endpoints (1: this process serves).
    workers: int = 1
    data_dir: str = "./eventbus-data"
    #: Largest accepted request body, in bytes.
    max_body: int = 1024 * 1024
    #: Most events in one batch publish.
    max_batch: int = 1000
    #: Database connections per process (plus one for LISTEN).
    pool_size: int = 8
    #: Where request lines go: "twistd", "-" (stdout), a file path, or "off".
    access_log: str = ACCESS_LOG_TWISTD
    #: Seconds of silence after which an SSE stream gets a keep-alive comment.
    heartbeat: float = 15.0
    #: Seconds a request (head and body) has to arrive, from its first byte.
    request_timeout: float = 30.0
    #: Disable a webhook subscription failing for longer than this (seconds).
    webhook_disable_after: float = 86400.0
    #: Allow webhook URLs on non-public addresses.
    webhook_allow_private: bool = False
    #: Seconds a process's claim on a webhook subscription holds unrenewed.
    webhook_lease: float = 15.0
    #: Factor on every webhook retry delay (a testing aid).
    webhook_retry_scale: float = 1.0
    #: Who needs a token: "local" (all but loopback), "required" (all), "off".
    auth: str = LOCAL
    #: Most long polls, consumer ``next`` and SSE streams one client (a token,
    #: else a peer address) holds open at once; 0: no limit.
    max_held_per_client: int = 1000
    #: Origins (``https://app.example.com``) whose web apps may call the API.
    cors_origin: tuple[str, ...] = ()
    #: Webhook channels taking their turn at once in a process: attempts in
    #: flight, pages held, sockets to receivers open.
    webhook_concurrency: int = 64
    #: Channels of one webhook subscription with an attempt in flight at once.
    webhook_subscription_concurrency: int = 4
    #: Retention defaults: delete events older than this many seconds, or
    #: beyond the newest N of their channel; None: keep them (a channel's own
    #: setting overrides each).
    retention_max_age: float | None = None
    retention_max_events: int | None = None
    #: Seconds between two rounds of the pruner.
    retention_interval: float = 10.0
    #: Seconds an ``Idempotency-Key`` is remembered per channel.
    idempotency_window: float = 86400.0
    #: Longest ``timeout`` of a long poll (``peek``, a consumer's ``next``), seconds.
    max_wait: float = 300.0
    log_format: str = logs.TEXT  # "text" (twistd's lines) or "json" (one object a line)
    #: Split the counts of events published, pruned and replayed by context
    #: in the metrics (a label per context: only where contexts are few).
    metrics_context_labels: bool = False
    #: An extra endpoint serving only ``/metrics`` (worker i: its port + i - 1).
    metrics_listen: str | None = None

    @classmethod
    def from_options(cls, options: Any) -> Settings:
        """From parsed :class:`Options` (or any mapping with the same keys)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            values[f.name] = options[key]
        values["listen"] = tuple(values["listen"])
        values["cors_origin"] = tuple(values["cors_origin"])
        values["dsn"] = values["dsn"] or None
        values["listen_dsn"] = values["listen_dsn"] or None
        values["metrics_listen"] = values["metrics_listen"] or None
        values["webhook_allow_private"] = bool(values["webhook_allow_private"])
        values["metrics_context_labels"] = bool(values["metrics_context_labels"])
        return cls(**values)

    @property
    def retention(self) -> Retention:
        """The server's default retention policy."""
        return Retention(self.retention_max_age, self.retention_max_events)


DEFAULTS = Settings()
#: Highest --webhook-concurrency (and per-subscription concurrency) accepted.
MAX_WEBHOOK_CONCURRENCY = 10_000
#: --retention-interval: often enough to delete what is eligible within a
#: minute, with the leader's lease (three rounds) taken over in time.
MIN_RETENTION_INTERVAL_S = 0.1
MAX_RETENTION_INTERVAL_S = 15.0
#: Longest --idempotency-window accepted: ten years.
MAX_IDEMPOTENCY_WINDOW_S = 315_360_000
#: Longest --max-wait accepted: a day.
MAX_MAX_WAIT_S = 86_400


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "A durable HTTP event bus on PostgreSQL."
    optParameters: ClassVar[list[list[Any]]] = [
        ["dsn", None, None,
         "PostgreSQL connection string (URI or key=value); without it an "
         "embedded PostgreSQL is run in --data-dir."],
        ["listen-dsn", None, None,
         "PostgreSQL connection string of the connection that listens for notifications (a"
         " direct connection to the primary, when --dsn goes through a transaction pooler);"
         " default: --dsn."],
        ["workers", None, str(DEFAULTS.workers),
         "Server processes sharing the --listen endpoints, each with its own database"
         " pool and notification listener ('auto': one per CPU); the parent binds the"
         " endpoints and supervises them."],
        ["data-dir", None, DEFAULTS.data_dir, "Where the embedded PostgreSQL keeps its data."],
        ["max-body", None, DEFAULTS.max_body, "Largest accepted request body, in bytes.", int],
        ["pool-size", None, DEFAULTS.pool_size, "Database connections per process.", int],
        ["access-log", None, DEFAULTS.access_log,
         "Where request lines go: 'twistd' (twistd's log, one event per request),"
         " '-' (standard output, written in batches), a file path (written in"
         " batches), or 'off'."],
        ["max-batch", None, DEFAULTS.max_batch, "Most events in one batch publish.", int],
        ["heartbeat", None, DEFAULTS.heartbeat,
         "Seconds of silence after which an SSE stream gets a keep-alive comment.", float],
        ["request-timeout", None, DEFAULTS.request_timeout,
         "Seconds a request (its head and body) has to arrive, from its first byte;"
         " a slower one gets a 408 and its connection is closed.", float],
        ["webhook-disable-after", None, DEFAULTS.webhook_disable_after,
         "Disable a webhook subscription that has been failing for longer than"
         " this many seconds.", float],
        ["webhook-retry-scale", None, DEFAULTS.webhook_retry_scale,
         "Multiply every webhook retry delay by this factor (a testing aid).", float],
        ["webhook-lease", None, DEFAULTS.webhook_lease,
         "Seconds a process's claim on a webhook subscription holds without renewal;"
         " another process takes over this long after the owner died.", float],
        ["auth", None, DEFAULTS.auth,
         "Who needs a token: 'local' (every request but those from loopback without"
         " proxy headers), 'required' (every request) or 'off' (no checks)."],
        ["max-held-per-client", None, DEFAULTS.max_held_per_client,
         "Most long polls, consumer next and SSE streams one client (a token, else a"
         " peer address) holds open at once; 0: no limit.", int],
        ["webhook-concurrency", None, DEFAULTS.webhook_concurrency,
         "Webhook deliveries in progress at once in this process (channels taking"
         " their turn, attempts in flight); also the most connections to receivers"
         " it keeps open.", int],
        ["webhook-subscription-concurrency", None, DEFAULTS.webhook_subscription_concurrency,
         "Channels of one webhook subscription with an attempt in flight at once; the"
         " others take turns.", int],
        ["retention-max-age", None, DEFAULTS.retention_max_age,
         "Delete events older than this many seconds (a channel's own setting"
         " overrides it); default: keep them.", float],
        ["retention-max-events", None, DEFAULTS.retention_max_events,
         "Keep at most this many events per channel, deleting the oldest (a"
         " channel's own setting overrides it); default: keep them all.", int],
        ["retention-interval", None, DEFAULTS.retention_interval,
         "Seconds between two rounds of the pruner (one process prunes at a time).", float],
        ["idempotency-window", None, DEFAULTS.idempotency_window,
         "Seconds an Idempotency-Key is remembered in its channel: a publish repeating"
         " it within this time gets the first publish's answer.", float],
        ["log-format", None, DEFAULTS.log_format, "How log lines are written: 'text' (twistd's"
         " format) or 'json' (one JSON object a line: timestamp, level, logger, message, fields)."],
        ["max-wait", None, DEFAULTS.max_wait, "Longest timeout (s) a peek or a consumer's next may ask for.", float],
        ["metrics-listen", None, None,
         "An extra endpoint (tcp:PORT) that serves only /metrics, with the same"
         " access rules; with --workers N, worker i listens on PORT + i - 1, so each"
         " worker is scraped on its own address."],
    ]  # fmt: skip
    optFlags: ClassVar[list[list[Any]]] = [
        ["webhook-allow-private", None,
         "Allow webhook URLs on loopback, private, link-local and other non-public"
         " addresses."],
        ["metrics-context-labels", None,
         "Label the metrics of events published, pruned and replayed with their"
         " context (one series per context: only where contexts are few)."],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["cors-origin"] = []

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint string to serve HTTP on (repeatable; default tcp:33002)."""
        self["listen"].append(endpoint)

    def opt_cors_origin(self, origin: str) -> None:
        """An origin (https://app.example.com) whose web apps may call the API from
        a browser (repeatable; none by default)."""
        if not _ORIGIN.match(origin):
            raise usage.UsageError(
                f"--cors-origin must be scheme://host[:port] (http or https, no path), got {origin!r}"
            )
        self["cors-origin"].append(origin.lower())

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = list(DEFAULTS.listen)
        self["workers"] = parse_workers(self["workers"])
        if self["listen-dsn"] and not self["dsn"]:
            raise usage.UsageError("--listen-dsn needs --dsn (the embedded PostgreSQL has one address)")
        if self["workers"] > 1:
            bad = [e for e in self["listen"] if not shareable(e)]
            if bad:
                raise usage.UsageError(
                    f"--workers needs tcp:, tcp6:, ssl: or unix: endpoints; cannot share {', '.join(bad)}"
                )
        if self["metrics-listen"]:
            check_metrics_listen(self["metrics-listen"], self["workers"])
        if self["max-body"] < 1:
            raise usage.UsageError("--max-body must be a positive number of bytes")
        if self["max-batch"] < 1:
            raise usage.UsageError("--max-batch must be at least 1")
        if self["pool-size"] < 1:
            raise usage.UsageError("--pool-size must be at least 1")
        if not (math.isfinite(self["heartbeat"]) and self["heartbeat"] > 0):
            raise usage.UsageError("--heartbeat must be a positive number of seconds")
        if not (math.isfinite(self["request-timeout"]) and self["request-timeout"] > 0):
            raise usage.UsageError("--request-timeout must be a positive number of seconds")
        if not self["webhook-disable-after"] > 0:
            raise usage.UsageError("--webhook-disable-after must be a positive number of seconds")
        if not self["webhook-retry-scale"] > 0:
            raise usage.UsageError("--webhook-retry-scale must be positive")
        if not 1 <= self["webhook-lease"] <= 3600:
            raise usage.UsageError("--webhook-lease must be from 1 to 3600 seconds")
        if self["auth"] not in MODES:
            raise usage.UsageError(f"--auth must be one of {', '.join(MODES)}")
        if self["max-held-per-client"] < 0:
            raise usage.UsageError("--max-held-per-client must be 0 (no limit) or more")
        if not 1 <= self["webhook-concurrency"] <= MAX_WEBHOOK_CONCURRENCY:
            raise usage.UsageError(f"--webhook-concurrency must be from 1 to {MAX_WEBHOOK_CONCURRENCY}")
        if not 1 <= self["webhook-subscription-concurrency"] <= MAX_WEBHOOK_CONCURRENCY:
            raise usage.UsageError(
                f"--webhook-subscription-concurrency must be from 1 to {MAX_WEBHOOK_CONCURRENCY}"
            )
        try:
            if self["retention-max-age"] is not None:
                check_max_age(self["retention-max-age"], "--retention-max-age", nullable=False)
            if self["retention-max-events"] is not None:
                check_max_events(self["retention-max-events"], "--retention-max-events", nullable=False)
        except InvalidInput as e:
            raise usage.UsageError(e.message) from None
        if not MIN_RETENTION_INTERVAL_S <= self["retention-interval"] <= MAX_RETENTION_INTERVAL_S:
            raise usage.UsageError(
                f"--retention-interval must be from {MIN_RETENTION_INTERVAL_S:g}"
                f" to {MAX_RETENTION_INTERVAL_S:g} seconds"
            )
        if not 1 <= self["idempotency-window"] <= MAX_IDEMPOTENCY_WINDOW_S:
            raise usage.UsageError(
                f"--idempotency-window must be from 1 to {MAX_IDEMPOTENCY_WINDOW_S} seconds"
            )
        if not 0 <= self["max-wait"] <= MAX_MAX_WAIT_S:
            raise usage.UsageError(f"--max-wait must be from 0 to {MAX_MAX_WAIT_S} seconds")
        if self["log-format"] not in logs.FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(logs.FORMATS)}")
        if self["log-format"] == logs.JSON and self.parent is not None:  # None: parsed alone (tests)
            if self.parent.get("logger"):
                raise usage.UsageError("--log-format json and twistd's --logger both choose the log observer")
            logs.log_through_json(self.parent)

    def settings(self) -> Settings:
        return Settings.from_options(self)


#: Most worker processes accepted (``auto`` never asks for more).
MAX_WORKERS = 256
#: Endpoint kinds whose sockets the parent can bind for its workers.
SHAREABLE_KINDS = ("tcp", "tcp6", "ssl", "unix")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str | int) -> int:
    """``--workers``: a count from 1 to MAX_WORKERS, or ``auto`` (one per CPU)."""
    text = str(value).strip().lower()
    if text == "auto":
        return min(cpu_count(), MAX_WORKERS)
    try:
        workers = int(text)
    except ValueError:
        raise usage.UsageError(f"--workers must be a number or 'auto', got {value!r}") from None
    if not 1 <= workers <= MAX_WORKERS:
        raise usage.UsageError(f"--workers must be from 1 to {MAX_WORKERS} (or 'auto')")
    return workers


def endpoint_parts(endpoint: str) -> list[str]:
    """A Twisted endpoint string cut at its unescaped colons."""
    return re.split(r"(?<!\\):", endpoint)


def _port_part(parts: list[str]) -> tuple[int, str, int] | None:
    """Where a ``tcp:`` endpoint's port is: (index, prefix, port), if numeric."""
    for index, part in enumerate(parts[1:], 1):
        prefix = "port=" if part.startswith("port=") else ""
        if (prefix or (index == 1 and "=" not in part)) and part[len(prefix) :].isdigit():
            return index, prefix, int(part[len(prefix) :])
    return None


def check_metrics_listen(endpoint: str, workers: int) -> None:
    """``--metrics-listen``: a ``tcp:``/``tcp6:`` endpoint with a port, room for every worker's."""
    parts = endpoint_parts(endpoint)
    found = _port_part(parts) if parts[0].lower() in ("tcp", "tcp6") else None
    if found is None:
        raise usage.UsageError(
            f"--metrics-listen must be tcp:PORT or tcp6:PORT (options after it), got {endpoint!r}"
        )
    port = found[2]
    if not 0 <= port + workers - 1 <= 65535 or (workers > 1 and port == 0):
        raise usage.UsageError(
            f"--metrics-listen: ports {port} to {port + workers - 1} (one per worker) are not all valid"
        )


def metrics_endpoint(endpoint: str, worker: int | None) -> str:
    """The ``--metrics-listen`` endpoint of one process: worker i (of
    ``--workers``) listens on the given port + i - 1, so each is scraped alone."""
    parts = endpoint_parts(endpoint)
    found = _port_part(parts)
    if worker is None or found is None:
        return endpoint
    index, prefix, port = found
    parts[index] = f"{prefix}{port + worker - 1}"
    return ":".join(parts)


def shareable(endpoint: str) -> bool:
    """Can ``--workers`` share this ``--listen`` endpoint?"""
    return endpoint_parts(endpoint)[0].lower() in SHAREABLE_KINDS


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z")


def beyond_loopback(endpoint: str) -> bool:
    """Does this ``--listen`` endpoint accept connections from other machines?

    ``unix:`` never does; ``tcp:``/``ssl:`` do unless their ``interface`` is
    a loopback address; any other kind is assumed to.
    """
    parts = endpoint_parts(endpoint)
    kind = parts[0].lower()
    if kind == "unix":
        return False
    interface = None
    for part in parts[1:]:
        if part.startswith("interface="):
            interface = part[len("interface=") :].replace("\\", "")
    if interface is None:
        return True
    return interface.lower() != "localhost" and not is_loopback(interface)


def open_warning(settings: Settings) -> str | None:
    """The start-up warning of ``--auth off`` on a port other machines reach."""
    if settings.auth != OFF:
        return None
    exposed = [e for e in settings.listen if beyond_loopback(e)]
    if not exposed:
        return None
    return (
        f"--auth off: no access control, and {', '.join(exposed)} accepts connections from"
        " other machines: anyone who reaches it may publish, read and manage everything"
    )
