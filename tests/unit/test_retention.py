"""Retention's rules and its pruner, and the notifier's side of expired
cursors: fakes and a fake clock, no database, no network.

The rules: a channel's effective policy, the bounds of a setting, the
options.  The pruner: batches, leases it must not cross, the lease that
makes one process prune, the hook for more prune steps.  The notifier: a
waiter whose next event was deleted is told (an event past the gap, or
:class:`Pruned`), and a follower that meets a gap is told and never spins.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage

from eventbus.config import Options
from eventbus.errors import InvalidInput, Unavailable
from eventbus.model import Event, Pruned, Retention
from eventbus.notifier import Notifier, Subscriber
from eventbus.retention import (
    FROM_CHANNEL,
    FROM_SERVER,
    MAX_MAX_AGE_S,
    Pruner,
    check_max_age,
    check_max_events,
    effective,
)
from eventbus.storage.pages import Page
from eventbus.storage.retention import Due

CTX = "ctx"


# -- the rules ---------------------------------------------------------------------------
@pytest.mark.parametrize("settings, defaults, policy, source", [
    (Retention(), Retention(), Retention(), {"max_age": FROM_SERVER, "max_events": FROM_SERVER}),
    (Retention(), Retention(60, 10), Retention(60, 10), {"max_age": FROM_SERVER, "max_events": FROM_SERVER}),
    (Retention(5, None), Retention(60, 10), Retention(5, 10), {"max_age": FROM_CHANNEL, "max_events": FROM_SERVER}),
    (Retention(None, 3), Retention(60, None), Retention(60, 3), {"max_age": FROM_SERVER, "max_events": FROM_CHANNEL}),
    (Retention(7, 8), Retention(), Retention(7, 8), {"max_age": FROM_CHANNEL, "max_events": FROM_CHANNEL}),
])
def test_each_value_of_a_channels_policy_is_its_own_else_the_servers(settings, defaults, policy, source):
    assert effective(settings, defaults) == (policy, source)


@pytest.mark.parametrize("value", [0, -1, 0.5, True, "60", None, [60], float("nan"), float("inf"),
                                   MAX_MAX_AGE_S + 1])
def test_a_max_age_below_a_second_or_not_a_number_is_refused(value):
    with pytest.raises(InvalidInput, match="max_age must be a number of seconds from 1"):
        check_max_age(value)


@pytest.mark.parametrize("value", [0, -5, 1.5, 0.0, 2.0**60, True, "10", None, 2**63])
def test_a_max_events_below_one_or_not_an_integer_is_refused(value):
    with pytest.raises(InvalidInput, match="max_events must be an integer from 1"):
        check_max_events(value)


def test_an_integral_float_is_an_integer_max_events():
    """JSON Schema counts 2.0 as an integer (issue 11: the OpenAPI document says integer)."""
    assert check_max_events(2.0) == 2 and type(check_max_events(2.0)) is int


def test_good_values_pass_unchanged():
    assert check_max_age(1) == 1.0 and check_max_age(86400.5) == 86400.5
    assert check_max_events(1) == 1 and check_max_events(2**63 - 1) == 2**63 - 1


@pytest.mark.parametrize("args", [
    ["--retention-max-age", "0"], ["--retention-max-age", "-3"], ["--retention-max-age", "nan"],
    ["--retention-max-age", "x"], ["--retention-max-events", "0"], ["--retention-max-events", "1.5"],
    ["--retention-interval", "0"], ["--retention-interval", "60"],
])
def test_bad_retention_options_are_usage_errors(args):
    with pytest.raises((usage.UsageError, ValueError)):
        Options().parseOptions(args)


def test_retention_options_default_to_keeping_everything():
    options = Options()
    options.parseOptions([])
    assert options.settings().retention == Retention(None, None)
    options = Options()
    options.parseOptions(["--retention-max-age", "3600", "--retention-max-events", "100"])
    assert options.settings().retention == Retention(3600.0, 100)


# -- the pruner ----------------------------------------------------------------------------
class FakeRetentionStore:
    """Channels as (last id, pruned_to, target); a lease row; leases consumers hold."""

    def __init__(self) -> None:
        self.owner: Optional[str] = None
        self.targets: dict[str, int] = {}
        self.pruned_to: dict[str, int] = {}
        #: channel -> the lowest event a consumer holds on a lease
        self.held: dict[str, int] = {}
        self.prunes: list[tuple[str, int]] = []
        self.failures = 0

    async def lead(self, owner: str, lease_s: float) -> bool:
        if self.failures:
            self.failures -= 1
            raise Unavailable("database unavailable")
        if self.owner in (None, owner):
            self.owner = owner
            return True
        return False

    async def release(self, owner: str) -> None:
        if self.owner == owner:
            self.owner = None

    async def due(self, defaults: Retention) -> list[Due]:
        return [Due(n, CTX, ch, self.pruned_to.get(ch, 0), target)
                for n, (ch, target) in enumerate(sorted(self.targets.items()))
                if target > self.pruned_to.get(ch, 0)]

    async def prune(self, due: Due, upto: int) -> tuple[int, int]:
        self.prunes.append((due.channel, upto))
        before = self.pruned_to.get(due.channel, 0)
        if due.channel in self.held:
            upto = min(upto, self.held[due.channel] - 1)
        reached = max(before, upto)
        self.pruned_to[due.channel] = reached
        return reached, reached - before


def pruner(clock: Clock, store: FakeRetentionStore, batch: int = 1000) -> Pruner:
    p = Pruner(clock, store, Retention(), interval=10.0, batch=batch)  # type: ignore[arg-type]
    p.startService()
    return p


def test_a_round_deletes_in_batches_one_transaction_each_up_to_the_target():
    clock, store = Clock(), FakeRetentionStore()
    store.targets = {"a": 2500, "b": 10}
    pruner(clock, store)
    assert store.prunes == [("a", 1000), ("a", 2000), ("a", 2500), ("b", 10)]
    assert store.pruned_to == {"a": 2500, "b": 10}


def test_a_lease_held_by_a_consumer_stops_its_channel_below_it_and_the_others_go_on():
    clock, store = Clock(), FakeRetentionStore()
    store.targets = {"a": 500, "b": 300}
    store.held = {"a": 121}
    p = pruner(clock, store, batch=100)
    assert store.pruned_to == {"a": 120, "b": 300}
    assert store.prunes[:3] == [("a", 100), ("a", 200), ("b", 100)]  # no third batch for "a"
    del store.held["a"]  # acked
    clock.advance(p.interval)
    assert store.pruned_to["a"] == 500


def test_only_the_process_holding_the_lease_prunes_and_another_takes_over_when_it_stops():
    clock, store = Clock(), FakeRetentionStore()
    store.targets = {"a": 10}
    first = pruner(clock, store)
    assert first.leading and store.pruned_to == {"a": 10}
    second = pruner(clock, store)
    store.targets["a"] = 20
    prunes = len(store.prunes)
    clock.advance(0)  # the second's first round ran at start: it did nothing
    assert not second.leading and len(store.prunes) == prunes
    defer.ensureDeferred(first._stop())  # hands the lease back
    assert store.owner is None
    clock.advance(second.interval)
    assert second.leading and store.pruned_to == {"a": 20}


def test_more_prune_steps_run_after_the_events_in_order_and_only_while_leading():
    clock, store = Clock(), FakeRetentionStore()
    ran: list[str] = []

    def step(name: str) -> Any:
        async def run() -> int:
            ran.append(name)
            return 0
        return run

    p = Pruner(clock, store, Retention(), interval=10.0)  # type: ignore[arg-type]
    p.steps.append(step("idempotency keys"))
    p.steps.append(step("another"))
    store.owner = "someone else"
    p.startService()
    assert ran == []
    store.owner = None
    clock.advance(p.interval)
    assert ran == ["idempotency keys", "another"]


def test_a_round_that_meets_an_outage_is_logged_and_the_next_round_runs():
    clock, store = Clock(), FakeRetentionStore()
    store.failures = 1
    store.targets = {"a": 5}
    p = pruner(clock, store)
    assert store.pruned_to == {}
    clock.advance(p.interval)
    assert store.pruned_to == {"a": 5}


# -- the notifier: waiters and followers behind what is stored ---------------------------------
def ev(event_id: int) -> Event:
    return Event(event_id, 1700000000.0 + event_id, "tests", '{"n": %d}' % event_id)


class StoredRange:
    """One channel storing ``pruned_to + 1 .. last``, answering like the event store."""

    def __init__(self, last: int = 0, pruned_to: int = 0) -> None:
        self.last = last
        self.pruned_to = pruned_to
        self.page_calls = 0

    def stored(self, ids: Iterable[int]) -> list[int]:
        return [i for i in ids if self.pruned_to < i <= self.last]

    async def first_after(self, context: str, channel: str, cursor: int) -> Any:
        stored = self.stored(range(max(cursor + 1, self.pruned_to + 1), self.last + 1))
        if stored:
            return ev(stored[0])
        return Pruned(self.last + 1) if self.last > cursor else None

    async def events_by_id(self, context: str, channel: str, ids: Iterable[int],
                           ahead: Iterable[int] = ()) -> dict[int, Event]:
        return {i: ev(i) for i in self.stored(set(ids) | set(ahead))}

    async def page(self, context: str, channel: str, after: int, upto: int, limit: int) -> Page:
        self.page_calls += 1
        found = self.stored(range(after + 1, min(upto, self.last) + 1))
        return Page([ev(i) for i in found[:limit]], cut=len(found) > limit)


def _result(d: defer.Deferred) -> Any:
    out: list = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


def test_a_held_peek_whose_next_event_was_deleted_gets_the_first_stored_one_past_the_gap():
    clock, store = Clock(), StoredRange(last=5)
    notifier = Notifier(clock, store)  # type: ignore[arg-type]
    d = defer.ensureDeferred(notifier.next_event(CTX, "a", 5, 30.0))
    assert not d.called
    store.last, store.pruned_to = 10, 8  # 6..8 published and deleted before the wake-up read
    notifier.notify(CTX, "a", 10)
    assert _result(d) == ev(9)


def test_a_held_peek_whose_next_events_were_all_deleted_is_told_where_the_channel_goes_on():
    clock, store = Clock(), StoredRange(last=5)
    notifier = Notifier(clock, store)  # type: ignore[arg-type]
    d = defer.ensureDeferred(notifier.next_event(CTX, "a", 5, 30.0))
    store.last, store.pruned_to = 10, 10
    notifier.notify(CTX, "a", 10)
    assert _result(d) == Pruned(11)


def test_a_peek_behind_the_first_stored_event_is_answered_at_once_without_waiting():
    clock, store = Clock(), StoredRange(last=10, pruned_to=10)
    notifier = Notifier(clock, store)  # type: ignore[arg-type]
    assert _result(defer.ensureDeferred(notifier.next_event(CTX, "a", 3, 30.0))) == Pruned(11)
    assert notifier.waiting() == 0


class _Follower(Subscriber):
    follows = True

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.delivered: list[int] = []
        self.gaps: list[int] = []

    def deliver(self, events: list[Event]) -> None:
        self.delivered += [e.id for e in events]

    def pruned(self, first_id: int) -> None:
        self.gaps.append(first_id)


def test_a_follower_that_meets_a_gap_is_told_once_and_the_read_does_not_spin():
    clock, store = Clock(), StoredRange(last=300, pruned_to=150)
    notifier = Notifier(clock, store)  # type: ignore[arg-type]
    follower = _Follower(cursor=100)
    notifier.subscribe(CTX, "a", follower)
    assert follower.gaps == [151] and follower.delivered == []
    assert store.page_calls == 1


def test_a_broadcast_group_that_meets_a_gap_sends_its_members_back_to_read_the_store():
    from eventbus.http.broadcast import Broadcaster

    class Member:
        def __init__(self, cursor: int) -> None:
            self.cursor = cursor
            self.last_write = 0.0
            self.paused = False
            self.sent: list[bytes] = []

        def send(self, data: bytes) -> None:
            self.sent.append(data)

    clock, store = Clock(), StoredRange(last=100)
    notifier = Notifier(clock, store)  # type: ignore[arg-type]
    broadcaster = Broadcaster(notifier, clock, lambda c, ch, events: [b"x" for _ in events], 15.0, b"")
    member = Member(cursor=100)
    left = broadcaster.join(CTX, "a", member)
    assert left is not None and not left.called
    store.last, store.pruned_to = 300, 250  # published and deleted before the group read them
    notifier.notify(CTX, "a", 300)
    assert _result(left) is True  # read the store: that read tells its client
    assert member.sent == [] and member.cursor == 100 and broadcaster.groups() == 0
