"""Notifier unit tests: a fake store and a fake clock, no database, no network.

The fake store answers ``first_after`` at once (from its dict of events) and
lets a test hold ``events_by_id`` or ``page`` open or make it fail, so reads in flight,
notifications racing them, and database outages can be staged exactly.
"""
from __future__ import annotations

from typing import Iterable, Optional

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from eventbus.errors import Unavailable
from eventbus.model import Event
from eventbus.notifier import WAKE_RETRY_S, Notifier, Subscriber, Wake, WakeKind
from eventbus.storage.notify import Notification, decode
from eventbus.storage.pages import Page

CTX = "ctx"


def ev(event_id: int) -> Event:
    return Event(event_id, 1700000000.0 + event_id, "tests", '{"n": %d}' % event_id)


class FakeStore:
    """Records every read; ``events_by_id`` can be gated or made to fail."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], dict[int, Event]] = {}
        self.first_after_calls: list[tuple[str, str, int]] = []
        self.by_id_calls: list[tuple[str, str, frozenset[int]]] = []
        #: (channel, after) of every page read (the followers' reads).
        self.page_calls: list[tuple[str, int]] = []
        #: When set, events_by_id waits for this Deferred before answering.
        self.gate: Optional[defer.Deferred] = None
        #: This many next events_by_id calls raise Unavailable.
        self.failures = 0
        #: When set, first_after answers what it saw when it was called, but
        #: only once this Deferred fires (a read in flight across a commit).
        self.first_after_gate: Optional[defer.Deferred] = None

    def add(self, channel: str, *ids: int) -> None:
        chan = self.events.setdefault((CTX, channel), {})
        for i in ids:
            chan[i] = ev(i)

    async def first_after(self, context: str, channel: str, cursor: int) -> Optional[Event]:
        self.first_after_calls.append((context, channel, cursor))
        seen = self.events.get((context, channel), {}).get(cursor + 1)
        if self.first_after_gate is not None:
            gate, self.first_after_gate = self.first_after_gate, None
            await gate
        return seen

    async def events_by_id(self, context: str, channel: str, ids: Iterable[int],
                           ahead: Iterable[int] = ()) -> dict[int, Event]:
        wanted = frozenset(ids) | frozenset(ahead)
        self.by_id_calls.append((context, channel, wanted))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate
        if self.failures:
            self.failures -= 1
            raise Unavailable("database unavailable")
        chan = self.events.get((context, channel), {})
        return {i: chan[i] for i in wanted if i in chan}

    async def page(self, context: str, channel: str, after: int, upto: int,
                   limit: int) -> Page:
        self.page_calls.append((channel, after))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate
        if self.failures:
            self.failures -= 1
            raise Unavailable("database unavailable")
        chan = self.events.get((context, channel), {})
        found = [chan[i] for i in sorted(chan) if after < i <= upto]
        return Page(found[:limit], cut=len(found) > limit)

    def reads_of(self, channel: str) -> list[frozenset[int]]:
        return [ids for (_, ch, ids) in self.by_id_calls if ch == channel]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def notifier(clock: Clock, store: FakeStore) -> Notifier:
    return Notifier(clock, store)  # type: ignore[arg-type]


def wait(notifier: Notifier, channel: str, cursor: int, timeout: float = 30.0) -> defer.Deferred:
    return defer.ensureDeferred(notifier.next_event(CTX, channel, cursor, timeout))


def result_of(d: defer.Deferred) -> object:
    """The value a Deferred has fired with (fails the test if it has not)."""
    results: list = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    value = results[0]
    if isinstance(value, defer.Failure):
        value.raiseException()
    return value


def test_existing_event_is_returned_at_once_without_holding_a_waiter(notifier, store):
    store.add("a", 1, 2)
    d = wait(notifier, "a", 1)
    assert result_of(d) == ev(2)
    assert notifier.waiting() == 0
    assert store.by_id_calls == []


def test_a_publish_during_the_waiters_first_read_still_wakes_it(notifier, store):
    """The waiter's own read of the store started before the commit and
    answers "nothing yet"; the notification arrived while that read was in
    flight.  Only a waiter registered *before* its read hears it: one
    registered after would wait for a notification that has come and gone."""
    gate = store.first_after_gate = defer.Deferred()
    d = wait(notifier, "a", 0, timeout=60)
    assert store.first_after_calls == [(CTX, "a", 0)]
    store.add("a", 1)  # commits while the read is in flight ...
    notifier.notify(CTX, "a", 1)  # ... and is announced before it answers
    gate.callback(None)  # the read answers what it saw: nothing
    assert result_of(d) == ev(1)
    assert notifier.waiting() == 0


def test_many_waiters_on_one_channel_are_answered_by_one_read(notifier, store):
    waiters = [wait(notifier, "a", 0) for _ in range(50)]
    waiters += [wait(notifier, "a", 1) for _ in range(10)]
    assert notifier.waiting() == 60
    assert not any(d.called for d in waiters)
    store.add("a", 1, 2)
    notifier.notify(CTX, "a", 2)
    assert store.reads_of("a") == [frozenset({1, 2})]
    assert [result_of(d) for d in waiters] == [ev(1)] * 50 + [ev(2)] * 10
    assert notifier.waiting() == 0


def test_notify_for_one_channel_neither_reads_nor_wakes_another(notifier, store):
    a = wait(notifier, "a", 0)
    b = wait(notifier, "b", 0)
    store.add("a", 1)
    store.add("b", 1)  # exists, but nobody said so: b must stay untouched
    notifier.notify(CTX, "a", 1)
    assert result_of(a) == ev(1)
    assert not b.called
    assert store.reads_of("b") == []
    assert notifier.waiting() == 1


def test_notify_for_a_channel_nobody_waits_on_reads_nothing(notifier, store):
    notifier.notify(CTX, "nobody", 5)
    assert store.by_id_calls == []


def test_notify_below_the_waiters_cursor_reads_nothing(notifier, store):
    d = wait(notifier, "a", 5)
    notifier.notify(CTX, "a", 5)
    assert store.by_id_calls == []
    assert not d.called


def test_timeout_fires_none_at_the_clock_time_and_frees_the_waiter(notifier, clock):
    d = wait(notifier, "a", 0, timeout=7.5)
    clock.advance(7.4)
    assert not d.called
    assert notifier.waiting() == 1
    clock.advance(0.1)
    assert result_of(d) is None
    assert notifier.waiting() == 0
    assert clock.getDelayedCalls() == []


def test_cancelling_a_waiter_removes_it_at_once(notifier, clock, store):
    d1 = wait(notifier, "a", 0)
    d2 = wait(notifier, "a", 0)
    assert notifier.waiting() == 2
    d1.cancel()  # what Klein does when the client disconnects
    failures: list = []
    d1.addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)
    assert notifier.waiting() == 1
    d2.cancel()
    d2.addErrback(lambda f: f.trap(defer.CancelledError))
    assert notifier.waiting() == 0
    # Their timers went with them, and a later notify finds nobody to read for.
    assert clock.getDelayedCalls() == []
    notifier.notify(CTX, "a", 1)
    assert store.by_id_calls == []


def test_notify_during_a_read_causes_exactly_one_more_read(notifier, store):
    early = wait(notifier, "a", 0)
    late = wait(notifier, "a", 1)
    gate = store.gate = defer.Deferred()
    store.add("a", 1)
    notifier.notify(CTX, "a", 1)
    assert store.reads_of("a") == [frozenset({1})]
    # Two more events are announced while the first read is in flight.
    store.add("a", 2)
    notifier.notify(CTX, "a", 2)
    store.add("a", 3)
    notifier.notify(CTX, "a", 3)
    assert len(store.reads_of("a")) == 1, "a second read started concurrently"
    gate.callback(None)
    assert result_of(early) == ev(1)
    assert result_of(late) == ev(2)
    # The second read also fetches up to the announced head (3), so the
    # next consumer along finds it in memory.
    assert store.reads_of("a") == [frozenset({1}), frozenset({2, 3})]
    # Once done, the channel is idle again: a new notify reads anew.
    again = wait(notifier, "a", 3)
    store.add("a", 4)
    notifier.notify(CTX, "a", 4)
    assert result_of(again) == ev(4)
    assert len(store.reads_of("a")) == 3


def test_resync_reads_every_channel_with_waiters(notifier, store):
    a = wait(notifier, "a", 0)
    b = wait(notifier, "b", 3)
    c = wait(notifier, "c", 0)
    # Events committed while notifications were lost: only a and b have one.
    store.add("a", 1)
    store.add("b", 1, 2, 3, 4)
    notifier.resync()
    assert sorted(ch for (_, ch, _) in store.by_id_calls) == ["a", "b", "c"]
    assert store.reads_of("b") == [frozenset({4})]
    assert result_of(a) == ev(1)
    assert result_of(b) == ev(4)
    assert not c.called
    assert notifier.waiting() == 1


def test_failed_wake_up_read_is_retried_later_and_then_wakes(notifier, store, clock):
    d = wait(notifier, "a", 0, timeout=60)
    store.add("a", 1)
    store.failures = 1
    notifier.notify(CTX, "a", 1)
    assert len(store.reads_of("a")) == 1
    assert not d.called
    assert notifier.waiting() == 1
    clock.advance(WAKE_RETRY_S / 2)
    assert len(store.reads_of("a")) == 1, "retried without waiting"
    clock.advance(WAKE_RETRY_S)
    assert len(store.reads_of("a")) == 2
    assert result_of(d) == ev(1)
    assert notifier.waiting() == 0


def test_notify_during_a_failing_read_is_not_lost(notifier, store, clock):
    first = wait(notifier, "a", 0, timeout=60)
    second = wait(notifier, "a", 1, timeout=60)
    gate = store.gate = defer.Deferred()
    store.failures = 1
    store.add("a", 1)
    notifier.notify(CTX, "a", 1)
    assert store.reads_of("a") == [frozenset({1})]
    store.add("a", 2)
    notifier.notify(CTX, "a", 2)  # announced while the doomed read is in flight
    gate.callback(None)  # ... and it fails
    assert not first.called and not second.called
    clock.advance(WAKE_RETRY_S)
    assert store.reads_of("a")[1:] == [frozenset({1, 2})]
    assert result_of(first) == ev(1)
    assert result_of(second) == ev(2)


def test_malformed_notification_payloads_decode_to_nothing():
    for payload in ("", "garbage", "ctx/a/notanumber", "noslash/3", "ctx/a/-1"):
        assert decode(payload) is None
    assert decode("ctx/a/b/7", pid=3) == Notification("ctx", "a/b", 7, 3)


def test_a_notification_wakes_its_channel(notifier, store):
    d = wait(notifier, "a", 0)
    store.add("a", 1)
    notifier.on_notification(decode(f"{CTX}/a/1"))
    assert result_of(d) == ev(1)


# -- wake-up subscribers (consumers' next, webhook delivery) ---------------------------
class Told(Subscriber):
    def __init__(self) -> None:
        self.wakes: list[Wake] = []

    def woken(self, wake: Wake) -> None:
        self.wakes.append(wake)


def test_wake_up_subscribers_are_told_what_happened_to_their_channel(notifier, store):
    told, other = Told(), Told()
    notifier.subscribe(CTX, "a", told)
    notifier.subscribe(CTX, "b", other)
    notifier.notify(CTX, "a", 3)
    notifier.on_notification(decode(f"{CTX}/a/0"))  # a consumer's state changed
    notifier.resync()
    assert told.wakes == [Wake(WakeKind.PUBLISHED, "a", 3), Wake(WakeKind.CHANGED, "a"),
                          Wake(WakeKind.RESYNC, "a")]
    assert other.wakes == [Wake(WakeKind.RESYNC, "b")]
    # wake-ups only: the notifier reads nothing for them
    assert store.by_id_calls == [] and store.page_calls == []


def test_a_context_wide_subscriber_hears_every_channel_of_its_context_only(notifier):
    told = Told()
    subscription = notifier.subscribe(CTX, None, told)
    notifier.notify(CTX, "a", 1)
    notifier.notify(CTX, "b", 2)
    notifier.notify("elsewhere", "a", 5)
    notifier.resync()
    assert told.wakes == [Wake(WakeKind.PUBLISHED, "a", 1), Wake(WakeKind.PUBLISHED, "b", 2),
                          Wake(WakeKind.RESYNC, None)]
    subscription.cancel()
    subscription.cancel()  # idempotent
    notifier.notify(CTX, "a", 2)
    assert len(told.wakes) == 3
    assert not notifier._contexts


def test_the_echo_of_an_own_commit_is_skipped_but_a_state_change_never_is(clock, store):
    notifier = Notifier(clock, store, own_pids=lambda: frozenset({42}))
    told = Told()
    notifier.subscribe(CTX, "a", told)
    notifier.on_notification(decode(f"{CTX}/a/5", pid=42))  # our own publish, announced at commit
    notifier.on_notification(decode(f"{CTX}/a/0", pid=42))
    notifier.on_notification(decode(f"{CTX}/a/6", pid=7))  # another process's publish
    assert told.wakes == [Wake(WakeKind.CHANGED, "a"), Wake(WakeKind.PUBLISHED, "a", 6)]


# -- followers (the SSE broadcast groups) ----------------------------------------------
class Followed(Subscriber):
    """A follower's deliveries, as ids per call."""

    follows = True

    def __init__(self, notifier: Notifier, channel: str, cursor: int) -> None:
        self.cursor = cursor
        self.calls: list[list[int]] = []
        self.stop = notifier.subscribe(CTX, channel, self).cancel

    def deliver(self, events: list[Event]) -> None:
        self.calls.append([e.id for e in events])

    @property
    def ids(self) -> list[int]:
        return [i for call in self.calls for i in call]


def test_a_new_follower_reads_the_store_once_for_what_committed_before_it(notifier, store):
    store.add("a", 1, 2, 3)
    f = Followed(notifier, "a", 1)
    assert store.page_calls == [("a", 1)]
    assert f.calls == [[2, 3]]
    assert notifier.following() == 1


def test_local_publishes_reach_a_follower_in_order_without_store_reads(notifier, store):
    f = Followed(notifier, "a", 0)
    reads = len(store.page_calls) + len(store.by_id_calls)
    for i in range(1, 4):
        store.add("a", i)
        notifier.published(CTX, "a", [ev(i)])
    store.add("a", 4, 5)
    notifier.published(CTX, "a", [ev(4), ev(5)])
    assert f.calls == [[1], [2], [3], [4, 5]]
    assert len(store.page_calls) + len(store.by_id_calls) == reads


def test_one_read_per_notification_feeds_the_follower_and_the_waiters(notifier, store):
    f = Followed(notifier, "a", 0)
    w = wait(notifier, "a", 0)
    store.add("a", 1, 2)
    notifier.notify(CTX, "a", 2)
    assert store.reads_of("a") == [frozenset({1, 2})]
    assert store.page_calls == [("a", 0)]  # only the follower's first read
    assert result_of(w) == ev(1)
    assert f.ids == [1, 2]


def test_a_follower_behind_more_than_the_tail_is_fed_page_by_page(notifier, store):
    f = Followed(notifier, "a", 0)
    ids = list(range(1, 1001))
    store.add("a", *ids)
    # One big batch published here: the tail keeps only its end.
    notifier.published(CTX, "a", [ev(i) for i in ids])
    assert f.ids == ids
    assert len(store.page_calls) > 2


def test_a_notification_never_makes_a_follower_skip_or_repeat(notifier, store):
    f = Followed(notifier, "a", 0)
    store.add("a", 1, 2, 3)
    notifier.notify(CTX, "a", 2)  # announced before 3 exists in anyone's memory
    notifier.notify(CTX, "a", 3)
    notifier.notify(CTX, "a", 1)  # late, out of order
    notifier.notify(CTX, "a", 3)  # twice
    assert f.ids == [1, 2, 3]


def test_a_failed_follower_read_is_retried_and_nothing_is_lost(notifier, store, clock):
    f = Followed(notifier, "a", 0)
    store.failures = 1
    store.add("a", 1, 2)
    notifier.notify(CTX, "a", 2)
    assert f.ids == []
    clock.advance(WAKE_RETRY_S)
    assert f.ids == [1, 2]


def test_resync_reads_for_followers(notifier, store):
    f = Followed(notifier, "a", 0)
    store.add("a", 1, 2)  # committed while notifications were lost
    notifier.resync()
    assert f.ids == [1, 2]


def test_unfollow_stops_deliveries_and_forgets_the_channel(notifier, store, clock):
    f = Followed(notifier, "a", 0)
    f.stop()
    assert notifier.following() == 0
    assert notifier._channels == {}
    store.add("a", 1)
    notifier.notify(CTX, "a", 1)
    notifier.published(CTX, "a", [ev(1)])
    assert f.ids == []
    assert store.page_calls == [("a", 0)]
    assert clock.getDelayedCalls() == []


def test_unfollow_during_a_read_drops_its_result(notifier, store):
    gate = store.gate = defer.Deferred()
    store.add("a", 1)
    f = Followed(notifier, "a", 0)
    f.stop()
    gate.callback(None)
    assert f.ids == []
    assert notifier.following() == 0
    assert notifier._channels == {}


def test_a_channel_held_by_every_kind_of_subscriber_is_forgotten_once_each_has_left(notifier, store):
    told = Told()
    signal = notifier.subscribe(CTX, "a", told)
    waiter = wait(notifier, "a", 0)
    follower = Followed(notifier, "a", 0)
    lone = wait(notifier, "b", 0)  # a channel of one long poll: one group of three in use
    assert notifier.waiting() == 2 and notifier.following() == 1
    signal.cancel()
    waiter.cancel()
    waiter.addErrback(lambda f: f.trap(defer.CancelledError))
    assert notifier.waiting() == 1 and notifier.following() == 1
    assert (CTX, "a") in notifier._channels  # the follower still holds it
    follower.stop()
    assert (CTX, "a") not in notifier._channels
    # the other channel never shared a member with this one
    store.add("b", 1)
    notifier.notify(CTX, "b", 1)
    assert result_of(lone) == ev(1)
    assert notifier._channels == {} and told.wakes == []
