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


def test_memory_is_weighed_by_what_the_strings_take_not_by_their_length():
    """A payload of non-Latin-1 text takes up to four bytes per character:
    the budget counts what the process holds."""
    ascii_payload = '{"s": "%s"}' % ("a" * 10_000)
    wide_payload = '{"s": "%s"}' % ("\U0001F600" * 10_000)  # 4 bytes a character
    assert len(ascii_payload) == len(wide_payload)
    tail = TailCache(max_bytes=100_000)
    tail.add(K, [ev(i, ascii_payload) for i in range(1, 6)])
    assert [e.id for e in tail.after(K, 0, 100)] == [1, 2, 3, 4, 5]
    wide = TailCache(max_bytes=100_000)
    wide.add(K, [ev(i, wide_payload) for i in range(1, 6)])
    kept = [e.id for e in wide.after(K, wide_first(wide), 100)]
    assert kept == [4, 5]  # 40 KB each: two fit, the oldest went first
    assert wide.size() <= 100_000


def wide_first(tail: TailCache) -> int:
    """The cursor just before the first event the tail holds on K."""
    return next(i for i in range(0, 100) if tail.get(K, i + 1) is not None)


def test_a_channel_over_the_budget_keeps_its_newest_events_and_never_exceeds_it():
    big = "x" * 300_000
    tail = TailCache(max_bytes=1_000_000)
    for i in range(1, 21):
        tail.add(K, [ev(i, big)])
        assert tail.size() <= 1_000_000
    tail.add(K, [ev(i, big) for i in range(21, 31)])
    assert tail.size() <= 1_000_000
    assert [e.id for e in tail.after(K, 27, 100)] == [28, 29, 30]
    assert tail.get(K, 27) is None


def test_an_event_larger_than_the_whole_budget_is_not_kept():
    tail = TailCache(max_bytes=1000)
    tail.add(K, [ev(1, "x" * 2000)])
    assert tail.get(K, 1) is None and tail.size() == 0 and not tail.holds(K)


def test_after_stops_at_a_byte_budget_but_returns_at_least_one_event():
    tail = TailCache()
    tail.add(K, [ev(i, "x" * 1000) for i in range(1, 11)])
    assert [e.id for e in tail.after(K, 0, 100, max_bytes=3000)] == [1, 2]
    assert [e.id for e in tail.after(K, 0, 100, max_bytes=10)] == [1]
    assert len(tail.after(K, 0, 100)) == 10
