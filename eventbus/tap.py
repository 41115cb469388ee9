"""twistd plugin options and ``makeService`` (the dropin only points here)."""
from __future__ import annotations

import math
from typing import Any

from twisted.application import service, strports
from twisted.python import usage

from eventbus.api import DEFAULT_MAX_BATCH, EventBusAPI
from eventbus.consumers import Consumers
from eventbus.consumerstore import ConsumerStore
from eventbus.notifier import Listener, Notifier
from eventbus.service import (
    DatabaseService,
    EmbeddedPostgresService,
    ListenerService,
    SequentialService,
)
from eventbus.site import ACCESS_LOG_TWISTD, DEFAULT_MAX_BODY, EventBusSite
from eventbus.sse import DEFAULT_HEARTBEAT_S
from eventbus.store import Store
from eventbus.webhooks import DEFAULT_DISABLE_AFTER_S, DEFAULT_LEASE_S, WebhookService

DEFAULT_LISTEN = "tcp:33002"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "A durable HTTP event bus on PostgreSQL."
    optParameters = [
        ["dsn", None, None,
         "PostgreSQL connection string (URI or key=value); without it an "
         "embedded PostgreSQL is run in --data-dir."],
        ["data-dir", None, "./eventbus-data", "Where the embedded PostgreSQL keeps its data."],
        ["max-body", None, DEFAULT_MAX_BODY, "Largest accepted request body, in bytes.", int],
        ["pool-size", None, 8, "Database connections per process.", int],
        ["access-log", None, ACCESS_LOG_TWISTD,
         "Where request lines go: 'twistd' (twistd's log, one event per request),"
         " '-' (standard output, written in batches), a file path (written in"
         " batches), or 'off'."],
        ["max-batch", None, DEFAULT_MAX_BATCH, "Most events in one batch publish.", int],
        ["heartbeat", None, DEFAULT_HEARTBEAT_S,
         "Seconds of silence after which an SSE stream gets a keep-alive comment.", float],
        ["webhook-disable-after", None, DEFAULT_DISABLE_AFTER_S,
         "Disable a webhook subscription that has been failing for longer than"
         " this many seconds.", float],
        ["webhook-retry-scale", None, 1.0,
         "Multiply every webhook retry delay by this factor (a testing aid).", float],
        ["webhook-lease", None, DEFAULT_LEASE_S,
         "Seconds a process's claim on a webhook subscription holds without renewal;"
         " another process takes over this long after the owner died.", float],
    ]
    optFlags = [
        ["webhook-allow-private", None,
         "Allow webhook URLs on loopback, private, link-local and other non-public"
         " addresses."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """A Twisted endpoint string to serve HTTP on (repeatable; default tcp:33002)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["max-body"] < 1:
            raise usage.UsageError("--max-body must be a positive number of bytes")
        if self["max-batch"] < 1:
            raise usage.UsageError("--max-batch must be at least 1")
        if self["pool-size"] < 1:
            raise usage.UsageError("--pool-size must be at least 1")
        if not (math.isfinite(self["heartbeat"]) and self["heartbeat"] > 0):
            raise usage.UsageError("--heartbeat must be a positive number of seconds")
        if not self["webhook-disable-after"] > 0:
            raise usage.UsageError("--webhook-disable-after must be a positive number of seconds")
        if not self["webhook-retry-scale"] > 0:
            raise usage.UsageError("--webhook-retry-scale must be positive")
        if not 1 <= self["webhook-lease"] <= 3600:
            raise usage.UsageError("--webhook-lease must be from 1 to 3600 seconds")


def makeService(options: Any, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    store = Store(reactor, options["dsn"] or "", pool_size=options["pool-size"])
    notifier = Notifier(reactor, store)
    listener = Listener(reactor, store.dsn, notifier.on_notification, notifier.recheck_all)

    def use_dsn(dsn: str) -> None:
        store.dsn = listener.dsn = dsn

    root = SequentialService(reactor)
    if not options["dsn"]:
        EmbeddedPostgresService(options["data-dir"], use_dsn).setServiceParent(root)
    DatabaseService(store, reactor).setServiceParent(root)
    ListenerService(listener).setServiceParent(root)
    consumers = Consumers(reactor, ConsumerStore(store), notifier)
    # After the listener (it starts after the database and stops before it),
    # before the ports (they stop first, so no request reaches it stopped).
    webhooks = WebhookService(
        reactor, store, notifier,
        disable_after=options["webhook-disable-after"],
        allow_private=bool(options["webhook-allow-private"]),
        retry_scale=options["webhook-retry-scale"],
        lease=options["webhook-lease"],
    )
    webhooks.setServiceParent(root)
    api = EventBusAPI(store, notifier, reactor, max_batch=options["max-batch"],
                      heartbeat=options["heartbeat"], consumers=consumers,
                      webhooks=webhooks)
    site = EventBusSite(api.resource(), max_body=options["max-body"],
                        access_log=options["access-log"], reactor=reactor)
    for endpoint in options["listen"]:
        strports.service(endpoint, site).setServiceParent(root)
    return root
