"""Conditional appends: publishes with an ``Idempotency-Key`` or an ``Expected-Last-Id``.

Invariant: a key's record is written in the transaction that stores its
events, under the channel's row lock, so an acknowledged publish always has
its key and a rolled-back one never does; and whoever holds that lock sees
every key committed before it.  So a repeat, in this process or another,
is decided only once the first is committed or rolled back: it replays the
first's events (same ids, same timestamp) or, if there are none, stores
its own; never both.  An expectation is checked against the channel's last
id under the same lock, after the requests ahead of it in its group, so of
two writers expecting the same id exactly one wins.

Group commit, as for plain appends (:mod:`.events`), on a path of its own:
conditional requests queue here, at most :data:`MAX_FLUSHES_IN_FLIGHT`
transactions at a time, each one call of ``eventbus_append_checked``
(migration 9), which takes the channel rows in the order plain groups do
(sorted by context and channel: neither path can deadlock the other) and
decides each request in arrival order.  A request whose key or expectation
fails takes no id and fails alone; its neighbours are stored.  Two
requests with the same key on one channel never share a group: the second
waits for the next one and replays the first.  Plain publishes never wait
for this path, nor it for them, but for the channel lock.

A ``503`` means the outcome is unknown (the statement may still commit):
a retry with the same key replays it if it did, and stores it if it did
not.  Records older than the window are ignored (and overwritten); the
retention pruner deletes them in small batches, as one of its prune steps
(:meth:`ConditionalAppends.prune_expired_keys`).

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventbus.errors import Conflict, EventBusError, Unprocessable
from eventbus.metrics import AppendMetrics
from eventbus.model import Appended, Event, PublishCondition
from eventbus.storage.database import Database, Row, settle_failed_group, within
from eventbus.storage.notify import notify_sql

log = Logger()

#: As for plain appends: transactions in flight, events in one of them.
MAX_FLUSHES_IN_FLIGHT = 2
MAX_GROUP_EVENTS = 5000
#: Expired idempotency records deleted per statement by the pruner, and
#: statements per pruning round (the rest waits for the next round).
PRUNE_BATCH = 500
PRUNE_BATCHES_PER_ROUND = 100

#: One group of conditional appends; one notification per channel that
#: stored events (the function marks that row with the channel's new head).
CHECKED_SQL = f"""/* eventbus_append_checked: conditional appends */
SELECT r.ord, r.outcome, r.first_id, r.ts, r.last_id
  FROM eventbus_append_checked(
           %(ctx)s::text[], %(ch)s::text[], %(key)s::text[], %(hash)s::text[],
           %(issuer)s::text[], %(expected)s::bigint[], %(n)s::integer[],
           %(payloads)s::json, %(e_req)s::integer[], %(e_pos)s::integer[], %(window)s) AS r
  LEFT JOIN LATERAL (SELECT {notify_sql("r.context", "r.channel", "r.head")}
                     WHERE r.head IS NOT NULL) AS announced ON true
"""

#: At most ``%(limit)s`` records older than the window, oldest first (rows
#: an append is overwriting are skipped, not waited for); answers how many.
PRUNE_SQL = """/* eventbus_prune_idempotency_keys */
WITH old AS (
    SELECT channel_id, key FROM idempotency_keys
     WHERE ts < clock_timestamp() - make_interval(secs => %(window)s)
     ORDER BY ts LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM idempotency_keys k USING old
     WHERE k.channel_id = old.channel_id AND k.key = old.key
    RETURNING 1
)
SELECT count(*) FROM gone
"""

#: ``announce(context, channel, events)``: committed events, for the notifier.
Announce = Callable[[str, str, list[Event]], None]
#: What a decided request gets: its answer, or the error it fails with.
Outcome = Appended | EventBusError


class ConditionalAppends:
    """Group commit of conditional appends (see the module docstring)."""

    def __init__(
        self, database: Database, announce: Announce, window_s: float, metrics: AppendMetrics | None = None
    ) -> None:
        self.database = database
        self.reactor = database.reactor
        #: Told of every committed append, before its requester (the event
        #: store's :meth:`~eventbus.storage.events.EventStore.announce`).
        self.announce = announce
        #: Seconds a key is remembered (``--idempotency-window``).
        self.window_s = window_s
        #: Shared with the plain path's store (:mod:`.events`): one count of publishes.
        self.metrics = metrics if metrics is not None else AppendMetrics(by_context=False)
        self._queue: deque[_Conditional] = deque()
        self._flushing = 0

    async def prune_expired_keys(self) -> int:
        """A prune step of the retention pruner (``Pruner.steps``): delete the
        records older than the window, :data:`PRUNE_BATCH` per statement, at
        most :data:`PRUNE_BATCHES_PER_ROUND` statements; return how many went."""
        total = 0
        for _ in range(PRUNE_BATCHES_PER_ROUND):
            deleted = await delete_expired_keys(self.database, self.window_s, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        return total

    async def append(
        self, context: str, channel: str, issuer: str, payloads: list[str], condition: PublishCondition
    ) -> Appended:
        """Store ``payloads`` if ``condition`` allows, atomically and in order;
        or answer the events an earlier publish with the same key stored.

        Raises :class:`~eventbus.errors.Conflict` (details: ``last_id``) for
        a failed expectation, :class:`~eventbus.errors.Unprocessable` for a
        key used with another body or issuer; nothing is stored then.
        """
        item = _Conditional(context, channel, issuer, payloads, condition)
        self.metrics.batch_size.observe(len(payloads))
        self._queue.append(item)
        if self._flushing < MAX_FLUSHES_IN_FLIGHT:
            self._flush()
        appended: Appended = await item.result
        return appended

    def _flush(self) -> None:
        """Write a group in one transaction, then flush again if more came.
        A request whose key is already in the group waits for the next."""
        group: list[_Conditional] = []
        later: deque[_Conditional] = deque()
        keys: set[tuple[str, str, str]] = set()
        events = 0
        while self._queue:
            item = self._queue.popleft()
            key = item.condition.key
            if key is not None and (item.context, item.channel, key) in keys:
                later.append(item)
                continue
            if group and events + len(item.payloads) > MAX_GROUP_EVENTS:
                later.append(item)
                break
            group.append(item)
            events += len(item.payloads)
            if key is not None:
                keys.add((item.context, item.channel, key))
        later.extend(self._queue)
        self._queue = later
        self._flushing += 1
        d = defer.ensureDeferred(self._write_group(group))
        d.addBoth(self._flushed)

    def _flushed(self, _: Any) -> None:
        self._flushing -= 1
        if self._queue and self._flushing < MAX_FLUSHES_IN_FLIGHT:
            self._flush()

    async def _write_group(self, group: list[_Conditional]) -> None:
        # Channels in the plain path's lock order; arrival order within one.
        ordered = sorted(group, key=lambda item: (item.context, item.channel))
        params = _params(ordered, self.window_s)
        try:
            sent = time.perf_counter()
            d = self.database.pool().runQuery(CHECKED_SQL, params)
            # Announced when it commits, even after the requesters got their 503.
            d.addCallback(self._committed, ordered, sent)
            outcomes: list[tuple[_Conditional, Outcome]] = await within(
                self.reactor, d, self.database.timeout
            )
        except Exception as e:
            await settle_failed_group(self.database, e, group, self._queue, self._write_group)
            return
        for item, outcome in outcomes:
            if isinstance(outcome, EventBusError):
                item.fail(outcome)
            else:
                item.succeed(outcome)

    def _committed(
        self, rows: list[Row], ordered: list[_Conditional], sent: float
    ) -> list[tuple[_Conditional, Outcome]]:
        """The group committed: each request's outcome; stored events announced.
        Builds values only (raising here would retry a committed group)."""
        self.metrics.committed(time.perf_counter() - sent, len(ordered))
        done: list[tuple[_Conditional, Outcome]] = []
        for ord_, outcome, first_id, ts, last_id in rows:
            item = ordered[ord_ - 1]
            result: Outcome
            if outcome in ("stored", "replay"):
                events = [Event(first_id + i, ts, item.issuer, p) for i, p in enumerate(item.payloads)]
                if outcome == "stored":
                    self.announce(item.context, item.channel, events)
                else:
                    self.metrics.replays.add(item.context)
                result = Appended(events, replayed=outcome == "replay")
            elif outcome == "conflict":
                result = Conflict(
                    f"Expected-Last-Id is {item.condition.expected}, but the last id of"
                    f" {item.context}/{item.channel} is {last_id}; nothing was stored",
                    details={"last_id": last_id},
                )
            else:
                result = Unprocessable(
                    f"Idempotency-Key {item.condition.key!r} was used in {item.context}/{item.channel}"
                    " for a different request (another body or issuer) within the idempotency window;"
                    " nothing was stored"
                )
            done.append((item, result))
        return done


def _params(ordered: list[_Conditional], window_s: float) -> dict[str, Any]:
    """The function's arguments: one element per request, and per event its
    request's number and its position in that request."""
    e_req: list[str] = []
    e_pos: list[str] = []
    payloads: list[str] = []
    for number, item in enumerate(ordered, start=1):
        count = len(item.payloads)
        e_req.extend([str(number)] * count)
        e_pos.extend(map(str, range(1, count + 1)))
        payloads.extend(item.payloads)
    return {
        "ctx": [item.context for item in ordered],
        "ch": [item.channel for item in ordered],
        "key": [item.condition.key for item in ordered],
        "hash": [item.condition.digest for item in ordered],
        "issuer": [item.issuer for item in ordered],
        "expected": [item.condition.expected for item in ordered],
        "n": [len(item.payloads) for item in ordered],
        "payloads": "[" + ",".join(payloads) + "]",
        "e_req": "{" + ",".join(e_req) + "}",
        "e_pos": "{" + ",".join(e_pos) + "}",
        "window": window_s,
    }


async def delete_expired_keys(database: Database, window_s: float, limit: int = PRUNE_BATCH) -> int:
    """Delete at most ``limit`` idempotency records older than ``window_s``
    seconds (one short statement); return how many went.  The pruner calls
    it until it returns less than ``limit``.  A record past the window is
    already ignored by appends, so pruning late never changes an answer."""
    rows = await database.query(PRUNE_SQL, {"window": window_s, "limit": limit})
    return int(rows[0][0])


class _Conditional:
    """One queued conditional append waiting for its group's commit."""

    __slots__ = ("channel", "condition", "context", "issuer", "payloads", "result")

    def __init__(
        self, context: str, channel: str, issuer: str, payloads: list[str], condition: PublishCondition
    ) -> None:
        self.context = context
        self.channel = channel
        self.issuer = issuer
        self.payloads = payloads
        self.condition = condition
        # The requester may stop waiting (disconnect): the append still goes through.
        self.result: defer.Deferred[Appended] = defer.Deferred(lambda d: None)

    def succeed(self, appended: Appended) -> None:
        if not self.result.called:
            self.result.callback(appended)

    def fail(self, error: BaseException) -> None:
        if not self.result.called:
            self.result.errback(Failure(error))
