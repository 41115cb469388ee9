"""What is counted (eventbus.metrics.values) and how it is exposed
(eventbus.metrics.exposition), in memory; the exposition is read back with
prometheus-client's own parser."""
from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.task import Clock

from eventbus.errors import Unavailable
from eventbus.metrics import ConsumerGauge, Metrics, Sources, Stored, StoredState, WebhookGauge
from eventbus.metrics.exposition import Exposition
from eventbus.metrics.values import WEBHOOK_OUTCOMES, Histogram, HttpMetrics, PerContext


def done(d: Any) -> Any:
    d = defer.ensureDeferred(d)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not finish"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def scrape(metrics: Metrics, accept: str | None = None) -> tuple[dict[tuple[str, frozenset], float], str]:
    body, content_type = done(Exposition(metrics).scrape(accept))
    return samples(body.decode()), content_type


@pytest.mark.parametrize("value, bucket", [(0, 0), (0.5, 0), (1, 0), (1.01, 1), (2, 1), (5, 2), (5.5, 3), (1e9, 3)])
def test_a_histogram_counts_each_value_in_the_first_bucket_whose_bound_it_does_not_exceed(value, bucket):
    h = Histogram([1, 2, 5])
    h.observe(value)
    assert h.counts == [1 if i == bucket else 0 for i in range(4)]
    assert h.sum == value


def test_a_histograms_buckets_are_cumulative_and_end_with_inf():
    h = Histogram([5, 1, 2])  # any order
    for value in (0.5, 1.5, 1.5, 3, 9):
        h.observe(value)
    assert h.buckets() == [("1.0", 1), ("2.0", 3), ("5.0", 4), ("+Inf", 5)]


def test_per_context_counts_split_only_when_asked():
    plain, split = PerContext(by_context=False), PerContext(by_context=True)
    for count in (plain, split):
        count.add("a", 2)
        count.add("b")
        count.add("a")
    assert plain.total == 4 and plain.by_context is None
    assert split.by_context == {"a": 3, "b": 1} and split.total == 0


def test_http_requests_are_counted_by_route_method_and_status_and_odd_methods_are_one_label():
    http = HttpMetrics()
    http.answered("/events/<context>/<channel>", "POST", 201, 0.002)
    http.answered("/events/<context>/<channel>", "POST", 201, 0.004)
    http.answered("/events/<context>/<channel>", "BREW", 405, 0.001)
    http.answered("/health", "GET", 503, 0.001)
    assert {k: c.value for k, c in http.requests.items()} == {
        ("/events/<context>/<channel>", "POST", "201"): 2,
        ("/events/<context>/<channel>", "other", "405"): 1,
        ("/health", "GET", "503"): 1,
    }
    assert http.durations["/events/<context>/<channel>"].buckets()[-1] == ("+Inf", 3)
    assert http.unavailable.value == 1


def test_the_exposition_reads_every_count_and_gauge_under_the_prefix():
    m = Metrics()
    m.http.answered("/events/<context>/<channel>", "POST", 201, 0.003)
    m.appends.published.add("ctx", 3)
    m.appends.batch_size.observe(3)
    m.appends.committed(0.002, 2)
    m.appends.replays.add("ctx")
    m.pruned.add("ctx", 7)
    m.listener.notifications.inc(5)
    m.listener.reconnects.inc()
    m.consumers.redelivered(("c", "ch", "w"))
    m.consumers.dead(("c", "ch", "w"), 2)
    m.webhooks.attempted("timeout", 10.0)
    m.sources = Sources(longpoll_waiters=lambda: 4, sse_streams=lambda: 2, consumer_next_waiting=lambda: 1,
                        listener_connected=lambda: True, pool_connections=lambda: (3, 5))
    s, content_type = scrape(m)
    assert content_type.startswith("text/plain")
    expected = {
        ("eventbus_http_requests_total", frozenset({("route", "/events/<context>/<channel>"), ("method", "POST"),
                                                   ("code", "201")})): 1,
        ("eventbus_http_request_duration_seconds_count", frozenset({("route", "/events/<context>/<channel>")})): 1,
        ("eventbus_events_published_total", frozenset()): 3,
        ("eventbus_publish_batch_size_sum", frozenset()): 3,
        ("eventbus_append_commit_duration_seconds_count", frozenset()): 1,
        ("eventbus_append_group_size_sum", frozenset()): 2,
        ("eventbus_idempotent_replays_total", frozenset()): 1,
        ("eventbus_events_pruned_total", frozenset()): 7,
        ("eventbus_notifications_received_total", frozenset()): 5,
        ("eventbus_listener_reconnects_total", frozenset()): 1,
        ("eventbus_db_unavailable_total", frozenset()): 0,
        ("eventbus_redeliveries_total", frozenset({("context", "c"), ("channel", "ch"), ("consumer", "w")})): 1,
        ("eventbus_dead_lettered_total", frozenset({("context", "c"), ("channel", "ch"), ("consumer", "w")})): 2,
        ("eventbus_webhook_attempts_total", frozenset({("outcome", "timeout")})): 1,
        ("eventbus_webhook_attempts_total", frozenset({("outcome", "success")})): 0,
        ("eventbus_webhook_attempt_duration_seconds_sum", frozenset()): 10.0,
        ("eventbus_longpoll_waiters", frozenset()): 4,
        ("eventbus_sse_streams", frozenset()): 2,
        ("eventbus_consumer_next_waiting", frozenset()): 1,
        ("eventbus_listener_connected", frozenset()): 1,
        ("eventbus_db_pool_connections", frozenset({("state", "busy")})): 3,
        ("eventbus_db_pool_connections", frozenset({("state", "idle")})): 5,
    }
    assert {k: s.get(k) for k in expected} == expected
    assert {o for (n, labels) in s if n == "eventbus_webhook_attempts_total" for _, o in labels} == set(WEBHOOK_OUTCOMES)
    assert s[("process_resident_memory_bytes", frozenset())] > 0  # the standard process metrics
    assert all(n.startswith(("eventbus_", "process_", "python_")) for n, _ in s)


def test_context_labels_appear_on_the_event_counts_only_when_asked():
    m = Metrics(context_labels=True)
    m.appends.published.add("a", 2)
    m.appends.published.add("b", 1)
    m.pruned.add("a", 4)
    s, _ = scrape(m)
    assert s[("eventbus_events_published_total", frozenset({("context", "a")}))] == 2
    assert s[("eventbus_events_published_total", frozenset({("context", "b")}))] == 1
    assert s[("eventbus_events_pruned_total", frozenset({("context", "a")}))] == 4
    assert ("eventbus_events_published_total", frozenset()) not in s


def test_a_scraper_that_asks_for_openmetrics_gets_it():
    body, content_type = done(Exposition(Metrics()).scrape("application/openmetrics-text; version=1.0.0"))
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


class Reads:
    """The database's side of :class:`Stored`: counts reads, answers when told."""

    def __init__(self) -> None:
        self.count = 0
        self.pending: list[defer.Deferred[StoredState]] = []
        self.fail = False

    def __call__(self) -> defer.Deferred[StoredState]:
        self.count += 1
        if self.fail:
            return defer.fail(Unavailable("database unavailable"))
        d: defer.Deferred[StoredState] = defer.Deferred()
        self.pending.append(d)
        return d

    def answer(self, lag: int) -> None:
        state = StoredState([ConsumerGauge("c", "ch", "w", lag, 1, 2)], [WebhookGauge(7, False, 3)])
        while self.pending:
            self.pending.pop(0).callback(state)


def test_the_databases_gauges_are_read_once_per_max_age_however_often_scraped():
    clock, reads = Clock(), Reads()
    stored = Stored(clock.seconds, reads, max_age=5.0)
    first, second = defer.ensureDeferred(stored.refresh()), defer.ensureDeferred(stored.refresh())
    assert reads.count == 1 and not first.called  # the second scrape waits for the same read
    reads.answer(lag=10)
    assert first.called and second.called and stored.state is not None
    clock.advance(4.9)
    done(stored.refresh())
    assert reads.count == 1
    clock.advance(0.2)
    d = defer.ensureDeferred(stored.refresh())
    reads.answer(lag=11)
    done(d)
    assert reads.count == 2 and stored.state.consumers[0].lag == 11


def test_while_the_database_is_away_its_gauges_are_left_out_and_it_is_asked_again_later():
    clock, reads = Clock(), Reads()
    m = Metrics()
    m.sources = Sources(stored=Stored(clock.seconds, reads, max_age=5.0))
    d = defer.ensureDeferred(Exposition(m).scrape(None))
    reads.answer(lag=10)
    s = samples(done(d)[0].decode())
    key = frozenset({("context", "c"), ("channel", "ch"), ("consumer", "w")})
    assert s[("eventbus_consumer_lag_events", key)] == 10
    assert s[("eventbus_consumer_in_flight", key)] == 1 and s[("eventbus_consumer_dead_events", key)] == 2
    assert s[("eventbus_webhook_lag_events", frozenset({("subscription", "7")}))] == 3
    assert s[("eventbus_webhook_subscriptions", frozenset({("status", "active")}))] == 1
    reads.fail = True
    clock.advance(6)
    s, _ = scrape(m)
    assert not any(n.startswith(("eventbus_consumer_", "eventbus_webhook_lag", "eventbus_webhook_subscriptions"))
                   for n, _ in s)
    assert reads.count == 2
    s, _ = scrape(m)
    assert reads.count == 2  # not asked again before max_age
