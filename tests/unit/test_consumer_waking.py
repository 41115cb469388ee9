"""When a held-open ``next`` runs another leasing round: no database, a Clock."""
from __future__ import annotations

from typing import Optional

from twisted.internet import defer, task

from eventbus.consumers import Consumers
from eventbus.model import Backlog, Event, Leased, LeaseOutcome
from eventbus.notifier import Notifier
from eventbus.storage.notify import decode

CTX, CH = "ctx", "ch"


class ScriptedStore:
    """Answers leasing rounds from a script; records how many were run."""

    def __init__(self, *outcomes: LeaseOutcome) -> None:
        self.outcomes = list(outcomes)
        self.rounds = 0

    async def lease(self, *args: object) -> LeaseOutcome:
        self.rounds += 1
        return self.outcomes.pop(0)

    async def event(self, context: str, channel: str, event_id: int) -> Event:
        return Event(event_id, 0.0, "tests", "{}")


def nothing(head: int = 1, blocked: bool = False,
            next_change_s: Optional[float] = None) -> LeaseOutcome:
    if blocked:  # ordered, event 1 in flight
        b = Backlog(mode="ordered", next_new=2, head=head, in_flight=1, first_pending=1,
                    first_ready=None, next_change_s=next_change_s)
    else:  # caught up
        b = Backlog(mode="ordered", next_new=head + 1, head=head, in_flight=0, first_pending=None,
                    first_ready=None, next_change_s=next_change_s)
    return LeaseOutcome(b, None)


def leased(event_id: int = 2) -> LeaseOutcome:
    return LeaseOutcome(nothing()[0], Leased(event_id=event_id, token=f"{event_id}.t", deliveries=1))


def start(*outcomes: LeaseOutcome, timeout: float = 60):
    clock = task.Clock()
    notifier = Notifier(clock, None)  # type: ignore[arg-type]
    store = ScriptedStore(*outcomes)
    consumers = Consumers(clock, store, store, notifier)  # type: ignore[arg-type]
    d = defer.ensureDeferred(consumers.next(CTX, CH, "c", timeout))
    return clock, notifier, store, consumers, d


def test_a_blocked_waiter_ignores_new_events_but_wakes_for_a_state_change():
    clock, notifier, store, consumers, d = start(nothing(head=1, blocked=True), leased())
    assert store.rounds == 1 and not d.called
    notifier.notify(CTX, CH, 2)  # a publish: cannot be leased while blocked
    notifier.notify(CTX, CH, 3)
    assert store.rounds == 1 and not d.called
    notifier.on_notification(decode(f"{CTX}/{CH}/0"))  # an ack, nack, retry or PUT
    assert store.rounds == 2
    assert d.result.event.id == 2
    assert consumers.waiting() == 0 and not notifier._channels


def test_a_caught_up_waiter_wakes_for_a_publish_but_not_for_an_echo():
    clock, notifier, store, consumers, d = start(nothing(head=1), leased())
    notifier.notify(CTX, CH, 1)  # what the round has already seen
    assert store.rounds == 1
    notifier.notify(CTX, CH, 2)
    assert store.rounds == 2 and d.called


def test_announcements_during_a_round_are_judged_after_it():
    rounds = []

    class Racing(ScriptedStore):
        async def lease(self, *args: object) -> LeaseOutcome:
            outcome = await super().lease(*args)
            rounds.append(self.rounds)
            if self.rounds == 1:  # a publish commits while the round reads
                notifier.notify(CTX, CH, 2)
            if self.rounds == 2:  # an old echo, then an ack
                notifier.notify(CTX, CH, 1)
                notifier.on_notification(decode(f"{CTX}/{CH}/0"))
            return outcome

    clock = task.Clock()
    notifier = Notifier(clock, None)  # type: ignore[arg-type]
    store = Racing(nothing(head=1), nothing(head=2, blocked=True), leased(3))
    d = defer.ensureDeferred(Consumers(clock, store, store, notifier).next(CTX, CH, "c", 60))  # type: ignore[arg-type]
    assert rounds == [1, 2, 3] and d.called


def test_a_waiter_retries_when_the_earliest_lease_expires():
    clock, notifier, store, consumers, d = start(
        nothing(blocked=True, next_change_s=10), leased())
    clock.advance(9.9)
    assert store.rounds == 1
    clock.advance(0.2)
    assert store.rounds == 2 and d.called


def test_a_resync_after_a_listen_outage_wakes_even_a_blocked_waiter():
    clock, notifier, store, consumers, d = start(nothing(blocked=True), leased())
    notifier.resync()
    assert store.rounds == 2 and d.called


def test_timeout_answers_none_after_a_last_round():
    clock, notifier, store, consumers, d = start(nothing(), nothing(), timeout=5)
    clock.advance(5)
    assert store.rounds == 2
    assert d.called and d.result is None
    assert not clock.getDelayedCalls()


def test_a_cancelled_request_leaves_no_waiter_or_watcher_behind():
    clock, notifier, store, consumers, d = start(nothing(blocked=True, next_change_s=10))
    d.cancel()
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    assert consumers.waiting() == 0 and not notifier._channels
    assert not clock.getDelayedCalls()


def test_rounds_queued_behind_a_hung_database_each_get_their_503_in_time():
    """Leasing rounds of one consumer queue on a local lock; while the
    database hangs each round takes the store's whole timeout, so the queue
    must not add one timeout per request ahead of it."""
    from eventbus.errors import Unavailable
    from eventbus.storage.database import QUERY_TIMEOUT_S

    class HungStore(ScriptedStore):
        def lease(self, *args: object) -> defer.Deferred:
            self.rounds += 1
            return task.deferLater(clock, QUERY_TIMEOUT_S, self._fail)

        def _fail(self) -> None:
            raise Unavailable(f"database did not answer within {QUERY_TIMEOUT_S:g} s")

    clock = task.Clock()
    notifier = Notifier(clock, None)  # type: ignore[arg-type]
    consumers = Consumers(clock, HungStore(), HungStore(), notifier)  # type: ignore[arg-type]
    requests = [defer.ensureDeferred(consumers.next(CTX, CH, "c", 60)) for _ in range(5)]
    failures: list = []
    for d in requests:
        d.addErrback(failures.append)
    for _ in range(int(2 * QUERY_TIMEOUT_S / 0.5) + 1):  # without the bound: 25 s
        clock.advance(0.5)
    assert len(failures) == 5 and all(f.check(Unavailable) for f in failures)
    assert consumers.waiting() == 0 and not notifier._channels and not consumers._locks
    assert not clock.getDelayedCalls()
