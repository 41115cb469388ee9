"""The in-memory tail of recent events: contiguous, bounded, never wrong."""
from __future__ import annotations

from eventbus.model import Event
from eventbus.tail import TailCache

K = ("ctx", "ch")


def ev(i: int, payload: str = "{}") -> Event:
    return Event(i, 1.0, "t", payload)


def test_keeps_a_contiguous_run_and_answers_after_a_cursor():
    tail = TailCache()
    tail.add(K, [ev(3), ev(1), ev(2)])
    assert tail.get(K, 2) == ev(2)
    assert [e.id for e in tail.after(K, 1, 10)] == [2, 3]
    assert tail.after(K, 3, 10) == []
    assert tail.get(K, 4) is None
    assert tail.get(("ctx", "other"), 1) is None


def test_a_gap_starts_a_new_run_and_older_events_are_ignored():
    tail = TailCache()
    tail.add(K, [ev(1), ev(2)])
    tail.add(K, [ev(5)])  # 3 and 4 unknown: never pretend 5 follows 2
    assert tail.get(K, 2) is None
    assert tail.after(K, 2, 10) == []
    assert [e.id for e in tail.after(K, 4, 10)] == [5]
    tail.add(K, [ev(4)])  # older than the run: ignored, the run stays
    assert tail.get(K, 4) is None and tail.get(K, 5) == ev(5)


def test_events_per_channel_are_bounded():
    tail = TailCache(per_channel=3)
    tail.add(K, [ev(i) for i in range(1, 11)])
    assert [e.id for e in tail.after(K, 0, 100)] == []
    assert [e.id for e in tail.after(K, 7, 100)] == [8, 9, 10]


def test_bytes_and_channels_are_bounded_least_recently_used_first():
    tail = TailCache(channels=2)
    tail.add(("c", "a"), [ev(1)])
    tail.add(("c", "b"), [ev(1)])
    tail.get(("c", "a"), 1)  # a is now more recent than b
    tail.add(("c", "c"), [ev(1)])
    assert tail.get(("c", "b"), 1) is None
    assert tail.get(("c", "a"), 1) is not None and tail.get(("c", "c"), 1) is not None
    small = TailCache(max_bytes=1000)
    small.add(("c", "a"), [ev(1, "x" * 600)])
    small.add(("c", "b"), [ev(1, "y" * 600)])
    assert small.get(("c", "a"), 1) is None and small.get(("c", "b"), 1) is not None
