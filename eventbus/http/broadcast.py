"""Broadcast groups: one channel's new events, rendered once, written to many.

An SSE stream that has caught up with its channel does not wait for the next
event on its own: it joins its channel's *group*.  The group follows the
channel in the notifier (one follower, fed by the local publish or by the one
wake-up read per notification), renders each new event once, and writes the
same bytes to every member, at most every :data:`FLUSH_S` seconds, so that
under load one write per member carries several events.  Per event, a member
costs one ``write`` and nothing else: no waiter, no timer, no coroutine
resumed, no rendering, no store read.

A member is always exactly where its stream is: the group writes to it only
the events right after its cursor and moves the cursor.  A member whose
client stops reading (its producer is paused) leaves the group and goes back
to its own loop, which reads from the tail or the store at the client's pace:
the group never buffers for anyone, so a slow client costs no memory here.
A member that disconnects is dropped at once (its handler is cancelled, which
cancels what it awaits: the Deferred :meth:`Broadcaster.join` returned).

Heart-beats: one timer per group, set for the member that has been silent
the longest; each member gets a keep-alive only after ``heartbeat`` seconds
without a write.

This module knows nothing of SSE framing or HTTP: the owner passes the render
function, the keep-alive bytes and members that know how to write.

Layer rule: the HTTP layer (the streams' side of the notifier); no SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from eventbus.model import ChannelKey, Event
from eventbus.notifier import Notifier, Subscriber, Subscription
from eventbus.storage.pages import PAGE_BYTES

log = Logger()

#: Longest a known event waits before it is written to a group's members:
#: events arriving within this window share one write per member.  Small
#: against the latency target (50 ms at p99); large enough that at hundreds
#: of events per second a write carries a few of them (measured with 1,000
#: streams at 200 events/s: 10 ms took about 15 % less server CPU than 5 ms,
#: at no visible cost in latency, which is dominated by the commit and by
#: the clients reading a thousand sockets).
FLUSH_S = 0.010
#: Most events, and most bytes (but at least one event), written to the
#: members in one write: a member whose client stops reading is left with
#: at most this much beyond its socket buffer, and a group holds at most
#: this much pending.
FLUSH_EVENTS = 100
FLUSH_BYTES = PAGE_BYTES

#: Slack in comparing times, so a timer that fires a rounding error early
#: does not reschedule itself for no time at all.
_EPSILON_S = 1e-6

#: ``render(context, channel, events)``: the bytes of each event, in order.
Render = Callable[[str, str, list[Event]], list[bytes]]


class Member(Protocol):
    """What the group needs of a stream."""

    #: Id of the last event the stream's client was sent; moved by the group.
    cursor: int
    #: Reactor time of the stream's last write.
    last_write: float

    @property
    def paused(self) -> bool:
        """The client is not taking what it was sent (its buffer is full)."""

    def send(self, data: bytes) -> None:
        """Send bytes to the client (the group records ``last_write``)."""


class Broadcaster:
    """The broadcast groups of one server process, one per followed channel."""

    def __init__(
        self,
        notifier: Notifier,
        reactor: IReactorTime,
        render: Render,
        heartbeat: float,
        keepalive: bytes,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.notifier = notifier
        self.reactor = reactor
        self.render = render
        self.heartbeat = heartbeat
        self.keepalive = keepalive
        self.flush_s = flush_s
        self._groups: dict[ChannelKey, _Group] = {}

    def groups(self) -> int:
        """Number of groups (for tests)."""
        return len(self._groups)

    def members(self) -> int:
        """Number of streams in a group (for tests)."""
        return sum(len(g.members) for g in self._groups.values())

    def join(self, context: str, channel: str, member: Member) -> defer.Deferred[bool] | None:
        """Add a caught-up stream to its channel's group.

        Returns a Deferred that fires when the member has left the group and
        must carry on by itself from its cursor: with True if it must read
        the store (retention deleted what follows the group's cursor), else
        False; cancelling it drops the member.  Returns None if the group is already past the
        member's cursor (the stream must read what it misses from the store).
        """
        key = (context, channel)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(self, key, member.cursor)
            left = group.add(member)
            group.start()  # may deliver at once: the member is in already
            return left
        if member.cursor < group.base:
            return None
        return group.add(member)

    def _dissolve(self, group: _Group) -> None:
        if self._groups.get(group.key) is group:
            del self._groups[group.key]


class _Group(Subscriber):
    """The members of one channel and the events known but not yet written.

    The group follows its channel in the notifier: ``cursor`` is the last
    event it received.  ``base`` is the id before the first pending frame;
    every member's cursor is at least ``base`` (a member joins only then,
    and the cursors move together), and most are exactly there, so one
    joined buffer serves them.
    """

    follows = True

    def __init__(self, owner: Broadcaster, key: ChannelKey, cursor: int) -> None:
        self.owner = owner
        self.key = key
        self.cursor: int | None = cursor
        self.base = cursor
        self.frames: list[bytes] = []
        #: Bytes in ``frames``.
        self.pending = 0
        self.members: dict[Member, defer.Deferred[bool]] = {}
        self._subscription: Subscription | None = None
        self._flush_call: IDelayedCall | None = None
        self._beat_call: IDelayedCall | None = None
        self._closed = False

    def start(self) -> None:
        self._subscription = self.owner.notifier.subscribe(self.key[0], self.key[1], self)

    def add(self, member: Member) -> defer.Deferred:
        d: defer.Deferred[bool] = defer.Deferred(lambda _: self._remove(member))
        self.members[member] = d
        due = member.last_write + self.owner.heartbeat
        if self._beat_call is None:
            self._beat_call = self.owner.reactor.callLater(
                max(0.0, due - self.owner.reactor.seconds()), self._beat
            )
        elif due < self._beat_call.getTime():
            self._beat_call.reset(max(0.0, due - self.owner.reactor.seconds()))
        return d

    # -- events ----------------------------------------------------------------
    def deliver(self, events: list[Event]) -> None:
        """The notifier's delivery: the events right after the last one known."""
        if self._closed:
            return
        frames = self.owner.render(self.key[0], self.key[1], events)
        self.frames.extend(frames)
        self.pending += sum(map(len, frames))
        if len(self.frames) >= FLUSH_EVENTS or self.pending >= FLUSH_BYTES:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self.owner.reactor.callLater(self.owner.flush_s, self._flush)

    def pruned(self, first_id: int) -> None:
        """Retention deleted what follows the group's cursor: every member
        goes back to its own loop, which reads the store and tells its client."""
        for member in list(self.members):
            self._leave(member, read_store=True)

    def _flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        left: list[Member] = []
        while self.frames and not self._closed:
            count, size = 1, len(self.frames[0])
            while (
                count < min(FLUSH_EVENTS, len(self.frames)) and size + len(self.frames[count]) <= FLUSH_BYTES
            ):
                size += len(self.frames[count])
                count += 1
            frames = self.frames[:count]
            del self.frames[:count]
            self._write(frames, left)
            del frames
        self.pending = sum(map(len, self.frames))
        for member in left:
            self._leave(member)

    def _write(self, frames: list[bytes], left: list[Member]) -> None:
        base = self.base
        last = base + len(frames)
        data = b"".join(frames)
        now = self.owner.reactor.seconds()
        for member in list(self.members):
            cursor = member.cursor
            if member.paused or cursor < base:
                if member not in left:
                    left.append(member)
                continue
            if cursor == base:
                member.send(data)
            elif cursor < last:
                # Joined ahead of the group (it had read the store itself).
                member.send(b"".join(frames[cursor - base :]))
            else:
                continue
            member.cursor = last
            member.last_write = now
        self.base = last

    # -- heart-beats -------------------------------------------------------------
    def _beat(self) -> None:
        self._beat_call = None
        reactor, heartbeat = self.owner.reactor, self.owner.heartbeat
        now = reactor.seconds()
        oldest = now
        left: list[Member] = []
        for member in list(self.members):
            if member.last_write + heartbeat <= now + _EPSILON_S:
                if member.paused:
                    # Its client takes nothing: it waits on its own.
                    left.append(member)
                    continue
                member.send(self.owner.keepalive)
                member.last_write = now
            oldest = min(oldest, member.last_write)
        for member in left:
            self._leave(member)
        if self.members:
            self._beat_call = reactor.callLater(max(0.0, oldest + heartbeat - reactor.seconds()), self._beat)

    # -- members leaving -----------------------------------------------------------
    def _leave(self, member: Member, read_store: bool = False) -> None:
        """The member goes back to its own loop (its Deferred fires)."""
        d = self.members.pop(member, None)
        if not self.members:
            self._close()
        if d is not None:
            d.callback(read_store)

    def _remove(self, member: Member) -> None:
        """Canceller of a member's Deferred (its client went away); never raises."""
        try:
            self.members.pop(member, None)
            if not self.members:
                self._close()
        except Exception:
            log.failure("dropping a broadcast member failed")

    def _close(self) -> None:
        """No members left: stop following, drop timers and pending frames."""
        if self._closed:
            return
        self._closed = True
        self.owner._dissolve(self)
        if self._subscription is not None:
            self._subscription.cancel()
        for call in (self._flush_call, self._beat_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._beat_call = None
        self.frames = []
        self.pending = 0
