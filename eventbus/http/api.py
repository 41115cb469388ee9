"""The REST API as one twisted.web resource: every resource mounted on the root.

Invariant: this is the whole URL space; a first path segment not mounted
here is a JSON 404 from :class:`~eventbus.http.router.Root`.

Layer rule: the HTTP layer; it assembles resources from collaborators it is
given and builds none of them (``eventbus.tap`` wires the objects).
"""

from __future__ import annotations

from klein import Klein
from twisted.web.resource import Resource

from eventbus.auth import OFF
from eventbus.consumers import Consumers
from eventbus.http.access import Gate
from eventbus.http.channels import ChannelsResource
from eventbus.http.console import PREFIX as CONSOLE_PREFIX
from eventbus.http.console import ConsoleResource
from eventbus.http.consumers import ConsumersResource
from eventbus.http.docs import DocsResource
from eventbus.http.events import EventsResource
from eventbus.http.health import HealthResource
from eventbus.http.metrics import MetricsResource
from eventbus.http.restore import Restorer
from eventbus.http.router import Root
from eventbus.http.streams import EventStreams
from eventbus.http.subscriptions import SubscriptionsResource
from eventbus.http.tokens import TokensResource
from eventbus.metrics.exposition import Exposition
from eventbus.model import Retention
from eventbus.notifier import Notifier
from eventbus.storage.channels import ChannelStore
from eventbus.storage.conditional import ConditionalAppends
from eventbus.storage.database import Database
from eventbus.storage.events import EventStore
from eventbus.storage.restore import RestoreStore
from eventbus.tokens import TokenService
from eventbus.webhooks.service import WebhookService


def make_root(
    *,
    database: Database,
    events: EventStore,
    conditional: ConditionalAppends,
    notifier: Notifier,
    streams: EventStreams,
    consumers: Consumers,
    webhooks: WebhookService | None,
    max_batch: int,
    max_wait: float,
    tokens: TokenService | None = None,
    gate: Gate | None = None,
    channels: ChannelStore | None = None,
    retention: Retention | None = None,
    metrics: Exposition | None = None,
    restore: RestoreStore | None = None,
) -> Root:
    """The API; without a ``gate`` nothing is checked (unit tests of other things)."""
    routers: dict[bytes, Klein] = {
        b"health": HealthResource(database).router,
        b"events": EventsResource(events, conditional, notifier, streams, max_batch, max_wait).router,
        b"consumers": ConsumersResource(consumers, max_wait).router,
        b"subscriptions": SubscriptionsResource(webhooks).router,
    }
    if tokens is not None:
        routers[b"tokens"] = TokensResource(tokens).router
    if channels is not None:
        restorer = None if restore is None else Restorer(restore, notifier, max_batch)
        routers[b"channels"] = ChannelsResource(channels, retention or Retention(), restorer).router
    if metrics is not None:
        routers[b"metrics"] = MetricsResource(metrics).router
    # Last: the document describes the resources mounted above.
    docs = DocsResource(
        max_wait=max_wait, max_batch=max_batch, auth_mode=gate.mode if gate else OFF, mounted=set(routers)
    )
    for segment in DocsResource.SEGMENTS:
        routers[segment] = docs.router
    apps: dict[bytes, Resource] = {segment: router.resource() for segment, router in routers.items()}
    # Not part of the API (static files for browsers): not in /openapi.json.
    apps[CONSOLE_PREFIX] = ConsoleResource()
    return Root(apps, gate, routers)


def make_metrics_root(metrics: Exposition, gate: Gate | None) -> Root:
    """The root of ``--metrics-listen``: ``/metrics`` alone, behind the same gate."""
    return Root({b"metrics": MetricsResource(metrics).router.resource()}, gate)
