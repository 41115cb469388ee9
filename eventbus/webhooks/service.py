"""Which process delivers which subscription, and the subscriptions' API.

Each process runs one :class:`WebhookService`.  Every ``lease/3`` seconds it
renews its leases and claims the free or expired ones (see
:mod:`eventbus.storage.webhooks` for why a lease row and not an advisory
lock), and runs an :class:`~eventbus.webhooks.delivery.OwnedSubscription`
for each one it holds.  Invariant: a subscription is delivered by at most
one process at a time, as long as leases are honoured; a process that
stops hands its leases back at once, one that dies loses them after one
lease.

The HTTP layer calls :meth:`WebhookService.create` and friends; they check
URLs and secrets (:mod:`.addresses`, :mod:`.signing`) and raise domain errors.

Layer rule: the webhooks package; no SQL (it goes through the stores), no
HTTP server code.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from eventbus.errors import Unavailable
from eventbus.metrics import WebhookMetrics
from eventbus.model import Start, SubscriptionState
from eventbus.notifier import Notifier
from eventbus.storage.events import EventStore
from eventbus.storage.webhooks import WebhookStore
from eventbus.webhooks.addresses import check_public, parse_url
from eventbus.webhooks.delivery import OwnedSubscription
from eventbus.webhooks.sender import Sender
from eventbus.webhooks.signing import new_secret, secret_key

log = Logger()


class WebhookService(service.Service):
    """Delivers the subscriptions this process holds a lease on."""

    name = "webhooks"

    def __init__(
        self,
        reactor: Any,
        subscriptions: WebhookStore,
        events: EventStore,
        notifier: Notifier,
        *,
        disable_after: float,
        allow_private: bool,
        retry_scale: float,
        lease: float,
        concurrency: int,
        channel_concurrency: int,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        """``lease``: how long a claim on a subscription holds without
        renewal (renewed every third of it); ``concurrency``: channels
        taking their turn, and attempts in flight, in the process;
        ``channel_concurrency``: channels of one
        subscription taking their turn at once; see :mod:`eventbus.config`."""
        self.reactor = reactor
        self.subscriptions = subscriptions
        self.events = events
        self.notifier = notifier
        self.disable_after = disable_after
        self.allow_private = allow_private
        self.retry_scale = retry_scale
        self.lease = lease
        self.channel_concurrency = channel_concurrency
        #: Channels of all subscriptions taking their turn at once (FIFO).
        self.turns = defer.DeferredSemaphore(concurrency)
        #: Names this process in ``owner`` columns (and in the status).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.sender = Sender(reactor, allow_private, concurrency, metrics)
        self._owned: dict[int, OwnedSubscription] = {}
        self._scanner: task.LoopingCall | None = None
        self._scanning: defer.Deferred[None] | None = None
        self._rescan = False

    # -- for the API -------------------------------------------------------------
    async def create(
        self, context: str, channel: str, url: str, secret: str | None, start: Start
    ) -> tuple[SubscriptionState, str]:
        """Validate the URL (and its addresses) and the secret, store, start delivering."""
        _, host, port = parse_url(url)
        if secret is None:
            secret = new_secret()
        secret_key(secret)
        if not self.allow_private:
            await check_public(self.reactor, host, port)
        state = await self.subscriptions.create(context, channel, url, secret, start)
        self.scan_soon()
        return state, secret

    async def states(self, sid: int | None = None) -> list[SubscriptionState]:
        return await self.subscriptions.states(sid)

    async def delete(self, sid: int) -> bool:
        deleted = await self.subscriptions.delete(sid)
        if deleted and sid in self._owned:
            self._drop(sid)
        return deleted

    async def enable(self, sid: int) -> bool:
        enabled = await self.subscriptions.enable(sid)
        if enabled:
            self.scan_soon()
        return enabled

    # -- life cycle --------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._scanner = task.LoopingCall(self.scan_soon)
        self._scanner.clock = self.reactor
        self._scanner.start(self.lease / 3, now=True)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._scanner is not None and self._scanner.running:
            self._scanner.stop()
        if self._scanning is not None:
            await self._scanning
        for sid in list(self._owned):
            self._drop(sid)
        self.sender.close()
        try:
            await self.subscriptions.release(self.owner)
        except Exception as e:
            log.warn(
                "could not release webhook leases ({error}); they expire in {lease} s",
                error=e,
                lease=self.lease,
            )

    # -- claiming ------------------------------------------------------------------
    def scan_soon(self) -> None:
        """Renew and claim leases now (or right after the scan in progress)."""
        if not self.running:
            return
        if self._scanning is not None:
            self._rescan = True
            return
        self._scanning = defer.ensureDeferred(self._scan_while_asked())

    async def _scan_while_asked(self) -> None:
        try:
            while self.running:
                self._rescan = False
                try:
                    await self._scan()
                except Unavailable as e:
                    log.warn("webhook lease renewal failed: {error}", error=e)
                except Exception:
                    log.failure("webhook lease renewal failed")
                if not self._rescan:
                    break
        finally:
            self._scanning = None

    async def _scan(self) -> None:
        claimed = await self.subscriptions.claim(self.owner, self.lease)
        if not self.running:
            return
        held = {c.id: c for c in claimed}
        for sid in list(self._owned):
            if sid not in held:
                log.info("no longer delivering webhook subscription {sid}", sid=sid)
                self._drop(sid)
        for sid, sub in held.items():
            if sid not in self._owned:
                log.info(
                    "delivering webhook subscription {sid} ({context}/{channel})",
                    sid=sid,
                    context=sub.context,
                    channel=sub.channel,
                )
                self._owned[sid] = owned = OwnedSubscription(self, sub)
                owned.start()

    def _drop(self, sid: int) -> None:
        owned = self._owned.pop(sid, None)
        if owned is not None:
            owned.stop()

    def lost(self, sid: int) -> None:
        """A write found the subscription not ours (taken over, deleted or disabled).

        Called from inside a delivery loop: the drop happens on the next
        reactor turn, after that loop has returned.
        """
        self.reactor.callLater(0, self._drop, sid)
