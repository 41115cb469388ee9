"""Durable consumers: which event to lease next, and the long-poll around it.

The state lives in PostgreSQL (:mod:`eventbus.storage.consumers`); this
module holds the leasing rules (:func:`choose`, :func:`blocked`, the lease
tokens: pure, so they are tested without a database) and the service that
answers ``next`` and friends.

Waking.  A ``next`` that finds nothing to lease waits for whichever comes
first: a wake-up of its channel (a :class:`~eventbus.notifier.Subscriber` of
the notifier), the
moment the earliest lease expires or nack delay ends (a timer), or its own
timeout.  Publishes announce their new head; consumer state changes that
make an event leasable (a nack, an ack in ordered mode, a dead-letter retry,
a PUT) announce head 0.  As with peek, the waiter is registered *before* the
leasing round reads, so nothing committed after that read goes unnoticed:
announcements that arrive during the round are judged once it has read.

Which announcements wake a waiter: head 0 and LISTEN outages always; a new
event (head above the one the round read) only if the waiter is not
*blocked*: in ordered mode with an event in flight or a nacked event still
delayed, a new event could not be leased anyway, so a busy channel does not
spin its standbys.  The echo of a publish this process already announced
wakes nobody.

Layer rule: a domain module; no SQL (it goes through the consumer store),
no HTTP (it raises domain errors).
"""

from __future__ import annotations

import re
import secrets

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from eventbus.errors import Conflict, NotFound, Unavailable
from eventbus.metrics import ConsumerMetrics
from eventbus.model import (
    MAX_ID,
    ORDERED,
    Backlog,
    ConsumerConfig,
    ConsumerStatus,
    DeadEvent,
    Delivery,
    LeaseOutcome,
    Start,
)
from eventbus.notifier import Notifier, Subscriber, Wake, WakeKind
from eventbus.storage.consumers import ConsumerStore
from eventbus.storage.database import QUERY_TIMEOUT_S
from eventbus.storage.events import EventStore

log = Logger()

DEFAULT_MODE = ORDERED
DEFAULT_START: Start = "earliest"
DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_DELIVERIES = 5
DEFAULTS = ConsumerConfig(
    mode=DEFAULT_MODE, lease_s=DEFAULT_LEASE_S, max_deliveries=DEFAULT_MAX_DELIVERIES, start=DEFAULT_START
)
#: Longest lease and longest nack delay a client may ask for (12 hours).
#: Shortest lease: a shorter one would expire before any instance could ack.
MIN_LEASE_S = 1.0
MAX_LEASE_S = 43200.0
MAX_NACK_DELAY_S = 43200.0
MAX_DELIVERIES_LIMIT = 1_000_000
#: Wake this long after a lease expiry / delay end, so the re-check is not
#: a hair early (the database clock and ours tick apart).
EXPIRY_SLACK_S = 0.02
#: Longest wait for this process's turn at a consumer's leasing round; with
#: the round's own query timeout, a ``next`` answers 503 within two of them
#: however many instances queue while the database hangs.
LOCK_WAIT_S = QUERY_TIMEOUT_S


def choose(b: Backlog) -> int | None:
    """The event id to lease now, or None.

    ordered: nothing may be in flight, and it is always the lowest id that is
    neither acked nor dead (even if that one is still in its nack delay).
    shared: the lowest id that is leasable now.  Both: else the next new
    event, if the channel has it.
    """
    if b.mode == ORDERED:
        if b.in_flight:
            return None
        if b.first_pending is not None:
            return b.first_pending if b.first_ready == b.first_pending else None
    elif b.first_ready is not None:
        return b.first_ready
    return b.next_new if b.next_new <= b.head else None


def blocked(b: Backlog) -> bool:
    """Would a newly published event stay unleasable?"""
    return b.mode == ORDERED and (b.in_flight > 0 or b.first_pending is not None)


_UINT = re.compile(r"[0-9]{1,19}\Z")
#: What ``secrets.token_urlsafe`` makes, with room to spare.
_TOKEN_RANDOM = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def new_token(event_id: int) -> str:
    """An opaque lease token; the event id in front makes the ack a key lookup."""
    return f"{event_id}.{secrets.token_urlsafe(16)}"


def parse_token(token: str) -> int | None:
    """The event id of a token shaped like ours, else None (a 409: no such
    lease); anything else, a NUL character say, never reaches the database."""
    head, sep, rest = token.partition(".")
    if not sep or not _UINT.match(head) or not _TOKEN_RANDOM.match(rest):
        return None
    event_id = int(head)
    return event_id if 1 <= event_id <= MAX_ID + 1 else None


class _Waiter(Subscriber):
    """One ``next`` request between two leasing rounds: a wake-up subscriber."""

    __slots__ = ("blocked", "deferred", "highest_seen", "known_head", "signalled", "timer")

    def __init__(self) -> None:
        self.deferred: defer.Deferred[None] = defer.Deferred()
        self.timer: IDelayedCall | None = None
        #: Unknown until the leasing round has read the backlog.
        self.blocked: bool | None = None
        self.known_head = 0
        #: Announced during the round: a state change or resync; the highest head.
        self.signalled = False
        self.highest_seen = 0

    def woken(self, wake: Wake) -> None:
        published = wake.kind is WakeKind.PUBLISHED
        if self.blocked is None:  # the round is still reading: judge it afterwards
            self.signalled = self.signalled or not published
            self.highest_seen = max(self.highest_seen, wake.head)
        elif not published or (not self.blocked and wake.head > self.known_head):
            self.fire()

    def settle(self, backlog: Backlog) -> bool:
        """Record what the round read; True if what was announced meanwhile
        calls for another round at once."""
        self.blocked, self.known_head = blocked(backlog), backlog.head
        return self.signalled or (not self.blocked and self.highest_seen > self.known_head)

    def fire(self) -> None:
        if not self.deferred.called:
            self.deferred.callback(None)


class Consumers:
    """Durable consumers over their store, woken by the notifier."""

    def __init__(
        self,
        reactor: IReactorTime,
        store: ConsumerStore,
        events: EventStore,
        notifier: Notifier,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.events = events
        self.notifier = notifier
        #: Redeliveries and dead letters this process made, per consumer.
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self._waiting = 0
        self._waiters: set[_Waiter] = set()
        #: Shutting down: a ``next`` with nothing to lease answers at once.
        self.closed = False
        self._locks: dict[tuple[str, str, str], defer.DeferredLock] = {}

    # -- leasing ----------------------------------------------------------------
    async def next(self, context: str, channel: str, name: str, timeout: float) -> Delivery | None:
        """Lease the next available event, waiting up to ``timeout`` seconds."""
        deadline = self.reactor.seconds() + timeout
        while True:
            waiter = _Waiter()
            # Before the leasing round reads: nothing committed after it is missed.
            subscription = self.notifier.subscribe(context, channel, waiter)
            self._waiting += 1
            try:
                outcome = await self._lease(context, channel, name)
                if outcome.leased is not None:
                    leased = outcome.leased
                    event = await self.events.event(context, channel, leased.event_id)
                    if event is None:
                        # Retention never deletes a leased event: its lease
                        # expired already (and it was deleted): lease again.
                        continue
                    return Delivery(event, leased.token, leased.deliveries, missed=leased.missed)
                remaining = deadline - self.reactor.seconds()
                if remaining <= 0 or self.closed:
                    return None
                if waiter.settle(outcome.backlog):
                    continue
                wait = remaining
                if outcome.backlog.next_change_s is not None:
                    wait = min(wait, max(0.0, outcome.backlog.next_change_s) + EXPIRY_SLACK_S)
                waiter.timer = self.reactor.callLater(wait, waiter.fire)
                self._waiters.add(waiter)
                await waiter.deferred
            finally:
                self._waiters.discard(waiter)
                self._waiting -= 1
                subscription.cancel()
                if waiter.timer is not None and waiter.timer.active():
                    waiter.timer.cancel()

    async def _lease(self, context: str, channel: str, name: str) -> LeaseOutcome:
        """One leasing round, one at a time per consumer in this process.

        The database serialises them anyway (the consumer's row lock); queueing
        here keeps a crowd of woken instances from each holding a pooled
        connection while it waits for that lock.
        """
        key = (context, channel, name)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        acquiring = lock.acquire()
        acquiring.addTimeout(LOCK_WAIT_S, self.reactor)  # cancelled: leaves the queue
        try:
            await acquiring
        except defer.TimeoutError:
            raise Unavailable(f"database did not answer within {LOCK_WAIT_S:g} s") from None
        try:
            outcome = await self.store.lease(context, channel, name, DEFAULTS, choose, new_token)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting and self._locks.get(key) is lock:
                del self._locks[key]
        self.metrics.dead(key, outcome.dead_lettered)
        if outcome.leased is not None and outcome.leased.deliveries > 1:
            self.metrics.redelivered(key)
        return outcome

    async def ack(self, context: str, channel: str, name: str, token: str) -> None:
        event_id = parse_token(token)
        if event_id is None or not await self.store.ack(context, channel, name, event_id, token):
            raise Conflict("unknown or expired lease")

    async def nack(self, context: str, channel: str, name: str, token: str, delay_s: float) -> None:
        event_id = parse_token(token)
        state = (
            None
            if event_id is None
            else await self.store.nack(context, channel, name, event_id, token, delay_s)
        )
        if state is None:
            raise Conflict("unknown or expired lease")
        if state == "dead":
            self.metrics.dead((context, channel, name))

    # -- management -------------------------------------------------------------
    async def configure(
        self, context: str, channel: str, name: str, config: ConsumerConfig
    ) -> tuple[bool, ConsumerStatus]:
        """Create or update; (created, status)."""
        created = await self.store.configure(context, channel, name, config)
        return created, await self.status(context, channel, name)

    async def status(self, context: str, channel: str, name: str) -> ConsumerStatus:
        found = await self.store.status(context, channel, name)
        if not found:
            raise NotFound(f"no consumer {name} on {context}/{channel}")
        return found[0]

    async def of_channel(self, context: str, channel: str) -> list[ConsumerStatus]:
        """Every consumer of a channel, by name."""
        return await self.store.status(context, channel)

    async def delete(self, context: str, channel: str, name: str) -> None:
        if not await self.store.delete(context, channel, name):
            raise NotFound(f"no consumer {name} on {context}/{channel}")

    async def dead(
        self, context: str, channel: str, name: str, after: int = 0
    ) -> tuple[list[DeadEvent], bool]:
        """Dead letters after ``after``, a page (bounded in bytes), and whether more follow."""
        return await self.store.dead(context, channel, name, after)

    async def retry(self, context: str, channel: str, name: str, event_id: int) -> None:
        await self.store.retry(context, channel, name, event_id)

    def close(self) -> None:
        """The process is stopping: every ``next`` held now gets one more
        leasing round and then its answer (an event, or nothing), at once."""
        self.closed = True
        for waiter in list(self._waiters):
            waiter.fire()

    def waiting(self) -> int:
        """``next`` requests currently held open (for tests)."""
        return self._waiting
