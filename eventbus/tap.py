"""``makeService``: the one place where the server's objects are built and wired.

The twistd dropin (``twisted/plugins/eventbus_plugin.py``) points here.
Nothing else constructs a collaborator of another module: each object gets
what it needs from :func:`build`, in the order of the service tree of
:mod:`eventbus.service` (the database first, the ports last).

Layer rule: may import everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application import service, strports
from twisted.logger import Logger

from eventbus.config import Options, Settings, metrics_endpoint, open_warning
from eventbus.consumers import Consumers
from eventbus.http.access import Gate
from eventbus.http.api import make_metrics_root, make_root
from eventbus.http.site import EventBusSite
from eventbus.http.streams import EventStreams
from eventbus.metrics import Metrics, Sources, Stored
from eventbus.metrics.exposition import Exposition
from eventbus.metrics.values import STORED_MAX_AGE_S
from eventbus.notifier import Notifier
from eventbus.retention import Pruner
from eventbus.service import (
    DatabaseService,
    EmbeddedPostgresService,
    HeldRequestsService,
    ListenerService,
    SequentialService,
    TokenCacheService,
)
from eventbus.storage import gauges
from eventbus.storage.channels import ChannelStore
from eventbus.storage.conditional import ConditionalAppends
from eventbus.storage.consumers import ConsumerStore
from eventbus.storage.database import Database
from eventbus.storage.events import EventStore
from eventbus.storage.notify import Listener
from eventbus.storage.restore import RestoreStore
from eventbus.storage.retention import RetentionStore
from eventbus.storage.tokens import TokenStore
from eventbus.storage.webhooks import WebhookStore
from eventbus.tokens import Holds, TokenCache, TokenService
from eventbus.webhooks.service import WebhookService
from eventbus.worker import AdoptedPortService
from eventbus.workers import WorkerSpec, WorkerSupervisor

log = Logger()

__all__ = ["Options", "Parts", "assemble", "build", "makeService"]


def makeService(options: Options, reactor: Any | None = None) -> service.IService:
    return build(options.settings(), reactor)


@dataclass(frozen=True)
class Parts:
    """The server's objects, wired; :func:`build` puts them in a service tree."""

    database: Database
    events: EventStore
    notifier: Notifier
    listener: Listener
    consumers: Consumers
    webhooks: WebhookService
    streams: EventStreams
    tokens: TokenCache
    site: EventBusSite
    pruner: Pruner
    #: What ``--metrics-listen`` serves (``/metrics`` alone), if asked for.
    metrics_site: EventBusSite | None = None


def assemble(settings: Settings, reactor: Any, worker: int | None = None) -> Parts:
    """Build and wire every object of a server process (starting none of them);
    ``worker``: its number among ``--workers`` processes."""
    metrics = Metrics(context_labels=settings.metrics_context_labels)
    database = Database(reactor, settings.dsn or "", pool_size=settings.pool_size)
    events = EventStore(database, metrics.appends)
    # The echo of a commit through our own pool is skipped by the backend's
    # pid; behind a pooler (--listen-dsn) the pool's pids are not the
    # backends' that commit, so every notification is heard instead.
    own_pids = database.backend_pids if settings.listen_dsn is None else frozenset
    notifier = Notifier(reactor, events, own_pids=own_pids)
    events.on_append = notifier.published
    conditional = ConditionalAppends(
        database, events.announce, window_s=settings.idempotency_window, metrics=metrics.appends
    )
    token_store = TokenStore(database)
    holds = Holds(settings.max_held_per_client)
    token_cache = TokenCache(reactor, token_store, holds)

    def recovered() -> None:
        notifier.resync()
        token_cache.changed()

    listener = Listener(
        reactor,
        settings.listen_dsn or database.dsn,
        notifier.on_notification,
        recovered,
        on_token_changed=token_cache.changed,
        outages=database.outages,
        metrics=metrics.listener,
    )
    consumers = Consumers(reactor, ConsumerStore(database), events, notifier, metrics.consumers)
    webhooks = WebhookService(
        reactor,
        WebhookStore(database),
        events,
        notifier,
        disable_after=settings.webhook_disable_after,
        allow_private=settings.webhook_allow_private,
        retry_scale=settings.webhook_retry_scale,
        lease=settings.webhook_lease,
        concurrency=settings.webhook_concurrency,
        channel_concurrency=settings.webhook_subscription_concurrency,
        metrics=metrics.webhooks,
    )
    streams = EventStreams(events, notifier, reactor, settings.heartbeat)
    # The gauges, read when the process is scraped.
    metrics.sources = Sources(
        longpoll_waiters=notifier.waiting,
        sse_streams=streams.open_streams,
        consumer_next_waiting=consumers.waiting,
        listener_connected=lambda: listener.connected,
        pool_connections=database.connections,
        stored=Stored(reactor.seconds, lambda: gauges.read(database), STORED_MAX_AGE_S),
    )
    gate = Gate(settings.auth, token_cache, holds, settings.cors_origin)
    exposition = Exposition(metrics)
    resource = make_root(
        database=database,
        events=events,
        conditional=conditional,
        notifier=notifier,
        streams=streams,
        consumers=consumers,
        webhooks=webhooks,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait,
        tokens=TokenService(token_store),
        gate=gate,
        channels=ChannelStore(database),
        retention=settings.retention,
        restore=RestoreStore(database),
        metrics=exposition,
    )
    pruner = Pruner(
        reactor,
        RetentionStore(database),
        settings.retention,
        settings.retention_interval,
        pruned=metrics.pruned,
    )
    # Prune steps beyond the events' own (see Pruner.steps): the window of
    # Idempotency-Key records.
    pruner.steps.append(conditional.prune_expired_keys)
    sites = [
        EventBusSite(
            root,
            max_body=settings.max_body,
            access_log=settings.access_log,
            request_timeout=settings.request_timeout,
            metrics=metrics.http,
            log_format=settings.log_format,
            worker=worker,
            reactor=reactor,
        )
        for root in (resource, make_metrics_root(exposition, gate))
    ]
    return Parts(
        database,
        events,
        notifier,
        listener,
        consumers,
        webhooks,
        streams,
        token_cache,
        sites[0],
        pruner,
        sites[1] if settings.metrics_listen else None,
    )


def build(
    settings: Settings, reactor: Any | None = None, worker: WorkerSpec | None = None
) -> SequentialService:
    """The service tree of a server process: see :mod:`eventbus.service` for its
    order; with ``--workers`` N > 1, the parent's (:func:`build_parent`).
    ``worker``: this process is one of the workers (it adopts their sockets)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    assert reactor is not None
    warning = open_warning(settings)
    if warning is not None:
        log.warn("{warning}", warning=warning)
    if worker is None and settings.workers > 1:
        return build_parent(settings, reactor)
    parts = assemble(settings, reactor, worker=None if worker is None else worker.number)

    def use_dsn(dsn: str) -> None:
        parts.database.dsn = parts.listener.dsn = dsn

    root = SequentialService(reactor)
    if not settings.dsn:
        EmbeddedPostgresService(settings.data_dir, use_dsn).setServiceParent(root)
    DatabaseService(parts.database, reactor).setServiceParent(root)
    ListenerService(parts.listener).setServiceParent(root)
    # After the listener: a change made after the load is heard.
    TokenCacheService(parts.tokens).setServiceParent(root)
    # After the listener (it starts after the database and stops before it),
    # before the ports (they stop first, so no request reaches it stopped).
    parts.webhooks.setServiceParent(root)
    # Needs only the database; stops (its round finished, its lease given
    # back) before the database does.
    parts.pruner.setServiceParent(root)
    # Stopped right after the ports: held requests are answered while the
    # database is still there.
    HeldRequestsService(reactor, parts.notifier, parts.consumers).setServiceParent(root)
    if worker is None:
        for endpoint in settings.listen:
            strports.service(endpoint, parts.site).setServiceParent(root)
    else:
        for inherited in worker.ports:
            AdoptedPortService(reactor, inherited, parts.site).setServiceParent(root)
    if parts.metrics_site is not None and settings.metrics_listen is not None:
        # Bound by this process, even as a worker: each worker its own port.
        endpoint = metrics_endpoint(settings.metrics_listen, None if worker is None else worker.number)
        strports.service(endpoint, parts.metrics_site).setServiceParent(root)
    return root


def build_parent(settings: Settings, reactor: Any) -> SequentialService:
    """The parent of ``--workers``: the embedded PostgreSQL (started first,
    stopped last), then the workers (:mod:`eventbus.workers`)."""
    root = SequentialService(reactor)
    supervisor = WorkerSupervisor(reactor, settings)

    def use_dsn(dsn: str) -> None:
        supervisor.dsn = dsn

    if not settings.dsn:
        EmbeddedPostgresService(settings.data_dir, use_dsn).setServiceParent(root)
    supervisor.setServiceParent(root)
    return root
