"""The most recent events of busy channels, kept in memory.

Events are immutable once committed, so a cached event is never stale: the
cache can only miss, never lie.  It lets one database read (or the publish
itself, in the publishing process) answer every waiter and every SSE stream
at the head of a channel, instead of one query per consumer per event.

Each channel keeps a contiguous run of ids ``first..last``.  The number of
channels, the events per channel and the memory overall are bounded: what
an event is counted for is the memory its strings take (``sys.getsizeof``:
a payload of non-Latin-1 text takes two or four bytes per character), and
the total never exceeds :data:`TAIL_BYTES` once :meth:`TailCache.add`
returns.  Over the budget, a channel's oldest events go first (so a channel
of large events keeps its newest ones), then the least recently used
channels; an event larger than the whole budget is not kept at all.

Layer rule: a domain module; memory only, no SQL, no HTTP.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable

from eventbus.model import ChannelKey, Event

TAIL_EVENTS = 256
TAIL_CHANNELS = 4096
TAIL_BYTES = 32 * 1024 * 1024
#: What an event costs beside its strings: the tuple, its id and timestamp,
#: and a slot in its run's list.
EVENT_OVERHEAD = 128


class _Run:
    __slots__ = ("events", "first", "size")

    def __init__(self) -> None:
        self.first = 0
        self.events: list[Event] = []
        self.size = 0

    @property
    def last(self) -> int:
        return self.first + len(self.events) - 1


class TailCache:
    """Recent contiguous events per channel, bounded in count and bytes."""

    def __init__(
        self, per_channel: int = TAIL_EVENTS, channels: int = TAIL_CHANNELS, max_bytes: int = TAIL_BYTES
    ) -> None:
        self.per_channel = per_channel
        self.channels = channels
        self.max_bytes = max_bytes
        self._runs: OrderedDict[ChannelKey, _Run] = OrderedDict()
        self._bytes = 0

    def add(self, key: ChannelKey, events: Iterable[Event]) -> None:
        """Remember committed events (any order; a gap past the run starts a
        new run, and events older than the run are ignored)."""
        events = list(events)
        if any(events[i].id > events[i + 1].id for i in range(len(events) - 1)):
            events.sort(key=lambda e: e.id)
        for event in events:
            self._add_one(key, event)
        run = self._runs.get(key)
        if run is not None:
            self._trim(key, run)
        self._evict()

    def _trim(self, key: ChannelKey, run: _Run) -> None:
        """Cut a run's oldest events beyond its count, or beyond the whole
        budget (this channel alone); drop it if nothing is left."""
        cut = max(0, len(run.events) - self.per_channel)
        weight = sum(_weight(e) for e in run.events[:cut])
        while cut < len(run.events) and run.size - weight > self.max_bytes:
            weight += _weight(run.events[cut])
            cut += 1
        if cut:
            del run.events[:cut]
            run.first += cut
            run.size -= weight
            self._bytes -= weight
        if not run.events:
            del self._runs[key]

    def holds(self, key: ChannelKey) -> bool:
        """Whether this channel has recent events in memory (it is being read)."""
        return key in self._runs

    def get(self, key: ChannelKey, event_id: int) -> Event | None:
        run = self._runs.get(key)
        if run is None or not run.first <= event_id <= run.last:
            return None
        self._runs.move_to_end(key)
        return run.events[event_id - run.first]

    def after(self, key: ChannelKey, cursor: int, limit: int, max_bytes: int | None = None) -> list[Event]:
        """Cached events cursor+1, cursor+2, ... in order: at most ``limit``,
        and (if given) ``max_bytes`` by their weight, but at least one."""
        run = self._runs.get(key)
        if run is None or not run.first <= cursor + 1 <= run.last:
            return []
        self._runs.move_to_end(key)
        start = cursor + 1 - run.first
        events = run.events[start : start + limit]
        if max_bytes is not None:
            total = 0
            for n, event in enumerate(events):
                total += _weight(event)
                if n and total > max_bytes:
                    return events[:n]
        return events

    def size(self) -> int:
        """The weight of every event held (for tests)."""
        return self._bytes

    def _add_one(self, key: ChannelKey, event: Event) -> None:
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run()
        elif run.events and event.id <= run.last:
            return  # known, or older than the run: the head is worth more
        if not run.events or event.id != run.last + 1:
            self._bytes -= run.size
            run.first, run.events, run.size = event.id, [], 0
        run.events.append(event)
        weight = _weight(event)
        run.size += weight
        self._bytes += weight
        self._runs.move_to_end(key)

    def _evict(self) -> None:
        while self._runs and (len(self._runs) > self.channels or self._bytes > self.max_bytes):
            _, run = self._runs.popitem(last=False)
            self._bytes -= run.size


def _weight(event: Event) -> int:
    return sys.getsizeof(event.payload) + sys.getsizeof(event.issuer) + EVENT_OVERHEAD
