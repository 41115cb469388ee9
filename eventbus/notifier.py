"""Long-poll waiters and the LISTEN connection that wakes them.

Shape borrowed from Synapse's notifier: waiters are kept per channel, so a
publish costs one dict lookup for the channels nobody waits on; a wake reads
the new events of a channel *once* and answers every waiter of that channel
from that one result.

No lost wake-ups: a waiter is registered *before* its first read of the
store.  Whatever commits after that read sends a notification that finds the
waiter; whatever committed before it is seen by the read.  Notifications
sent while the LISTEN connection was down are lost, so on reconnect every
channel that has waiters is read again.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from eventbus.errors import Unavailable
from eventbus.model import MAX_ID, Event
from eventbus.store import (
    NOTIFY_CHANNEL,
    Store,
    close_for_good,
    connect_kwargs,
    make_connection,
)
from eventbus.tail import TAIL_EVENTS, TailCache

log = Logger()

#: Retry delay for a wake-up read that failed because the database was away.
WAKE_RETRY_S = 1.0
#: How often the LISTEN connection is probed, so a silently dead one is noticed.
LISTEN_KEEPALIVE_S = 10.0
#: A wake-up "head" beyond every id: the channel may have anything new, read
#: the store to know (a new follower, a LISTEN outage).
UNKNOWN_HEAD = MAX_ID + 1

ChannelKey = tuple[str, str]
#: ``watcher(context, channel, head)``: events up to ``head`` may exist in
#: that channel.  ``channel`` is None and ``head`` is None after a LISTEN
#: outage, meaning "anything in this context may have changed".  ``head`` 0
#: announces no event: something else about the channel changed (durable
#: consumers send it when a nack, ack or retry makes an event leasable).
Watcher = Callable[[str, Optional[str], Optional[int]], None]


class _Waiter:
    __slots__ = ("cursor", "deferred", "timer")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.deferred: defer.Deferred = defer.Deferred()
        self.timer: Optional[IDelayedCall] = None


class _Follower:
    __slots__ = ("cursor", "deliver", "active")

    def __init__(self, cursor: int, deliver: Callable[[list[Event]], None]) -> None:
        self.cursor = cursor
        self.deliver = deliver
        self.active = True


class _Channel:
    """The waiters and followers of one channel and the state of its wake-up read."""

    __slots__ = ("waiters", "followers", "reading", "pending")

    def __init__(self) -> None:
        self.waiters: set[_Waiter] = set()
        self.followers: set[_Follower] = set()
        self.reading = False
        #: Highest id announced since the last read started (0: none).
        self.pending = 0


class Notifier:
    """Holds peek requests open until their event exists or they time out."""

    def __init__(self, reactor: IReactorTime, store: Store) -> None:
        self.reactor = reactor
        self.store = store
        self._channels: dict[ChannelKey, _Channel] = {}
        self._watchers: dict[tuple[str, Optional[str]], set[Watcher]] = {}
        self.tail = TailCache()
        # The store tells us of every append it commits, before answering the
        # publisher; their NOTIFY echoes are then skipped (on_notification).
        self._own_pids: Callable[[], frozenset[int]] = getattr(
            store, "backend_pids", lambda: frozenset())
        if store is not None:
            store.on_append = self.published

    # -- waiting ------------------------------------------------------------
    async def wait(self, context: str, channel: str, cursor: int,
                   timeout: float) -> Optional[Event]:
        """The first event with id > cursor, or None after ``timeout`` seconds."""
        key = (context, channel)
        cached = self.tail.get(key, cursor + 1)
        if cached is not None:
            return cached
        waiter = self._register(key, cursor, timeout)
        try:
            event = await self.store.first_after(context, channel, cursor)
        except BaseException:
            self._discard(key, waiter)
            raise
        if event is not None:
            self.tail.add(key, [event])
            if not waiter.deferred.called:
                self._fire(key, waiter, event)
        return await waiter.deferred

    def recent(self, context: str, channel: str, cursor: int, limit: int) -> list[Event]:
        """Events after ``cursor`` that are in memory already (may be empty)."""
        return self.tail.after((context, channel), cursor, limit)

    def published(self, context: str, channel: str, events: list[Event]) -> None:
        """This process committed ``events``: remember them and wake their channel
        (other processes hear of them through NOTIFY)."""
        key = (context, channel)
        # Only channels somebody reads are worth memory (publish-only load
        # skips this); a channel's run starts with its first wake-up read.
        if key in self._channels or self.tail.holds(key):
            self.tail.add(key, events)
        self.notify(context, channel, events[-1].id)

    def waiting(self) -> int:
        """Number of requests currently held open (for tests and health)."""
        return sum(len(c.waiters) for c in self._channels.values())

    def following(self) -> int:
        """Number of followers registered (for tests)."""
        return sum(len(c.followers) for c in self._channels.values())

    def follow(self, context: str, channel: str, cursor: int,
               deliver: Callable[[list[Event]], None]) -> Callable[[], None]:
        """Call ``deliver(events)`` with every event after ``cursor``, as soon
        as this process learns of it; returns the call that stops it.

        For a consumer that stays at the head of a busy channel (an SSE
        broadcast group): unlike :meth:`wait` it is not re-registered, nor is
        the store re-read, per event.  Each call carries the events right
        after the previous one, contiguous and in order.  The channel is read
        once now, so what committed before the follower was registered is not
        missed.  ``deliver`` may run before this returns and must not raise.
        """
        key = (context, channel)
        follower = _Follower(cursor, deliver)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel()
        ch.followers.add(follower)

        def unfollow() -> None:
            follower.active = False
            ch = self._channels.get(key)
            if ch is not None:
                ch.followers.discard(follower)
                self._forget_if_idle(key, ch)

        self._wake(context, channel, UNKNOWN_HEAD)
        return unfollow

    def _register(self, key: ChannelKey, cursor: int, timeout: float) -> _Waiter:
        waiter = _Waiter(cursor)
        # A client that disconnects cancels the handler, which cancels this
        # Deferred: drop the waiter at once.  Cancellers must never raise.
        waiter.deferred = defer.Deferred(lambda _: self._discard(key, waiter))
        waiter.timer = self.reactor.callLater(timeout, self._fire, key, waiter, None)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = _Channel()
        ch.waiters.add(waiter)
        return waiter

    def _discard(self, key: ChannelKey, waiter: _Waiter) -> None:
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        ch = self._channels.get(key)
        if ch is None:
            return
        ch.waiters.discard(waiter)
        self._forget_if_idle(key, ch)

    def _forget_if_idle(self, key: ChannelKey, ch: _Channel) -> None:
        if not ch.waiters and not ch.followers and not ch.reading:
            del self._channels[key]

    def _fire(self, key: ChannelKey, waiter: _Waiter, event: Optional[Event]) -> None:
        self._discard(key, waiter)
        if not waiter.deferred.called:
            waiter.deferred.callback(event)

    # -- long-lived watchers ---------------------------------------------------
    def watch(self, context: str, channel: Optional[str],
              watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher`` on every wake of a channel (or, with ``channel``
        None, of every channel of ``context``); returns the unsubscribe call.

        For components that follow channels continuously (webhook delivery,
        consumer groups); one-shot requests use :meth:`wait`.  Watchers must
        not raise; they are told about events, they do not read them.
        """
        key = (context, channel)
        self._watchers.setdefault(key, set()).add(watcher)

        def unwatch() -> None:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[key]

        return unwatch

    def _tell_watchers(self, context: str, channel: Optional[str],
                       head: Optional[int]) -> None:
        if channel is None:  # after an outage: every watcher of the context
            keys = [k for k in self._watchers if k[0] == context]
        else:
            keys = [(context, channel), (context, None)]
        for key in keys:
            for watcher in list(self._watchers.get(key, ())):
                try:
                    watcher(context, channel, head)
                except Exception:
                    log.failure("watcher of {key} failed", key=key)

    # -- waking -------------------------------------------------------------
    def notify(self, context: str, channel: str, head: int) -> None:
        """Events up to ``head`` exist in this channel: answer who waits for them."""
        if self._watchers:
            self._tell_watchers(context, channel, head)
        self._wake(context, channel, head)

    def _wake(self, context: str, channel: str, head: int) -> None:
        ch = self._channels.get((context, channel))
        if ch is None:
            return
        ch.pending = max(ch.pending, head)
        if not ch.reading:
            ch.reading = True
            defer.ensureDeferred(self._read((context, channel), ch))

    def recheck_all(self) -> None:
        """Read every channel that has waiters (after a LISTEN outage)."""
        for context in {k[0] for k in self._watchers}:
            self._tell_watchers(context, None, None)
        for context, channel in list(self._channels):
            self._wake(context, channel, UNKNOWN_HEAD)

    async def _read(self, key: ChannelKey, ch: _Channel) -> None:
        try:
            while ch.pending:
                head, ch.pending = ch.pending, 0
                if not await self._answer_waiters(key, ch, head):
                    return
                # After the waiters: their read has filled the tail.
                if ch.followers and not await self._feed_followers(key, ch, head):
                    return
        except Exception:
            log.failure("waking {key} failed", key=key)
        finally:
            ch.reading = False
            if self._channels.get(key) is ch:
                self._forget_if_idle(key, ch)

    async def _answer_waiters(self, key: ChannelKey, ch: _Channel, head: int) -> bool:
        """Fire the waiters whose event is now known; False if the read failed
        (a retry is scheduled)."""
        wanted = {w.cursor + 1 for w in ch.waiters if w.cursor < head}
        missing = {i for i in wanted if self.tail.get(key, i) is None}
        if missing:
            # One read for the whole channel; with a known head it
            # also fetches what follows, for the consumers (SSE
            # streams, peek chains) that will ask for it next.
            ids = set(missing)
            low = min(missing)
            if head <= MAX_ID:
                ids.update(range(low, min(head, low + TAIL_EVENTS - 1) + 1))
            try:
                found = await self.store.events_by_id(key[0], key[1], ids)
            except Unavailable:
                self._retry_later(key, head)
                return False
            self.tail.add(key, found.values())
        else:
            found = {}
        for waiter in list(ch.waiters):
            event = found.get(waiter.cursor + 1) or self.tail.get(key, waiter.cursor + 1)
            if event is not None:
                self._fire(key, waiter, event)
        return True

    async def _feed_followers(self, key: ChannelKey, ch: _Channel, head: int) -> bool:
        """Bring every follower up to ``head`` (with an unknown head: up to the
        store's), from the tail where it can, else a page at a time from the
        store; False if a read failed (a retry is scheduled)."""
        for follower in list(ch.followers):
            # The memory first: in the publishing process (and after the
            # waiters' read) it holds everything up to the head.
            while follower.active and follower.cursor < head:
                events = self.tail.after(key, follower.cursor, TAIL_EVENTS)
                if not events:
                    break
                self._deliver(follower, events)
            while follower.active and follower.cursor < head:
                try:
                    page = await self.store.page(key[0], key[1], follower.cursor,
                                                 min(head, MAX_ID + 1), TAIL_EVENTS)
                except Unavailable:
                    self._retry_later(key, head)
                    return False
                self.tail.add(key, page)
                # Delivered from the page itself: the tail ignores events
                # older than the run it holds.
                if page and follower.active:
                    self._deliver(follower, page)
                if len(page) < TAIL_EVENTS:
                    break
        return True

    def _deliver(self, follower: _Follower, events: list[Event]) -> None:
        if events[0].id != follower.cursor + 1:
            return  # never a gap: the next read starts from the cursor again
        follower.cursor = events[-1].id
        try:
            follower.deliver(events)
        except Exception:
            log.failure("follower delivery failed")

    def _retry_later(self, key: ChannelKey, head: int) -> None:
        log.warn("wake-up read of {key} failed; retrying", key=key)
        self.reactor.callLater(WAKE_RETRY_S, self._wake, key[0], key[1], head)

    def on_notification(self, payload: str, pid: int = 0) -> None:
        """Parse a ``<context>/<channel>/<id>`` notification and wake its channel.

        An append committed through this process's own pool was announced
        already (:meth:`published`, called by the store at commit), so its
        echo is skipped; ``head`` 0 (a consumer state change) never is.
        """
        try:
            rest, head = payload.rsplit("/", 1)
            context, channel = rest.split("/", 1)
            head_id = int(head)
        except ValueError:
            log.warn("ignoring malformed notification {payload!r}", payload=payload)
            return
        if head_id and pid in self._own_pids():
            return
        self.notify(context, channel, head_id)


class Listener:
    """The LISTEN connection: forwards notifications, re-arms itself after outages."""

    def __init__(self, reactor: Any, dsn: str, on_notification: Callable[[str, int], None],
                 on_recovered: Callable[[], None]) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.on_notification = on_notification
        self.on_recovered = on_recovered
        self._conn: Any = None
        self._keepalive: Optional[task.LoopingCall] = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.detector.connectionIsDead

    async def start(self) -> None:
        conn = make_connection(self.reactor)
        await conn.connect(**connect_kwargs(self.dsn))
        conn.addNotifyObserver(self._observe)
        conn.detector.addRecoveryHandler(self._recovered)
        await conn.runOperation(f"LISTEN {NOTIFY_CHANNEL}")
        self._conn = conn
        self._keepalive = task.LoopingCall(self._probe)
        self._keepalive.clock = self.reactor
        self._keepalive.start(LISTEN_KEEPALIVE_S, now=False)

    def stop(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._conn is not None:
            close_for_good(self._conn)
            self._conn = None

    def _observe(self, notify: Any) -> None:
        if notify.channel == NOTIFY_CHANNEL:
            self.on_notification(notify.payload, notify.pid)

    async def _recovered(self) -> None:
        log.info("LISTEN connection re-established; re-checking waiting channels")
        await self._conn.runOperation(f"LISTEN {NOTIFY_CHANNEL}")
        self.on_recovered()

    def _probe(self) -> None:
        # Errors are noticed by the connection's detector, which reconnects.
        if self._conn is not None and not self._conn.detector.connectionIsDead:
            self._conn.runQuery("SELECT 1").addErrback(lambda _: None)
