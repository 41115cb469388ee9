"""Delivering a held subscription: its channels take turns, one POST at a time each.

Invariant: for each channel of a subscription the events are POSTed in id
order and the cursor moves past an event only after a 2xx for it, so
delivery is in order and at least once; every cursor write is fenced by the
owner check of :mod:`eventbus.storage.webhooks`, so a process that lost its
lease stops instead of moving a cursor.

Bounded fan-out: a channel with work queues for a *turn* in its
subscription; at most ``--webhook-subscription-concurrency`` channels of one
subscription take their turn at once, and at most ``--webhook-concurrency``
channels of all subscriptions (the service's ``turns``, first come, first
served); a turn ends at the end of a page, at a failure, or after the event
that made it last :data:`TURN_S` while others wait (the channel then queues
again at the back).  So thousands of lagging channels cost a bounded number
of requests, reads and pages in memory at a time, take turns fairly, and
each keeps its own order; as a subscription has at most its few turns
waiting for the process's, one with many lagging channels cannot starve the
others.  The :class:`~.sender.Sender` bounds the attempts in flight (and
the responses still being read) by the same number.

An :class:`OwnedSubscription` is a wake-up subscriber of the notifier: a
publish on one of its channels pokes that channel's
:class:`ChannelDelivery`, which queues for a turn: read the events after
its cursor (:meth:`EventStore.page`), POST them through the sender and,
once caught up, rest until the next poke: delivery is woken by
LISTEN/NOTIFY, never by polling.  A failed attempt is retried after
:data:`BACKOFF_S` (with jitter), the channel out of the queue meanwhile; a
channel that has failed for longer than ``--webhook-disable-after``
disables its subscription.

Layer rule: the webhooks package; no SQL (it goes through the stores), no
HTTP server code.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventbus.model import ALL_CHANNELS, MAX_ID, Claimed, Event, render_event
from eventbus.notifier import Subscriber, Subscription, Wake, WakeKind
from eventbus.retry import retrying
from eventbus.webhooks.signing import secret_key

if TYPE_CHECKING:
    from eventbus.webhooks.service import WebhookService

log = Logger()

#: Delays after the 1st, 2nd, ... failure of one event; the last one repeats.
BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)
#: Each delay is multiplied by a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: Wait before a channel is tried again after an unexpected error.
ERROR_RETRY_S = 5.0
#: Events read from the store per round trip.
BATCH = 100
#: A turn that has lasted this long ends after its current event if other
#: channels of the subscription wait for one.
TURN_S = 1.0


def retry_delay(failures: int, scale: float = 1.0) -> float:
    """Seconds before the next attempt after ``failures`` failed ones in a row."""
    base = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
    return base * scale * random.uniform(1 - JITTER, 1 + JITTER)


class _State(enum.Enum):
    IDLE = "idle"  # caught up: rests until a poke
    QUEUED = "queued"  # waits for a turn
    TURN = "turn"  # delivers
    PAUSED = "paused"  # waits out a retry delay
    STOPPED = "stopped"


class _Outcome(enum.Enum):
    MORE = "more"  # the turn ended with work left: queue again
    CAUGHT_UP = "caught up"
    LOST = "lost"  # the subscription is not ours any more


class OwnedSubscription(Subscriber):
    """A subscription this process holds: its wake-ups and its channels' turns."""

    def __init__(self, service: WebhookService, sub: Claimed) -> None:
        self.service = service
        self.sub = sub
        self.key = secret_key(sub.secret)
        self.wildcard = sub.channel == ALL_CHANNELS
        self.loops: dict[str, ChannelDelivery] = {}
        self._queue: deque[ChannelDelivery] = deque()
        self._turns = 0  # workers: channels taking their turn, or about to
        self._waiting = 0  # workers that have not taken a channel yet
        self._workers: set[defer.Deferred[None]] = set()
        self._subscription: Subscription | None = None
        self._discovering: defer.Deferred[None] | None = None
        self.stopped = False

    def start(self) -> None:
        channel = None if self.wildcard else self.sub.channel
        self._subscription = self.service.notifier.subscribe(self.sub.context, channel, self)
        if self.wildcard:
            self._discover()
        else:
            self._loop(self.sub.channel).poke()

    def stop(self) -> None:
        self.stopped = True
        self._queue.clear()
        if self._subscription is not None:
            self._subscription.cancel()
        if self._discovering is not None and not self._discovering.called:
            self._discovering.cancel()
        for loop in self.loops.values():
            loop.stop()
        for worker in list(self._workers):
            worker.cancel()

    def woken(self, wake: Wake) -> None:
        # A consumer state change announces no event.
        if self.stopped or wake.kind is WakeKind.CHANGED:
            return
        if wake.kind is WakeKind.RESYNC:  # anything may have changed
            for loop in self.loops.values():
                loop.poke()
            if self.wildcard:
                self._discover()
        elif wake.channel is not None:
            self._loop(wake.channel).poke()

    def _loop(self, channel: str) -> ChannelDelivery:
        loop = self.loops.get(channel)
        if loop is None:
            loop = self.loops[channel] = ChannelDelivery(self, channel)
        return loop

    def _discover(self) -> None:
        """Queue the channels of a '*' subscription that have work."""
        if self._discovering is None or self._discovering.called:
            self._discovering = defer.ensureDeferred(self._discover_channels())
            self._discovering.addErrback(lambda f: f.trap(defer.CancelledError))

    async def _discover_channels(self) -> None:
        channels = await retrying(
            self.service.reactor,
            lambda: self.service.subscriptions.pending_channels(self.sub.id, self.sub.context),
            what=f"channel discovery of webhook subscription {self.sub.id}",
        )
        if not self.stopped:
            for channel in channels:
                self._loop(channel).poke()

    # -- turns ---------------------------------------------------------------------
    def queue(self, loop: ChannelDelivery) -> None:
        """``loop`` has (or may have) work: it waits for a turn."""
        if self.stopped:
            return
        loop.state = _State.QUEUED
        self._queue.append(loop)
        # A worker per queued channel, up to the bound; counted before it
        # runs, since a turn may queue its channel again at once.
        while (
            not self.stopped
            and self._waiting < len(self._queue)
            and self._turns < self.service.channel_concurrency
        ):
            self._turns += 1
            self._waiting += 1
            worker = defer.ensureDeferred(self._work())
            if not worker.called:
                self._workers.add(worker)
                worker.addBoth(self._worker_ended, worker)
            worker.addErrback(self._worker_failed)

    def others_wait(self) -> bool:
        """Other channels, of this subscription or another, wait for a turn."""
        return bool(self._queue) or bool(self.service.turns.waiting)

    async def _work(self) -> None:
        turns = self.service.turns
        waiting = True  # counted in self._waiting
        try:
            while not self.stopped:
                await turns.acquire()  # one of the process's turns
                try:
                    if not self._queue or self.stopped:
                        break
                    loop = self._queue.popleft()
                    waiting = False
                    self._waiting -= 1
                    await loop.take_turn()
                finally:
                    turns.release()
                if not self._queue:
                    break
                waiting = True
                self._waiting += 1
        finally:
            self._turns -= 1
            if waiting:
                self._waiting -= 1

    def _worker_ended(self, result: Any, worker: defer.Deferred[None]) -> Any:
        self._workers.discard(worker)
        return result

    def _worker_failed(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("webhook delivery of {sid} failed", failure, sid=self.sub.id)


class ChannelDelivery:
    """Delivers one channel of one subscription, event after event, in turns."""

    def __init__(self, owned: OwnedSubscription, channel: str) -> None:
        self.owned = owned
        self.channel = channel
        self.state = _State.IDLE
        #: The last delivered id, as stored; None until read (or after an error).
        self.cursor: int | None = None
        #: Events skipped (retention deleted them) not yet reported to the receiver.
        self.missed = 0
        #: Whether an empty page may hide a skip: the cursor was just read,
        #: or the channel waited out failures (meanwhile everything after
        #: the cursor may have been deleted).
        self._recheck = True
        self._dirty = True
        self._pause: Any = None

    def poke(self) -> None:
        """New events may exist: queue for a turn (or read again after this one)."""
        self._dirty = True
        if self.state is _State.IDLE:
            self.owned.queue(self)

    def stop(self) -> None:
        self.state = _State.STOPPED
        if self._pause is not None and self._pause.active():
            self._pause.cancel()

    async def take_turn(self) -> None:
        """Deliver for one turn; then queue again, pause, rest or stop."""
        service, sub = self.owned.service, self.owned.sub
        what = f"webhook delivery of {sub.id}/{self.channel}"
        self.state = _State.TURN
        outcome: _Outcome | float
        try:
            outcome = await retrying(service.reactor, self._turn, what=what)
        except defer.CancelledError:
            raise
        except Exception:
            log.failure("{what} failed; starting over in {delay} s", what=what, delay=ERROR_RETRY_S)
            self.cursor = None  # read (and check ownership) again
            outcome = ERROR_RETRY_S
        if self.state is not _State.TURN:  # stopped meanwhile
            return
        if outcome is _Outcome.LOST:
            self.state = _State.STOPPED
            service.lost(sub.id)
        elif outcome is _Outcome.MORE or (outcome is _Outcome.CAUGHT_UP and self._dirty):
            self.owned.queue(self)
        elif outcome is _Outcome.CAUGHT_UP:
            self.state = _State.IDLE
        else:
            assert isinstance(outcome, float)
            self._recheck = True
            self.state = _State.PAUSED
            self._pause = service.reactor.callLater(outcome, self._resume)

    def _resume(self) -> None:
        if self.state is _State.PAUSED:
            self.owned.queue(self)

    async def _turn(self) -> _Outcome | float:
        """One turn: the outcome, or the delay before the next attempt."""
        service, sub = self.owned.service, self.owned.sub
        if self.cursor is None:
            stored = await service.subscriptions.cursor(sub.id, self.channel, service.owner)
            if stored is None:
                return _Outcome.LOST
            self.cursor, self.missed = stored
            self._recheck = True
        cursor = self.cursor
        self._dirty = False
        events = await service.events.page(sub.context, self.channel, cursor, MAX_ID, BATCH)
        if (events and events[0].id > cursor + 1) or (not events and self._recheck):
            # Retention deleted what follows the cursor: skip it, and count it.
            first = events[0].id if events else (await service.events.bounds(sub.context, self.channel))[0]
            if first > cursor + 1:
                missed = await service.subscriptions.skipped(sub.id, self.channel, service.owner, first)
                if missed is None:
                    return _Outcome.LOST
                self.cursor, self.missed = first - 1, missed
        self._recheck = False
        if not events:
            return _Outcome.CAUGHT_UP
        started = service.reactor.seconds()
        for event in events:
            problem = await self._deliver(event)
            if problem is not None:
                return problem
            self.cursor = event.id
            if self.owned.others_wait() and service.reactor.seconds() - started >= TURN_S:
                break
        return _Outcome.MORE

    async def _deliver(self, event: Event) -> _Outcome | float | None:
        """POST one event once: None after a 2xx, else LOST or the retry delay."""
        service, sub = self.owned.service, self.owned.sub
        body = render_event(sub.context, self.channel, event)
        msg_id = f"{sub.id}/{sub.context}/{self.channel}/{event.id}"
        status, problem = await service.sender.attempt(sub.url, self.owned.key, msg_id, body, self.missed)
        if self.state is not _State.TURN:
            raise defer.CancelledError()
        if problem is None:
            assert status is not None
            if await service.subscriptions.delivered(sub.id, self.channel, service.owner, event.id, status):
                self.missed = 0
                return None
            return _Outcome.LOST
        counted = await service.subscriptions.failed(sub.id, self.channel, service.owner, status, problem)
        if counted is None:
            return _Outcome.LOST
        failures, failing_for = counted
        if failing_for > service.disable_after:
            reason = (
                f"disabled after failing for {failing_for:.0f} s ({failures}"
                f" attempts at {self.channel} event {event.id}; the limit is"
                f" {service.disable_after:g} s); last error: {problem}"
            )
            log.warn("webhook subscription {sid}: {reason}", sid=sub.id, reason=reason)
            await service.subscriptions.disable(sub.id, service.owner, reason)
            return _Outcome.LOST
        delay = retry_delay(failures, service.retry_scale)
        log.info(
            "webhook {msg_id} failed ({problem}); attempt {n} in {delay:.3g} s",
            msg_id=msg_id,
            problem=problem,
            n=failures + 1,
            delay=delay,
        )
        return delay
