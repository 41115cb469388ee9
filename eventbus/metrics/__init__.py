"""Metrics of a server process, and their Prometheus exposition (``GET /metrics``).

:mod:`.values` holds what is counted (plain numbers, cheap enough for the
publish path) and the sources of the gauges read at scrape time;
:mod:`.exposition` turns them into prometheus-client's metric families in
the process's own registry, beside its standard process metrics.  Each
process is scraped on its own: nothing is shared between processes.

Labels are bounded: routes are Klein's rule patterns, never raw paths (one
``unmatched`` value for the rest); no metric is labelled by channel or
issuer, except the consumer and webhook gauges, whose consumers and
subscriptions are few and named; a ``context`` label only with
``--metrics-context-labels`` (:class:`~.values.PerContext`).

Layer rule: the bottom tier, beside model and errors: it imports nothing of
ours but errors, so storage and every layer above may update the objects
that :mod:`eventbus.tap` hands them (they never import a metric themselves
from anywhere but here).
"""

from eventbus.metrics.values import (
    AppendMetrics,
    ConsumerGauge,
    ConsumerMetrics,
    HttpMetrics,
    ListenerMetrics,
    Metrics,
    PerContext,
    Sources,
    Stored,
    StoredState,
    WebhookGauge,
    WebhookMetrics,
)

__all__ = [
    "AppendMetrics",
    "ConsumerGauge",
    "ConsumerMetrics",
    "HttpMetrics",
    "ListenerMetrics",
    "Metrics",
    "PerContext",
    "Sources",
    "Stored",
    "StoredState",
    "WebhookGauge",
    "WebhookMetrics",
]
