"""One way to wait for a channel: subscriptions, woken by commits and NOTIFY.

Shape borrowed from Synapse's notifier: subscriptions are kept per channel, so a publish costs one
dict lookup for the channels nobody waits on; a wake reads the new events of a channel *once* and
answers every subscriber of that channel from that one result (and from the :class:`TailCache` the
read fills).

Everything that waits subscribes through :meth:`Notifier.subscribe` with a :class:`Subscriber`,
which says what it wants told:

* wake-ups only (``cursor`` None): a typed :class:`Wake` for every publish, consumer-state change
  or lost-notification resync of its channel (or, with channel None, of every channel of its
  context).  Durable consumers' ``next`` and webhook delivery loops do their own reading.
* events (``cursor`` an id): the events after the cursor, read by the notifier.  With ``follows``
  False only the next one (a long-poll ``peek``: :meth:`Notifier.next_event` is that, ready-made);
  with ``follows`` True every event, contiguous and in order, for as long as it stays subscribed
  (an SSE broadcast group).

No lost wake-ups: subscribe *before* the first read of the store. Whatever commits after that read
sends a notification that finds the subscription; whatever committed before it is seen by the read.
Notifications sent while the LISTEN connection was down are lost, so after it reconnects
(:meth:`Notifier.resync`) every channel with subscribers is read again and every wake-up subscriber
gets a ``RESYNC``. Every subscription is cancellable, and cancelling never raises: Klein cancels a
handler's Deferred when its client disconnects. Time is the injected reactor's.

Layer rule: a domain module; no SQL (it reads through the event store), no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from eventbus.errors import Unavailable
from eventbus.model import MAX_ID, ChannelKey, Event, Pruned
from eventbus.retry import EVERY_SECOND, retrying
from eventbus.storage.notify import STATE_CHANGED, Notification
from eventbus.storage.pages import PAGE_BYTES, Page
from eventbus.tail import TAIL_EVENTS, TailCache
from eventbus.waking import EventReader, Subscriber, Wake, WakeKind

__all__ = ["EventReader", "Notifier", "Subscriber", "Subscription", "Wake", "WakeKind"]

log = Logger()

#: Delay before a wake-up read that failed (the database was away) is retried.
WAKE_RETRY_S = EVERY_SECOND(0)
#: A head beyond every id: the channel may hold anything new, read the store
#: to know (a new follower, a resync).  Internal: never handed to subscribers.
_ANY_HEAD = MAX_ID + 1


class Subscription:
    """One registration; :meth:`cancel` ends it (idempotent, never raises)."""

    __slots__ = ("active", "key", "notifier", "subscriber")

    def __init__(self, notifier: Notifier, key: tuple[str, str | None], subscriber: Subscriber) -> None:
        self.notifier = notifier
        self.key = key
        self.subscriber = subscriber
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.notifier._remove(self)


#: What a channel's group of subscriptions is until its first member: one
#: shared empty set that is never added to (an empty set costs 216 bytes,
#: and a channel of one long poll needs one group of three).
_NONE = cast(set["Subscription"], frozenset())


class _Channel:
    """The subscriptions of one channel and the state of its wake-up read."""

    __slots__ = ("followers", "pending", "reading", "signals", "waiters")

    def __init__(self) -> None:
        self.signals: set[Subscription] = _NONE
        #: Subscriptions for the next event only (long polls).
        self.waiters: set[Subscription] = _NONE
        self.followers: set[Subscription] = _NONE
        self.reading = False
        #: Highest id announced since the last read started (0: none).
        self.pending = 0

    def add_signal(self, subscription: Subscription) -> None:
        if self.signals is _NONE:
            self.signals = set()
        self.signals.add(subscription)

    def add_waiter(self, subscription: Subscription) -> None:
        if self.waiters is _NONE:
            self.waiters = set()
        self.waiters.add(subscription)

    def add_follower(self, subscription: Subscription) -> None:
        if self.followers is _NONE:
            self.followers = set()
        self.followers.add(subscription)

    def discard(self, subscription: Subscription) -> None:
        """Forget a subscription (a group that held it is a real set)."""
        for group in (self.signals, self.waiters, self.followers):
            if subscription in group:
                group.discard(subscription)

    def idle(self) -> bool:
        return not (self.signals or self.waiters or self.followers or self.reading)


class _NextEvent(Subscriber):
    """A long poll: the first event after ``cursor``, or None at its timeout."""

    __slots__ = ("cursor", "result", "timer")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.result: defer.Deferred[Event | Pruned | None] = defer.Deferred()
        self.timer: IDelayedCall | None = None

    def deliver(self, events: list[Event]) -> None:
        self.finish(events[0])

    def pruned(self, first_id: int) -> None:
        self.finish(Pruned(first_id))

    def finish(self, event: Event | Pruned | None) -> None:
        if not self.result.called:
            self.result.callback(event)


class Notifier:
    """Every subscription of this process, woken by local commits and NOTIFY."""

    def __init__(
        self,
        reactor: IReactorTime,
        store: EventReader,
        own_pids: Callable[[], frozenset[int]] = frozenset,
    ) -> None:
        self.reactor = reactor
        self.store = store
        #: Backends of this process's pool: their notifications echo commits
        #: that :meth:`published` announced already.
        self._own_pids = own_pids
        self._channels: dict[ChannelKey, _Channel] = {}
        #: Wake-up subscriptions to every channel of a context.
        self._contexts: dict[str, set[Subscription]] = {}
        self.tail = TailCache()
        self.closed = False  # see close()

    # -- subscribing ------------------------------------------------------------
    def subscribe(self, context: str, channel: str | None, subscriber: Subscriber) -> Subscription:
        """Register ``subscriber`` for ``channel`` of ``context`` (None: every
        channel of it, for wake-ups only).  A follower is fed at once with
        what the store holds after its cursor."""
        subscription = Subscription(self, (context, channel), subscriber)
        if channel is None:
            if subscriber.cursor is not None:
                raise ValueError("a subscription to a whole context takes wake-ups only")
            self._contexts.setdefault(context, set()).add(subscription)
            return subscription
        key = (context, channel)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel()
        if subscriber.cursor is None:
            ch.add_signal(subscription)
        elif subscriber.follows:
            ch.add_follower(subscription)
            self._wake(context, channel, _ANY_HEAD)
        else:
            ch.add_waiter(subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        context, channel = subscription.key
        if channel is None:
            subs = self._contexts.get(context)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._contexts[context]
            return
        key = (context, channel)
        ch = self._channels.get(key)
        if ch is None:
            return
        ch.discard(subscription)
        if ch.idle():
            del self._channels[key]

    async def next_event(
        self, context: str, channel: str, cursor: int, timeout: float
    ) -> Event | Pruned | None:
        """The first event with id > cursor (as the store's ``first_after``
        answers: past a gap, or :class:`Pruned`), or None after ``timeout`` s."""
        key = (context, channel)
        cached = self.tail.get(key, cursor + 1)
        if cached is not None:
            return cached
        waiter = _NextEvent(cursor)
        subscription = self.subscribe(context, channel, waiter)  # before the read
        waiter.timer = self.reactor.callLater(0 if self.closed else timeout, waiter.finish, None)
        try:
            event = await self.store.first_after(context, channel, cursor)
            if isinstance(event, Event):
                self.tail.add(key, [event])
            if event is not None:
                waiter.finish(event)
            return await waiter.result
        finally:
            subscription.cancel()
            if waiter.timer.active():
                waiter.timer.cancel()

    def close(self) -> None:
        """Stopping: answer the long polls held now as at their timeout; hold none from now on."""
        self.closed = True
        for sub in [s.subscriber for ch in self._channels.values() for s in ch.waiters]:
            if isinstance(sub, _NextEvent):
                sub.finish(None)

    def recent(
        self, context: str, channel: str, cursor: int, limit: int, max_bytes: int = PAGE_BYTES
    ) -> list[Event]:
        """Events after ``cursor`` already in memory: at most ``limit`` and ``max_bytes``."""
        return self.tail.after((context, channel), cursor, limit, max_bytes)

    def waiting(self) -> int:
        """Long polls currently held open (for tests and health)."""
        return sum(len(c.waiters) for c in self._channels.values())

    def following(self) -> int:
        """Followers subscribed (for tests)."""
        return sum(len(c.followers) for c in self._channels.values())

    # -- what wakes ---------------------------------------------------------------
    def published(self, context: str, channel: str, events: list[Event]) -> None:
        """This process committed ``events``: remember them and wake their channel
        (other processes hear of them through NOTIFY)."""
        key = (context, channel)
        # Only channels somebody reads are worth memory (publish-only load
        # skips this); a channel's run starts with its first wake-up read.
        if key in self._channels or self.tail.holds(key):
            self.tail.add(key, events)
        self.notify(context, channel, events[-1].id)

    def on_notification(self, notification: Notification) -> None:
        """A NOTIFY from any process.  An append committed through this
        process's own pool was announced already (:meth:`published`, called
        by the store at commit), so its echo is skipped; a state change
        never is."""
        if notification.head != STATE_CHANGED and notification.pid in self._own_pids():
            return
        self.notify(notification.context, notification.channel, notification.head)

    def notify(self, context: str, channel: str, head: int) -> None:
        """Events up to ``head`` exist in this channel (``STATE_CHANGED``:
        none, its consumer state changed): tell who waits for it."""
        if head == STATE_CHANGED:
            wake = Wake(WakeKind.CHANGED, channel)
        else:
            wake = Wake(WakeKind.PUBLISHED, channel, head)
        ch = self._channels.get((context, channel))
        if ch is not None and ch.signals:
            self._tell(ch.signals, wake)
        subs = self._contexts.get(context)
        if subs:
            self._tell(subs, wake)
        if head != STATE_CHANGED:
            self._wake(context, channel, head)

    def resync(self) -> None:
        """Notifications may have been lost (the LISTEN connection came back):
        read every channel that has subscribers, tell every wake-up subscriber."""
        for subs in list(self._contexts.values()):
            self._tell(subs, Wake(WakeKind.RESYNC, None))
        for (context, channel), ch in list(self._channels.items()):
            if ch.signals:
                self._tell(ch.signals, Wake(WakeKind.RESYNC, channel))
            self._wake(context, channel, _ANY_HEAD)

    def _tell(self, subscriptions: set[Subscription], wake: Wake) -> None:
        for subscription in list(subscriptions):
            if subscription.active:
                try:
                    subscription.subscriber.woken(wake)
                except Exception:
                    log.failure("subscriber of {key} failed", key=subscription.key)

    # -- the one read per channel -----------------------------------------------------
    def _wake(self, context: str, channel: str, head: int) -> None:
        ch = self._channels.get((context, channel))
        if ch is None or not (ch.waiters or ch.followers):
            return
        ch.pending = max(ch.pending, head)
        if not ch.reading:
            ch.reading = True
            defer.ensureDeferred(self._read((context, channel), ch))

    async def _read(self, key: ChannelKey, ch: _Channel) -> None:
        try:
            while ch.pending and (ch.waiters or ch.followers):
                await retrying(
                    self.reactor,
                    lambda: self._round(key, ch),
                    what=f"wake-up read of {key[0]}/{key[1]}",
                )
        except Exception:
            log.failure("waking {key} failed", key=key)
        finally:
            ch.reading = False
            if self._channels.get(key) is ch and ch.idle():
                del self._channels[key]

    async def _round(self, key: ChannelKey, ch: _Channel) -> None:
        """Answer the waiters and feed the followers up to the pending head;
        on an outage the head stays pending for the retry."""
        head, ch.pending = ch.pending, 0
        try:
            await self._answer_waiters(key, ch, head)
            # After the waiters: their read has filled the tail.
            if ch.followers:
                await self._feed_followers(key, ch, head)
        except Unavailable:
            ch.pending = max(ch.pending, head)
            raise

    async def _answer_waiters(self, key: ChannelKey, ch: _Channel, head: int) -> None:
        """Fire the waiters whose event is now known."""
        wanted = {w.subscriber.cursor + 1 for w in ch.waiters if w.subscriber.cursor < head}  # type: ignore[operator]
        missing = {i for i in wanted if self.tail.get(key, i) is None}
        found: dict[int, Event] = {}
        if missing:
            # One read for the whole channel; with a known head it also fetches what follows (as far
            # as a page's bytes allow), for the consumers (SSE streams, peek chains) that ask next.
            low = min(missing)
            ahead = range(low, min(head, low + TAIL_EVENTS - 1) + 1) if head <= MAX_ID else range(0)
            found = await self.store.events_by_id(key[0], key[1], missing, ahead)
            self.tail.add(key, found.values())
        gone: dict[int, Event | Pruned | None] = {}
        for waiter in list(ch.waiters):
            cursor = waiter.subscriber.cursor
            assert cursor is not None
            event: Event | Pruned | None = found.get(cursor + 1) or self.tail.get(key, cursor + 1)
            if event is None and (cursor < head or head > MAX_ID):
                # Announced (or maybe, after a resync) yet not stored: retention
                # deleted it, or it is still to come.  The store tells which.
                if cursor not in gone:
                    gone[cursor] = await self.store.first_after(key[0], key[1], cursor)
                event = gone[cursor]
            if event is None or not waiter.active:
                continue
            if isinstance(event, Pruned):
                waiter.subscriber.pruned(event.first_id)
            else:
                waiter.subscriber.deliver([event])

    async def _feed_followers(self, key: ChannelKey, ch: _Channel, head: int) -> None:
        """Bring every follower up to ``head`` (with an unknown head: up to the
        store's), from the tail where it can, else a page at a time."""
        for follower in list(ch.followers):
            sub = follower.subscriber
            # The memory first: in the publishing process (and after the waiters' read) it holds all up to the head.
            while follower.active and sub.cursor is not None and sub.cursor < head:
                events = self.tail.after(key, sub.cursor, TAIL_EVENTS, PAGE_BYTES)
                if not events:
                    break
                self._deliver(follower, events)
            more = True
            while more and follower.active and sub.cursor is not None and sub.cursor < head:
                page = await self.store.page(key[0], key[1], sub.cursor, min(head, MAX_ID + 1), TAIL_EVENTS)
                self.tail.add(key, page)
                # Delivered from the page itself: the tail ignores events older than the run it holds.
                if page and follower.active:
                    if page[0].id != sub.cursor + 1:
                        sub.pruned(page[0].id)  # retention made a gap: it must know
                        break
                    self._deliver(follower, page)
                more, page = page.cut, Page()  # not held across the next read

    def _deliver(self, follower: Subscription, events: list[Event]) -> None:
        sub = follower.subscriber
        if sub.cursor is None or events[0].id != sub.cursor + 1:
            return  # never a gap: the next read starts from the cursor again
        sub.cursor = events[-1].id
        try:
            sub.deliver(events)
        except Exception:
            log.failure("follower delivery failed")
