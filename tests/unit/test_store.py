"""The event store without a database: a fake pool and a Clock."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from eventbus.errors import Unavailable
from eventbus.notifier import Notifier, Subscriber, Wake
from eventbus.storage.database import QUERY_TIMEOUT_S, Database
from eventbus.storage.events import EventStore
from eventbus.storage.notify import decode


class HeldPool:
    """Every query waits until the test answers it."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def runQuery(self, *args: object, **kwargs: object) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    def backend_pids(self) -> frozenset[int]:
        return frozenset({4242})


def test_an_append_that_commits_after_its_503_still_wakes_this_process():
    """The publisher got a 503 (the database was slow), the commit went
    through later: its NOTIFY echo comes from one of our own backends and is
    skipped, so the store must still announce the events when they commit,
    or this process's webhook loops and waiters never hear of them."""
    clock = Clock()
    database = Database(clock, "", pool_size=1, timeout=QUERY_TIMEOUT_S)
    database._pool = pool = HeldPool()  # type: ignore[assignment]
    store = EventStore(database)
    notifier = Notifier(clock, store, own_pids=database.backend_pids)
    store.on_append = notifier.published
    told: list[Wake] = []

    class Told(Subscriber):
        def woken(self, wake: Wake) -> None:
            told.append(wake)

    notifier.subscribe("ctx", "ch", Told())

    result = defer.ensureDeferred(store.append("ctx", "ch", "tests", ['{"n": 1}']))
    clock.advance(QUERY_TIMEOUT_S + 0.1)
    failure = []
    result.addErrback(failure.append)
    assert failure and failure[0].check(Unavailable)
    assert told == []

    (query,) = pool.pending
    query.callback([("ctx", "ch", 1, 1700000000.0)])  # the late commit
    assert [(w.channel, w.head) for w in told] == [("ch", 1)]
    # the echo is still skipped: no second announcement
    notifier.on_notification(decode("ctx/ch/1", pid=4242))
    assert len(told) == 1


def test_an_append_answered_in_time_is_announced_before_its_requester_hears():
    clock = Clock()
    database = Database(clock, "", pool_size=1, timeout=QUERY_TIMEOUT_S)
    database._pool = pool = HeldPool()  # type: ignore[assignment]
    store = EventStore(database)
    order: list[str] = []
    store.on_append = lambda context, channel, events: order.append(f"announce {events[0].id}")
    result = defer.ensureDeferred(store.append("ctx", "ch", "tests", ['{"n": 1}', '{"n": 2}']))
    result.addCallback(lambda events: order.append(f"answer {[e.id for e in events]}"))
    pool.pending[0].callback([("ctx", "ch", 7, 1700000000.0)])
    assert order == ["announce 6", "answer [6, 7]"]
