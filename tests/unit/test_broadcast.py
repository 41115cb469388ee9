"""Broadcast group unit tests: a fake notifier, fake members, a fake clock.

The notifier's side (following a channel, in order, from the store when
needed) is tested in tests/unit/test_notifier.py; here the group's own rules: one
rendering per event, one write per member per flush, a member gets exactly
the events after its cursor, a paused member leaves, a cancelled one is
dropped at once, and keep-alives go to members silent for ``heartbeat``.
"""
from __future__ import annotations

from typing import Callable, Optional

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from eventbus.http.broadcast import FLUSH_BYTES, FLUSH_EVENTS, FLUSH_S, Broadcaster
from eventbus.model import Event
from eventbus.notifier import Subscriber

CTX, CHAN = "ctx", "chan"
HEARTBEAT_S = 10.0
KEEPALIVE = b": keepalive\n\n"


def ev(event_id: int) -> Event:
    return Event(event_id, 1700000000.0, "tests", "{}")


class FakeNotifier:
    """Records subscriptions; :meth:`publish` delivers to the follower."""

    def __init__(self) -> None:
        self.deliver: Optional[Callable[[list[Event]], None]] = None
        self.follows: list[tuple[str, str, int]] = []

    def subscribe(self, context: str, channel: str, subscriber: Subscriber) -> object:
        assert subscriber.follows and subscriber.cursor is not None
        self.follows.append((context, channel, subscriber.cursor))
        self.deliver = subscriber.deliver
        notifier = self

        class Cancel:
            def cancel(self) -> None:
                notifier.deliver = None

        return Cancel()

    def publish(self, *ids: int) -> None:
        assert self.deliver is not None, "nobody follows"
        self.deliver([ev(i) for i in ids])


class FakeMember:
    def __init__(self, clock: Clock, cursor: int) -> None:
        self.clock = clock
        self.cursor = cursor
        self.last_write = clock.seconds()
        self.paused = False
        self.writes: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.writes.append(data)

    @property
    def ids(self) -> list[int]:
        return [int(part) for w in self.writes for part in w.split(b"|") if part.isdigit()]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def notifier() -> FakeNotifier:
    return FakeNotifier()


@pytest.fixture
def rendered() -> list[int]:
    return []


@pytest.fixture
def broadcaster(clock: Clock, notifier: FakeNotifier, rendered: list[int]) -> Broadcaster:
    def render(context: str, channel: str, events: list[Event]) -> list[bytes]:
        rendered.extend(e.id for e in events)
        return [b"%d|" % e.id for e in events]

    return Broadcaster(notifier, clock, render, HEARTBEAT_S, KEEPALIVE)  # type: ignore[arg-type]


def join(broadcaster: Broadcaster, member: FakeMember) -> defer.Deferred:
    d = broadcaster.join(CTX, CHAN, member)
    assert d is not None
    return d


def test_events_within_the_window_are_rendered_once_and_written_once_per_member(
        broadcaster, notifier, clock, rendered):
    members = [FakeMember(clock, 0) for _ in range(5)]
    for m in members:
        join(broadcaster, m)
    assert notifier.follows == [(CTX, CHAN, 0)]  # one follower for the group
    notifier.publish(1)
    notifier.publish(2, 3)
    assert all(m.writes == [] for m in members)
    clock.advance(FLUSH_S)
    assert rendered == [1, 2, 3]
    for m in members:
        assert m.writes == [b"1|2|3|"]
        assert m.cursor == 3
    notifier.publish(4)
    clock.advance(FLUSH_S)
    assert all(m.ids == [1, 2, 3, 4] for m in members)


def test_a_member_gets_exactly_the_events_after_its_cursor(broadcaster, notifier, clock):
    first = FakeMember(clock, 0)
    join(broadcaster, first)
    notifier.publish(1, 2)
    clock.advance(FLUSH_S)
    # Read ahead of the group by itself (from the store): only what it lacks.
    ahead = FakeMember(clock, 3)
    join(broadcaster, ahead)
    # Behind the group: it cannot join, it reads from the store.
    assert broadcaster.join(CTX, CHAN, FakeMember(clock, 1)) is None
    notifier.publish(3, 4)
    clock.advance(FLUSH_S)
    notifier.publish(5)
    clock.advance(FLUSH_S)
    assert first.ids == [1, 2, 3, 4, 5]
    assert ahead.ids == [4, 5]


def test_a_paused_member_leaves_without_being_written_to(broadcaster, notifier, clock):
    slow, fast = FakeMember(clock, 0), FakeMember(clock, 0)
    left = join(broadcaster, slow)
    join(broadcaster, fast)
    notifier.publish(1)
    clock.advance(FLUSH_S)
    slow.paused = True  # its client stopped reading
    notifier.publish(2)
    clock.advance(FLUSH_S)
    assert left.called  # back to its own loop, from its cursor
    assert slow.ids == [1] and slow.cursor == 1
    notifier.publish(3)
    clock.advance(FLUSH_S)
    assert slow.ids == [1]
    assert fast.ids == [1, 2, 3]
    assert broadcaster.members() == 1


def test_a_large_delivery_is_written_in_slices_and_stops_at_a_pause(broadcaster, notifier, clock):
    member = FakeMember(clock, 0)
    left = join(broadcaster, member)
    original = member.send

    def send(data: bytes) -> None:
        original(data)
        member.paused = True  # the first slice fills the client's buffer

    member.send = send  # type: ignore[method-assign]
    notifier.publish(*range(1, 3 * FLUSH_EVENTS + 1))
    assert member.ids == list(range(1, FLUSH_EVENTS + 1))
    assert member.cursor == FLUSH_EVENTS
    assert left.called


def test_cancelling_the_last_member_dissolves_the_group(broadcaster, notifier, clock):
    members = [FakeMember(clock, 0) for _ in range(2)]
    joined = [join(broadcaster, m) for m in members]
    notifier.publish(1)  # a flush is pending
    for d in joined:
        d.cancel()  # what the client's disconnect does to the handler
        d.addErrback(lambda f: f.trap(defer.CancelledError))
    assert broadcaster.members() == 0
    assert broadcaster.groups() == 0
    assert notifier.deliver is None  # unfollowed
    assert clock.getDelayedCalls() == []
    assert all(m.writes == [] for m in members)
    # A new stream starts a new group, following from its own cursor.
    join(broadcaster, FakeMember(clock, 1))
    assert notifier.follows[-1] == (CTX, CHAN, 1)


def test_keepalives_go_only_to_members_silent_for_the_heartbeat(broadcaster, notifier, clock):
    early = FakeMember(clock, 0)
    join(broadcaster, early)
    clock.advance(HEARTBEAT_S / 2)
    late = FakeMember(clock, 0)  # wrote its opening just now
    join(broadcaster, late)
    clock.advance(HEARTBEAT_S / 2)
    assert early.writes == [KEEPALIVE] and late.writes == []
    clock.advance(HEARTBEAT_S / 2)
    assert late.writes == [KEEPALIVE] and early.writes == [KEEPALIVE]
    # An event resets everyone's silence.
    notifier.publish(1)
    clock.advance(FLUSH_S)
    clock.advance(HEARTBEAT_S - FLUSH_S * 2)
    assert early.writes[-1] == b"1|" and late.writes[-1] == b"1|"
    clock.advance(FLUSH_S * 2)
    assert early.writes[-1] == KEEPALIVE and late.writes[-1] == KEEPALIVE
    # One timer for the whole group, not one per member.
    assert len(clock.getDelayedCalls()) == 1


def test_a_member_silent_longer_than_the_group_gets_its_keepalive_on_time(
        broadcaster, notifier, clock):
    fresh = FakeMember(clock, 0)
    stale = FakeMember(clock, 0)
    clock.advance(HEARTBEAT_S * 0.9)
    fresh.last_write = clock.seconds()
    join(broadcaster, fresh)
    join(broadcaster, stale)  # silent for 0.9 heartbeat already
    clock.advance(HEARTBEAT_S * 0.1)
    assert stale.writes == [KEEPALIVE] and fresh.writes == []


def test_large_events_are_written_a_byte_budget_at_a_time_and_never_pile_up(clock, notifier):
    """Frames of a third of the budget each: a group holds at most a budget
    pending, writes at most a budget at a time (or one event, if larger),
    and a member that stops reading gets nothing after the write that
    filled its buffer."""
    size = FLUSH_BYTES // 3

    def render(context: str, channel: str, events: list[Event]) -> list[bytes]:
        return [(b"%d|" % e.id).ljust(size - 1, b"_") + b"|" for e in events]

    broadcaster = Broadcaster(notifier, clock, render, HEARTBEAT_S, KEEPALIVE)  # type: ignore[arg-type]
    reader, stalled = FakeMember(clock, 0), FakeMember(clock, 0)
    join(broadcaster, reader)
    left = join(broadcaster, stalled)
    original = stalled.send

    def send(data: bytes) -> None:
        original(data)
        stalled.paused = True

    stalled.send = send  # type: ignore[method-assign]
    for i in range(1, 11):
        notifier.publish(i)
    clock.advance(FLUSH_S)
    assert reader.ids == list(range(1, 11))
    assert all(len(w) <= FLUSH_BYTES for w in reader.writes)
    assert len(reader.writes) >= 4
    assert stalled.ids == [1, 2, 3] and left.called
    huge = Broadcaster(notifier, clock, lambda c, ch, evs: [b"%d|" % e.id + b"_" * 2 * FLUSH_BYTES + b"|" for e in evs],
                       HEARTBEAT_S, KEEPALIVE)  # type: ignore[arg-type]
    one = FakeMember(clock, 0)
    join(huge, one)
    notifier.publish(1, 2)
    assert one.ids == [1, 2] and len(one.writes) == 2  # one event a write, at once
