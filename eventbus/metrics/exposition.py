"""The Prometheus exposition of a process's metrics, through prometheus-client.

Invariant: the exposition is prometheus-client's (``generate_latest``, or
OpenMetrics when the scraper asks for it), from a registry of this process
holding one custom collector that reads :mod:`.values` when scraped, and
prometheus-client's standard process, platform and garbage-collector
collectors.  Every name has the ``eventbus_`` prefix and base units
(seconds, events).

Layer rule: the bottom tier (see the package).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from eventbus.metrics.values import Histogram, HttpMetrics, Metrics, PerContext, Sources, StoredState

PREFIX = "eventbus_"


class Exposition:
    """The answer of ``GET /metrics`` for one process's :class:`~.values.Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        registry = CollectorRegistry()
        registry.register(_Collector(metrics))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        #: This process's registry: its metrics and the standard process ones.
        self.registry = registry

    async def scrape(self, accept: str | None, fresh: bool = True) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` asks for (Prometheus text,
        or OpenMetrics) and its content type; ``fresh``: first read the
        database's gauges if they are older than their maximum age."""
        stored = self.metrics.sources.stored
        if fresh and stored is not None:
            await stored.refresh()
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, text, value=value)


def _histogram(name: str, text: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, text, buckets=h.buckets(), sum_value=h.sum)


def _per_context(name: str, text: str, count: PerContext) -> CounterMetricFamily:
    if count.by_context is None:
        return _counter(name, text, count.total)
    family = CounterMetricFamily(PREFIX + name, text, labels=["context"])
    for context, value in sorted(count.by_context.items()):
        family.add_metric([context], value)
    return family


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    text: str,
    labels: list[str],
    values: Iterable[tuple[Sequence[str], float]],
) -> Metric:
    family = kind(PREFIX + name, text, labels=labels)
    for key, value in values:
        family.add_metric(list(key), value)
    return family


class _Collector:
    """Reads a :class:`Metrics` into prometheus-client's families when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield from self._http(m.http)
        a = m.appends
        yield _per_context(
            "events_published", "Events stored by publishes through this process.", a.published
        )
        yield _histogram(
            "publish_batch_size", "Events per publish request (1 for a single event).", a.batch_size
        )
        yield _histogram(
            "append_commit_duration_seconds",
            "Time from sending a group of appends to its commit.",
            a.commit_seconds,
        )
        yield _histogram(
            "append_group_size", "Publish requests committed together in one transaction.", a.group_size
        )
        yield _per_context(
            "idempotent_replays",
            "Publishes answered with a stored answer (Idempotency-Key repeats).",
            a.replays,
        )
        yield _per_context("events_pruned", "Events deleted by retention, by this process.", m.pruned)
        yield _counter(
            "notifications_received",
            "Notifications (NOTIFY) heard from the database.",
            m.listener.notifications.value,
        )
        yield _counter(
            "listener_reconnects",
            "Times the connection that listens for notifications was re-established.",
            m.listener.reconnects.value,
        )
        yield _counter(
            "db_unavailable", "Requests answered 503: the database did not answer.", m.http.unavailable.value
        )
        c = m.consumers
        key = ["context", "channel", "consumer"]
        yield _labelled(
            CounterMetricFamily,
            "redeliveries",
            "Events leased again by this process.",
            key,
            sorted(c.redeliveries.items()),
        )
        yield _labelled(
            CounterMetricFamily,
            "dead_lettered",
            "Events this process made dead letters (deliveries used up).",
            key,
            sorted(c.dead_lettered.items()),
        )
        w = m.webhooks
        yield _labelled(
            CounterMetricFamily,
            "webhook_attempts",
            "Webhook delivery attempts by outcome.",
            ["outcome"],
            (((outcome,), counter.value) for outcome, counter in w.attempts.items()),
        )
        yield _histogram(
            "webhook_attempt_duration_seconds",
            "Time from sending a webhook to its answer (or failure).",
            w.seconds,
        )
        yield from self._sources(m.sources)

    def _http(self, http: HttpMetrics) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "http_requests", "HTTP requests answered.", labels=["route", "method", "code"]
        )
        for key, counter in sorted(http.requests.items()):
            requests.add_metric(list(key), counter.value)
        yield requests
        durations = HistogramMetricFamily(
            PREFIX + "http_request_duration_seconds",
            "Time from a request's first line to its answer's end.",
            labels=["route"],
        )
        for route, h in sorted(http.durations.items()):
            durations.add_metric([route], h.buckets(), h.sum)
        yield durations

    def _sources(self, s: Sources) -> Iterator[Metric]:
        if s.longpoll_waiters is not None:
            yield _gauge("longpoll_waiters", "Peek requests held open.", s.longpoll_waiters())
        if s.sse_streams is not None:
            yield _gauge("sse_streams", "Server-Sent Events streams open.", s.sse_streams())
        if s.consumer_next_waiting is not None:
            yield _gauge(
                "consumer_next_waiting", "Consumer next requests held open.", s.consumer_next_waiting()
            )
        if s.listener_connected is not None:
            yield _gauge(
                "listener_connected",
                "1 while the connection that listens for notifications is up.",
                1 if s.listener_connected() else 0,
            )
        if s.pool_connections is not None:
            busy, idle = s.pool_connections()
            yield _labelled(
                GaugeMetricFamily,
                "db_pool_connections",
                "Database connections of the pool, by state.",
                ["state"],
                [(("busy",), busy), (("idle",), idle)],
            )
        state = s.stored.state if s.stored is not None else None
        if state is not None:
            yield from _stored(state)


def _stored(state: StoredState) -> Iterator[Metric]:
    key = ["context", "channel", "consumer"]
    rows = [((g.context, g.channel, g.consumer), g) for g in state.consumers]
    for name, text, attr in (
        (
            "consumer_lag_events",
            "Events of the channel the consumer has not acked (nor dead-lettered).",
            "lag",
        ),
        ("consumer_in_flight", "Events leased to the consumer's instances now.", "in_flight"),
        ("consumer_dead_events", "Dead letters of the consumer.", "dead"),
    ):
        yield _labelled(GaugeMetricFamily, name, text, key, ((k, getattr(g, attr)) for k, g in rows))
    yield _labelled(
        GaugeMetricFamily,
        "webhook_lag_events",
        "Events stored that the subscription has not delivered yet.",
        ["subscription"],
        (((str(w.subscription),), w.lag) for w in state.webhooks),
    )
    disabled = sum(1 for w in state.webhooks if w.disabled)
    yield _labelled(
        GaugeMetricFamily,
        "webhook_subscriptions",
        "Webhook subscriptions by status.",
        ["status"],
        [(("active",), len(state.webhooks) - disabled), (("disabled",), disabled)],
    )
