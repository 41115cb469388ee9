"""The values a server process counts: plain numbers, updated in place.

Invariant: counting costs the code that counts next to nothing and never
fails.  Every value is a plain integer or float of one of these objects
(:class:`Counter`, :class:`Histogram`, :class:`PerContext`), updated on the
reactor thread without a lock; :mod:`.exposition` reads them only when
scraped.  prometheus-client's own ``Counter.inc`` takes a lock and
``Histogram.observe`` walks its buckets under it: measured on the
development machine, 1 to 2.6 µs and 2 to 4 µs a call (7 µs with a
``labels()`` lookup), against 0.1 and 0.4 µs for the objects here; a
publish updates six of them.

Gauges are not counted but read when scraped: what is in memory through
the callables of :class:`Sources` (handed in by :mod:`eventbus.tap`), what
is in the database (consumers' and webhooks' lag) through :class:`Stored`,
at most one read per :data:`STORED_MAX_AGE_S` however often the process is
scraped.

Layer rule: the bottom tier, beside model and errors (see the package).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client.utils import floatToGoString
from twisted.internet import defer

from eventbus.errors import Unavailable

#: Seconds the database's gauges (consumers, webhooks) are reused between scrapes.
STORED_MAX_AGE_S = 5.0
#: The ``route`` of a request that matched no route (one value for every unknown path).
UNMATCHED = "unmatched"
#: Methods counted by name; anything else is ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Outcomes of a webhook attempt (``webhook_attempts_total{outcome}``).
WEBHOOK_OUTCOMES = ("success", "http_error", "network", "timeout", "refused")

HTTP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COMMIT_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WEBHOOK_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Counter:
    """A monotonic count."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Histogram:
    """Observations in fixed buckets (upper bounds, inclusive), and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        #: One count per bound, and the last one for +Inf (not cumulative).
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as the exposition wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))
        return out


class PerContext:
    """A count, split by context only if asked (``--metrics-context-labels``)."""

    __slots__ = ("by_context", "total")

    def __init__(self, by_context: bool) -> None:
        self.total = 0
        self.by_context: dict[str, int] | None = {} if by_context else None

    def add(self, context: str, amount: int = 1) -> None:
        if self.by_context is None:
            self.total += amount
        else:
            self.by_context[context] = self.by_context.get(context, 0) + amount


class HttpMetrics:
    """Requests answered, by route pattern, method and status; their durations by route."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], Counter] = {}
        self.durations: dict[str, Histogram] = {}
        #: Requests answered 503 because the database did not answer.
        self.unavailable = Counter()

    def answered(self, route: str, method: str, code: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"
        key = (route, method, str(code))
        counter = self.requests.get(key)
        if counter is None:
            counter = self.requests[key] = Counter()
        counter.value += 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = Histogram(HTTP_SECONDS)
        histogram.observe(seconds)
        if code == 503:
            self.unavailable.value += 1


class AppendMetrics:
    """Publishes and their group commits (both paths: plain and conditional)."""

    def __init__(self, by_context: bool) -> None:
        self.published = PerContext(by_context)
        self.replays = PerContext(by_context)
        self.batch_size = Histogram(BATCH_SIZES)
        self.commit_seconds = Histogram(COMMIT_SECONDS)
        self.group_size = Histogram(GROUP_SIZES)

    def committed(self, seconds: float, appends: int) -> None:
        """A group of ``appends`` committed ``seconds`` after it was sent."""
        self.commit_seconds.observe(seconds)
        self.group_size.observe(appends)


class ListenerMetrics:
    def __init__(self) -> None:
        self.notifications = Counter()
        self.reconnects = Counter()


ConsumerKey = tuple[str, str, str]


class ConsumerMetrics:
    """What this process did to durable consumers, per consumer (context, channel, name)."""

    def __init__(self) -> None:
        self.redeliveries: dict[ConsumerKey, int] = {}
        self.dead_lettered: dict[ConsumerKey, int] = {}

    def redelivered(self, key: ConsumerKey) -> None:
        self.redeliveries[key] = self.redeliveries.get(key, 0) + 1

    def dead(self, key: ConsumerKey, count: int = 1) -> None:
        if count:
            self.dead_lettered[key] = self.dead_lettered.get(key, 0) + count


class WebhookMetrics:
    def __init__(self) -> None:
        self.attempts = {outcome: Counter() for outcome in WEBHOOK_OUTCOMES}
        self.seconds = Histogram(WEBHOOK_SECONDS)

    def attempted(self, outcome: str, seconds: float) -> None:
        self.attempts[outcome].value += 1
        self.seconds.observe(seconds)


class ConsumerGauge(NamedTuple):
    context: str
    channel: str
    consumer: str
    lag: int
    in_flight: int
    dead: int


class WebhookGauge(NamedTuple):
    subscription: int
    disabled: bool
    lag: int


class StoredState(NamedTuple):
    consumers: list[ConsumerGauge]
    webhooks: list[WebhookGauge]


class Stored:
    """The gauges read from the database: one read per ``max_age`` seconds
    at most, shared by the scrapes that come meanwhile; none while it fails."""

    def __init__(
        self, clock: Callable[[], float], read: Callable[[], Awaitable[StoredState]], max_age: float
    ) -> None:
        self.clock = clock
        self.read = read
        self.max_age = max_age
        self.state: StoredState | None = None
        self._at: float | None = None
        self._lock = defer.DeferredLock()

    async def refresh(self) -> None:
        await self._lock.acquire()
        try:
            if self._at is not None and self.clock() - self._at < self.max_age:
                return
            try:
                self.state = await self.read()
            except Unavailable:
                self.state = None  # an outage: say nothing rather than something stale
            self._at = self.clock()
        finally:
            self._lock.release()


@dataclass
class Sources:
    """What the gauges read at scrape time (:mod:`eventbus.tap` hands them
    in); a gauge whose source is None is not reported."""

    longpoll_waiters: Callable[[], int] | None = None
    sse_streams: Callable[[], int] | None = None
    consumer_next_waiting: Callable[[], int] | None = None
    listener_connected: Callable[[], bool] | None = None
    #: (busy, idle) connections of the pool.
    pool_connections: Callable[[], tuple[int, int]] | None = None
    stored: Stored | None = None


class Metrics:
    """Every metric of one server process."""

    def __init__(self, context_labels: bool = False) -> None:
        self.http = HttpMetrics()
        self.appends = AppendMetrics(context_labels)
        self.pruned = PerContext(context_labels)
        self.listener = ListenerMetrics()
        self.consumers = ConsumerMetrics()
        self.webhooks = WebhookMetrics()
        self.sources = Sources()
