"""The event log: appends with group commit, and every read of events.

Ordering mechanism
------------------
Each channel has one row in ``channels`` holding ``last_id``.  A publish
increments that counter *inside the inserting transaction*, in the same
statement that inserts its events, so the row lock serialises writers of one
channel until their commit: ids are handed out in commit order, a
rolled-back publish gives its ids back, and the committed ids of a channel
are always exactly ``1..N``.  A consumer asking for "the first event with
id > cursor" therefore can never miss an event that commits later with a
smaller id, which is what goes wrong with a plain sequence (or with a
counter bumped in a statement of its own, whose lock would be held but
whose events would not yet be visible).  The same row also keeps
``last_ts`` so timestamps never go backwards within a channel, which makes
``start`` reads a prefix cut of the id order.

Retention (:mod:`.retention`) deletes runs at the bottom of a channel and
never lowers the counter, so ids are never reused and what is stored is
always gapless: ``pruned_to + 1 .. last_id``.  Reads take what is stored;
:meth:`EventStore.first_after` tells a cursor behind it (a gap, or
:class:`~eventbus.model.Pruned`) from one at the head.

Every append announces its channel's new head (:mod:`.notify`); PostgreSQL
delivers it only after commit, to every server process listening.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventbus.metrics import AppendMetrics
from eventbus.model import ChannelKey, Event, Pruned
from eventbus.storage import pages
from eventbus.storage.database import Database, Row, select_list, settle_failed_group, within
from eventbus.storage.notify import notify_sql
from eventbus.storage.pages import CHANNEL_ID, PAGE_BYTES, PAGE_SIZE, Page

log = Logger()

#: Group commit: at most this many transactions of appends in flight per
#: process, and at most this many events in one of them.
MAX_FLUSHES_IN_FLIGHT = 2
MAX_GROUP_EVENTS = 5000

#: One group commit in one statement.  Per channel (in key order, which is
#: the lock order): bump the counter row by the group's count, taking the
#: ids last_id-n+1 .. last_id; then insert every event with its position
#: within its channel's share; then one NOTIFY per channel, delivered at
#: commit.  Positions are computed by the caller (see EventStore._write_group).
APPEND_SQL = f"""/* eventbus_append: group commit */
WITH req AS (
    SELECT * FROM unnest(%(ctx)s::text[], %(ch)s::text[], %(n)s::bigint[])
           WITH ORDINALITY AS r(context, channel, n, ord)
), upd AS (
    INSERT INTO channels AS c (context, channel, last_id, last_ts)
    SELECT context, channel, n, clock_timestamp() FROM req ORDER BY ord
    ON CONFLICT (context, channel) DO UPDATE
       SET last_id = c.last_id + EXCLUDED.last_id,
           last_ts = greatest(c.last_ts, EXCLUDED.last_ts)
    RETURNING c.id, c.context, c.channel, c.last_id, c.last_ts
), ev AS (
    SELECT * FROM ROWS FROM (json_array_elements(%(payloads)s::json),
                             unnest(%(e_ch)s::int[]), unnest(%(e_pos)s::int[]),
                             unnest(%(e_iss)s::int[])) AS e(payload, ch, pos, iss)
), ins AS (
    INSERT INTO events (channel_id, id, ts, issuer, payload)
    SELECT upd.id, upd.last_id - req.n + ev.pos, upd.last_ts,
           (%(issuers)s::text[])[ev.iss], ev.payload
      FROM ev
      JOIN req ON req.ord = ev.ch
      JOIN upd ON upd.context = req.context AND upd.channel = req.channel
)
SELECT upd.context, upd.channel, upd.last_id, extract(epoch FROM upd.last_ts)::float8
  FROM upd, {notify_sql("upd.context", "upd.channel", "upd.last_id")}
"""


def event_columns(alias: str) -> str:
    """The SELECT list of an :class:`Event` from ``events <alias>``."""
    return select_list(
        Event,
        id=f"{alias}.id",
        timestamp=f"extract(epoch FROM {alias}.ts)::float8",
        issuer=f"{alias}.issuer",
        payload=f"{alias}.payload::text",
    )


EVENT_COLUMNS = event_columns("e")
#: The first event stored after ``%(cursor)s`` (head NULL), then the channel's
#: head (the other columns NULL), read in one snapshot.
AFTER_SQL = f"""/* eventbus_first_after */
(SELECT {EVENT_COLUMNS}, NULL::bigint AS head FROM events e
  WHERE e.channel_id = {CHANNEL_ID} AND e.id > %(cursor)s ORDER BY e.id LIMIT 1)
UNION ALL
(SELECT NULL, NULL, NULL, NULL, last_id FROM channels WHERE context = %(context)s AND channel = %(channel)s)
"""

#: ``on_append(context, channel, events)``: told of every committed append.
AppendObserver = Callable[[str, str, list[Event]], None]


class EventStore:
    """Appends (group commit) and reads of the event log."""

    def __init__(self, database: Database, metrics: AppendMetrics | None = None) -> None:
        self.database = database
        self.reactor = database.reactor
        #: What publishes and group commits are counted in (both paths).
        self.metrics = metrics if metrics is not None else AppendMetrics(by_context=False)
        self._queue: deque[_Append] = deque()
        self._flushing = 0
        #: Told of every committed append, before its requester: the
        #: notifier wakes this process's waiters from it.
        self.on_append: AppendObserver | None = None

    def backend_pids(self) -> frozenset[int]:
        """The pool's backends: notifications they sent were announced already."""
        return self.database.backend_pids()

    # -- writes -------------------------------------------------------------
    async def append(self, context: str, channel: str, issuer: str, payloads: list[str]) -> list[Event]:
        """Append payloads (JSON object texts) to a channel, atomically and in
        order; return the stored events.

        Group commit: appends that arrive while transactions are in flight
        are queued and written together by the next one (one statement, one
        commit, one fsync).  Resolves only after the transaction holding
        this append has committed, and after :attr:`on_append` was told.
        """
        item = _Append(context, channel, issuer, payloads)
        self.metrics.batch_size.observe(len(payloads))
        self._queue.append(item)
        if self._flushing < MAX_FLUSHES_IN_FLIGHT:
            self._flush()
        events: list[Event] = await item.result
        return events

    def _flush(self) -> None:
        """Write queued appends in one transaction, then flush again if more came."""
        group: list[_Append] = []
        events = 0
        while self._queue and (not group or events + len(self._queue[0].payloads) <= MAX_GROUP_EVENTS):
            item = self._queue.popleft()
            group.append(item)
            events += len(item.payloads)
        self._flushing += 1
        d = defer.ensureDeferred(self._write_group(group))
        d.addBoth(self._flushed)

    def _flushed(self, _: Any) -> None:
        self._flushing -= 1
        if self._queue and self._flushing < MAX_FLUSHES_IN_FLIGHT:
            self._flush()

    async def _write_group(self, group: list[_Append]) -> None:
        # Channels in one global order, so concurrent groups (in this or
        # other processes) lock channel rows in the same order and cannot
        # deadlock; within a channel, appends keep their arrival order.
        by_channel: dict[ChannelKey, list[_Append]] = {}
        for item in group:
            by_channel.setdefault((item.context, item.channel), []).append(item)
        keys = sorted(by_channel)
        counts: list[int] = []
        e_channel: list[str] = []
        e_pos: list[str] = []
        e_issuer: list[str] = []
        payloads: list[str] = []
        issuers: dict[str, str] = {}
        for index, key in enumerate(keys, start=1):
            pos = 0
            ch = str(index)
            for item in by_channel[key]:
                item.offset = pos
                iss = issuers.setdefault(item.issuer, str(len(issuers) + 1))
                count = len(item.payloads)
                e_pos.extend(map(str, range(pos + 1, pos + count + 1)))
                pos += count
                payloads.extend(item.payloads)
                e_channel.extend([ch] * len(item.payloads))
                e_issuer.extend([iss] * len(item.payloads))
            counts.append(pos)
        # Per-event columns travel as one array literal or one JSON array
        # each: PostgreSQL parses those in C, while a Python list would
        # become an ARRAY[...] expression of one constant per event.
        params = {
            "ctx": [k[0] for k in keys],
            "ch": [k[1] for k in keys],
            "n": counts,
            "payloads": "[" + ",".join(payloads) + "]",
            "e_ch": "{" + ",".join(e_channel) + "}",
            "e_pos": "{" + ",".join(e_pos) + "}",
            "e_iss": "{" + ",".join(e_issuer) + "}",
            "issuers": list(issuers),
        }
        try:
            sent = time.perf_counter()
            d = self.database.pool().runQuery(APPEND_SQL, params)
            # Announced when it commits, even after the requesters got their
            # 503 (the database was slow): the NOTIFY echo of our own commit
            # is skipped, so this is this process's only word of it.
            d.addCallback(self._committed, by_channel, dict(zip(keys, counts, strict=True)), sent, len(group))
            done = await within(self.reactor, d, self.database.timeout)
        except Exception as e:
            await settle_failed_group(self.database, e, group, self._queue, self._write_group)
            return
        for item, events in done:
            item.succeed(events)

    def _committed(
        self,
        rows: list[Row],
        by_channel: dict[ChannelKey, list[_Append]],
        count_of: dict[ChannelKey, int],
        sent: float,
        appends: int,
    ) -> list[tuple[_Append, list[Event]]]:
        """A group committed: its events per append, announced to :attr:`on_append`."""
        self.metrics.committed(time.perf_counter() - sent, appends)
        done = []
        for context, channel, last_id, ts in rows:
            base = last_id - count_of[(context, channel)]
            for item in by_channel[(context, channel)]:
                first = base + item.offset + 1
                events = [Event(first + i, ts, item.issuer, p) for i, p in enumerate(item.payloads)]
                self.announce(context, channel, events)
                done.append((item, events))
        return done

    def announce(self, context: str, channel: str, events: list[Event]) -> None:
        """Tell :attr:`on_append` of committed events (of any append path);
        never raises: the events are committed whatever it does."""
        self.metrics.published.add(context, len(events))
        if self.on_append is not None:
            try:
                self.on_append(context, channel, events)
            except Exception:
                log.failure("announcing appended events failed")

    # -- reads --------------------------------------------------------------
    async def event(self, context: str, channel: str, event_id: int) -> Event | None:
        rows = await self.database.query(
            f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.channel_id = {CHANNEL_ID} AND e.id = %(id)s",
            {"context": context, "channel": channel, "id": event_id},
        )
        return Event(*rows[0]) if rows else None

    async def first_after(self, context: str, channel: str, cursor: int) -> Event | Pruned | None:
        """The first event with id > cursor; None if there is none yet.

        What is stored is gap-free, so that is event cursor+1, unless
        retention deleted it: then the first stored one after it (a gap the
        caller tells its client of), or :class:`Pruned` if none is stored.
        """
        event = await self.event(context, channel, cursor + 1)
        if event is not None:
            return event
        # One statement, one snapshot: the first stored event after the
        # cursor, and the channel's head as of the same moment.
        rows = await self.database.query(
            AFTER_SQL, {"context": context, "channel": channel, "cursor": cursor}
        )
        stored = [Event(*fields) for *fields, head in rows if head is None]
        if stored:
            return stored[0]
        head = max((row[-1] for row in rows), default=0)
        return Pruned(head + 1) if head > cursor else None

    async def bounds(self, context: str, channel: str) -> tuple[int, int]:
        """(first id, last id) of what the channel stores; the first id is the
        next to come when it stores nothing (``(1, 0)`` for a channel never written)."""
        rows = await self.database.query(
            "SELECT c.last_id, coalesce(r.pruned_to, 0) FROM channels c"
            " LEFT JOIN channel_retention r ON r.channel_id = c.id"
            " WHERE c.context = %s AND c.channel = %s",
            (context, channel),
        )
        if not rows:
            return 1, 0
        last_id, pruned_to = rows[0]
        return int(pruned_to) + 1, int(last_id)

    async def events_by_id(
        self,
        context: str,
        channel: str,
        ids: Iterable[int],
        ahead: Iterable[int] = (),
        max_bytes: int = PAGE_BYTES,
    ) -> dict[int, Event]:
        """Several events of one channel (used to wake waiters): every one of
        ``ids`` that exists, and of ``ahead`` (a read-ahead) those that fit,
        in id order, within ``max_bytes`` of payload."""
        return await pages.by_id(self.database, context, channel, set(ids), ahead, max_bytes)

    async def head(self, context: str, channel: str) -> int:
        """The channel's last committed id (0 for a channel never written)."""
        rows = await self.database.query(
            "SELECT last_id FROM channels WHERE context = %s AND channel = %s",
            (context, channel),
        )
        return int(rows[0][0]) if rows else 0

    async def first_id_at(self, context: str, channel: str, start: dt.datetime) -> int | None:
        """The id of the first event with timestamp >= start."""
        rows = await self.database.query(
            "SELECT e.id FROM events e"
            f" WHERE e.channel_id = {CHANNEL_ID} AND e.ts >= %(start)s"
            " ORDER BY e.ts, e.id LIMIT 1",
            {"context": context, "channel": channel, "start": start},
        )
        return int(rows[0][0]) if rows else None

    async def page(
        self,
        context: str,
        channel: str,
        after: int,
        upto: int,
        limit: int = PAGE_SIZE,
        max_bytes: int = PAGE_BYTES,
    ) -> Page:
        """Events with after < id <= upto, in id order: at most ``limit``, and
        no more than ``max_bytes`` of payload (but at least one event); the
        payloads left out are never fetched (:mod:`.pages`)."""
        return await pages.page(self.database, context, channel, after, upto, limit, max_bytes)


class _Append:
    """One queued append waiting for its group's commit."""

    __slots__ = ("channel", "context", "issuer", "offset", "payloads", "result")

    def __init__(self, context: str, channel: str, issuer: str, payloads: list[str]) -> None:
        self.context = context
        self.channel = channel
        self.issuer = issuer
        self.payloads = payloads
        #: events of the same channel ahead of this append in its group
        self.offset = 0
        # The requester may stop waiting (disconnect): firing is then
        # skipped, but the append itself still goes through.
        self.result: defer.Deferred[list[Event]] = defer.Deferred(lambda d: None)

    def succeed(self, events: list[Event]) -> None:
        if not self.result.called:
            self.result.callback(events)

    def fail(self, error: BaseException) -> None:
        if not self.result.called:
            self.result.errback(Failure(error))
