"""Every SQL statement of durable consumers.

Tables (``schema/003_consumers.sql``):

``consumers``
    One row per ``(context, channel, name)``: its configuration and
    ``next_new``, the lowest event id never delivered to it.  Its row lock is
    the consumer's lock: every transaction that hands out or reshapes leases
    takes it first (``SELECT ... FOR UPDATE``), so leasing is serialised per
    consumer across all server processes.

``consumer_events``
    Only the events below ``next_new`` that are *not* acked: ``leased``,
    ``available`` (nacked, or put back by a dead-letter retry) or ``dead``.
    An ack deletes its row, so "id < next_new and no row" means acked.  The
    consumer's cursor (every id up to it is acked or dead) is therefore
    derived, never stored: the lowest leased/available id minus one, or
    ``next_new - 1``.

Time is the database's (``clock_timestamp()``), read once per transaction
after the lock is held, so several server processes agree on lease expiry.
A lease that has expired stays ``leased`` in the table until the next
leasing transaction of the consumer looks at it; readers treat it by its
effective state (:mod:`.consumer_rows`).

Retention (:mod:`.retention`) deletes events under the consumers' feet,
holding the row locks of a channel's consumers: it moves ``next_new`` past
what it deleted, drops their rows of it and counts what they lose in
``expired`` and ``missed`` (reported, then reset, by the next lease).  A
consumer being created starts no lower than the first event stored.

Acks and nacks are single statements that do not take the consumer's lock:
they lock only the event's row, and the leasing transaction re-checks its
conditions when it updates that row, so whichever commits first wins and the
other sees it (an ack of a lease that was just taken over matches no row:
409).

Layer rule: storage; SQL and nothing else.  The leasing *rules* are not here:
:meth:`ConsumerStore.lease` is handed the pure ``choose`` of :mod:`eventbus.consumers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from eventbus.errors import NotFound
from eventbus.model import (
    Backlog,
    ConsumerConfig,
    ConsumerStatus,
    DeadEvent,
    Leased,
    LeaseOutcome,
)
from eventbus.storage import consumer_rows as row_sql
from eventbus.storage import pages, retention
from eventbus.storage.database import Cursor, Database, select_list
from eventbus.storage.notify import STATE_CHANGED, notify_sql

#: How often one leasing transaction re-reads when an ack or nack changed its
#: chosen row under it, before giving up for this round (the caller retries).
LEASE_ATTEMPTS = 3

_DEAD, _IN_FLIGHT, _READY = row_sql.DEAD, row_sql.IN_FLIGHT, row_sql.READY
_LOCKED_NOW, _STATEMENT_NOW, _CONSUMER, _HEAD = (
    row_sql.LOCKED_NOW,
    row_sql.STATEMENT_NOW,
    row_sql.CONSUMER,
    row_sql.HEAD,
)
# Tells waiting ``next`` requests (in every process) that the consumer's
# state changed: the channel's notification with head STATE_CHANGED, which
# announces no event, so a waiter tells it apart from a publish.
_NOTIFY = notify_sql("%(context)s", "%(channel)s", f"'{STATE_CHANGED}'")


#: ``choose(backlog)`` -> the id to lease now, or None.
Chooser = Callable[[Backlog], int | None]


class _Consumer(NamedTuple):
    """A consumer's row, as the leasing transaction locks it."""

    id: int
    mode: str
    lease_s: float
    max_deliveries: int
    next_new: int
    #: Events retention deleted since the last lease, not reported yet.
    missed: int


_CONSUMER_COLUMNS = select_list(
    _Consumer,
    id="id",
    mode="mode",
    lease_s="lease_s",
    max_deliveries="max_deliveries",
    next_new="next_new",
    missed="missed",
)


_STATUS_COLUMNS, _BACKLOG_COLUMNS = row_sql.STATUS_COLUMNS, row_sql.BACKLOG_COLUMNS
_DEAD_EVENT_COLUMNS = pages.slim_columns("ev")


class ConsumerStore:
    """Consumer state in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self.database = database

    # -- leasing ----------------------------------------------------------------
    async def lease(
        self,
        context: str,
        channel: str,
        name: str,
        defaults: ConsumerConfig,
        choose: Chooser,
        token: Callable[[int], str],
    ) -> LeaseOutcome:
        """One leasing round: under the consumer's lock, dead-letter what used
        up its deliveries, read the backlog, and lease what ``choose`` picks.

        Creates the consumer with ``defaults`` if it does not exist.
        """
        p = {"context": context, "channel": channel, "name": name}

        async def work(cur: Cursor) -> LeaseOutcome:
            row, _ = await self._lock(cur, p, defaults)
            assert row is not None
            q: dict[str, Any] = {**p, "cid": row.id, "max": row.max_deliveries, "lease": row.lease_s}
            q.update(mode=row.mode, next_new=row.next_new, now=await self._now(cur))
            next_new = row.next_new
            await cur.execute(
                "UPDATE consumer_events e"
                "   SET state = 'dead', lease_token = NULL, lease_until = NULL,"
                "       available_at = NULL"
                " WHERE e.consumer_id = %(cid)s AND e.state <> 'dead'"
                "   AND e.deliveries >= %(max)s"
                "   AND (e.state = 'available' OR e.lease_until <= %(now)s)",
                q,
            )
            dead = max(0, cur.rowcount)
            for _ in range(LEASE_ATTEMPTS):
                backlog = await self._backlog(cur, q)
                chosen = choose(backlog)
                if chosen is None:
                    return LeaseOutcome(backlog, None, dead)
                q["id"], q["token"] = chosen, token(chosen)
                if chosen >= next_new:
                    assert chosen == next_new <= backlog.head
                    await cur.execute(
                        "INSERT INTO consumer_events (consumer_id, event_id, state,"
                        "    deliveries, lease_token, lease_until)"
                        " VALUES (%(cid)s, %(id)s, 'leased', 1, %(token)s,"
                        "    %(now)s + %(lease)s * interval '1 second')",
                        q,
                    )
                    await cur.execute(
                        "UPDATE consumers SET next_new = %(id)s + 1, missed = 0 WHERE id = %(cid)s", q
                    )
                    leased = Leased(event_id=chosen, token=q["token"], deliveries=1, missed=row.missed)
                    return LeaseOutcome(backlog, leased, dead)
                # Re-checked against the row's latest version: an ack or nack
                # that committed meanwhile makes this match nothing.
                await cur.execute(
                    "UPDATE consumer_events e"
                    "   SET state = 'leased', deliveries = deliveries + 1,"
                    "       lease_token = %(token)s, available_at = NULL,"
                    "       lease_until = %(now)s + %(lease)s * interval '1 second'"
                    f" WHERE e.consumer_id = %(cid)s AND e.event_id = %(id)s AND {_READY}"
                    " RETURNING deliveries",
                    q,
                )
                updated = cur.fetchall()
                if updated:
                    if row.missed:
                        await cur.execute("UPDATE consumers SET missed = 0 WHERE id = %(cid)s", q)
                    leased = Leased(chosen, q["token"], deliveries=updated[0][0], missed=row.missed)
                    return LeaseOutcome(backlog, leased, dead)
            return LeaseOutcome(backlog._replace(next_change_s=0.0), None, dead)

        return await self.database.transaction(work)

    async def _backlog(self, cur: Cursor, q: dict[str, Any]) -> Backlog:
        await cur.execute(
            f"SELECT {_BACKLOG_COLUMNS}"
            " FROM consumer_events e WHERE e.consumer_id = %(cid)s AND e.state <> 'dead'",
            q,
        )
        return Backlog(*cur.fetchone())

    # -- acknowledging ----------------------------------------------------------
    async def ack(self, context: str, channel: str, name: str, event_id: int, token: str) -> bool:
        """Delete the row of an unexpired lease; False if there is none.

        In ordered mode the next event just became leasable: wake the waiters.
        """
        rows = await self.database.query(
            "WITH done AS ("
            "  DELETE FROM consumer_events e USING consumers c"
            f"  WHERE {_CONSUMER} AND e.consumer_id = c.id AND e.event_id = %(id)s"
            "     AND e.state = 'leased' AND e.lease_token = %(token)s"
            "     AND e.lease_until > clock_timestamp()"
            "  RETURNING c.mode)"
            f" SELECT mode, CASE WHEN mode = 'ordered' THEN {_NOTIFY}::text END FROM done",
            {"context": context, "channel": channel, "name": name, "id": event_id, "token": token},
        )
        return bool(rows)

    async def nack(
        self, context: str, channel: str, name: str, event_id: int, token: str, delay_s: float
    ) -> str | None:
        """Put an unexpired lease's event back (after ``delay_s``): its new
        state, ``available``, or ``dead`` if it used up its deliveries; None
        if there is no such lease."""
        rows = await self.database.query(
            "WITH back AS ("
            "  UPDATE consumer_events e"
            "     SET state = CASE WHEN e.deliveries >= c.max_deliveries"
            "                      THEN 'dead' ELSE 'available' END,"
            "         available_at = CASE WHEN e.deliveries >= c.max_deliveries THEN NULL"
            "              ELSE clock_timestamp() + %(delay)s * interval '1 second' END,"
            "         lease_token = NULL, lease_until = NULL"
            "    FROM consumers c"
            f"  WHERE {_CONSUMER} AND e.consumer_id = c.id AND e.event_id = %(id)s"
            "     AND e.state = 'leased' AND e.lease_token = %(token)s"
            "     AND e.lease_until > clock_timestamp()"
            "  RETURNING e.state)"
            f" SELECT state, {_NOTIFY}::text FROM back",
            {
                "context": context,
                "channel": channel,
                "name": name,
                "id": event_id,
                "token": token,
                "delay": delay_s,
            },
        )
        return str(rows[0][0]) if rows else None

    # -- configuration ----------------------------------------------------------
    async def configure(self, context: str, channel: str, name: str, config: ConsumerConfig) -> bool:
        """Create the consumer or update its settings; True if it was created."""
        p = {"context": context, "channel": channel, "name": name}

        async def work(cur: Cursor) -> bool:
            row, created = await self._lock(cur, p, config)
            assert row is not None
            if not created:
                await cur.execute(
                    "UPDATE consumers SET mode = %(mode)s, lease_s = %(lease)s,"
                    " max_deliveries = %(max)s WHERE id = %(cid)s",
                    {
                        "cid": row.id,
                        "mode": config.mode,
                        "lease": config.lease_s,
                        "max": config.max_deliveries,
                    },
                )
            await cur.execute(f"SELECT {_NOTIFY}", p)
            return created

        return await self.database.transaction(work)

    async def delete(self, context: str, channel: str, name: str) -> bool:
        rows = await self.database.query(
            f"DELETE FROM consumers c WHERE {_CONSUMER} RETURNING id",
            {"context": context, "channel": channel, "name": name},
        )
        return bool(rows)

    # -- reading ----------------------------------------------------------------
    async def status(self, context: str, channel: str, name: str | None = None) -> list[ConsumerStatus]:
        """The consumers of a channel (or the one named), by name."""
        where = _CONSUMER if name is not None else ("c.context = %(context)s AND c.channel = %(channel)s")
        rows = await self.database.query(
            f"SELECT {_STATUS_COLUMNS}"
            " FROM consumers c CROSS JOIN LATERAL ("
            "   SELECT min(e.event_id) FILTER (WHERE NOT e.dead) AS first_pending,"
            "          count(*) FILTER (WHERE NOT e.dead) AS pending,"
            "          count(*) FILTER (WHERE e.in_flight) AS in_flight,"
            "          count(*) FILTER (WHERE e.dead) AS dead"
            f"   FROM (SELECT e.event_id, {_DEAD.format(now=_STATEMENT_NOW)} AS dead,"
            f"          {_IN_FLIGHT.format(now=_STATEMENT_NOW)} AS in_flight"
            "          FROM consumer_events e WHERE e.consumer_id = c.id) e"
            " ) s"
            f" WHERE {where} ORDER BY c.name",
            {"context": context, "channel": channel, "name": name},
        )
        return [ConsumerStatus(*row) for row in rows]

    async def dead(
        self, context: str, channel: str, name: str, after: int = 0, limit: int = pages.PAGE_SIZE
    ) -> tuple[list[DeadEvent], bool]:
        """Dead letters after ``after`` by id, a page (:mod:`.pages`) and whether more follow."""
        p = {"context": context, "channel": channel, "name": name, "after": after}
        rows = await self.database.query(
            f"SELECT {_DEAD_EVENT_COLUMNS}, e.deliveries FROM consumers c"
            " JOIN channels ch ON ch.context = c.context AND ch.channel = c.channel"
            " JOIN consumer_events e ON e.consumer_id = c.id"
            " JOIN events ev ON ev.channel_id = ch.id AND ev.id = e.event_id"
            f" WHERE {_CONSUMER} AND {_DEAD.format(now=_STATEMENT_NOW)} AND e.event_id > %(after)s"
            " ORDER BY e.event_id LIMIT %(limit)s",
            {**p, "limit": limit + 1, "small": max(1, pages.PAGE_BYTES // limit)},
        )
        if not rows and not after and not await self._exists(p):
            raise NotFound(f"no consumer {name} on {context}/{channel}")
        kept = pages.within(rows[:limit], pages.PAGE_BYTES)
        events = await pages.complete(self.database, context, channel, kept)
        return [DeadEvent(e, row[-1]) for e, row in zip(events, kept, strict=False)], len(kept) < len(rows)

    async def retry(self, context: str, channel: str, name: str, event_id: int) -> None:
        """Make a dead event available again with its deliveries reset; 404
        if the consumer is unknown or that event is not dead."""
        p = {"context": context, "channel": channel, "name": name, "id": event_id}

        async def work(cur: Cursor) -> None:
            row, _ = await self._lock(cur, p, None)
            if row is None:
                raise NotFound(f"no consumer {name} on {context}/{channel}")
            q = dict(p, cid=row.id, max=row.max_deliveries, now=await self._now(cur))
            await cur.execute(
                "UPDATE consumer_events e"
                "   SET state = 'available', deliveries = 0, available_at = %(now)s,"
                "       lease_token = NULL, lease_until = NULL"
                "  FROM consumers c"
                " WHERE c.id = e.consumer_id AND e.consumer_id = %(cid)s"
                f"   AND e.event_id = %(id)s AND {_DEAD.format(now=_LOCKED_NOW)}"
                " RETURNING e.event_id",
                q,
            )
            if not cur.fetchall():
                raise NotFound(f"event {event_id} is not dead for consumer {name}")
            await cur.execute(f"SELECT {_NOTIFY}", p)

        await self.database.transaction(work)

    # -- plumbing ---------------------------------------------------------------
    async def _exists(self, p: dict[str, Any]) -> bool:
        return bool(await self.database.query(f"SELECT 1 FROM consumers c WHERE {_CONSUMER}", p))

    async def _now(self, cur: Cursor) -> Any:
        await cur.execute("SELECT clock_timestamp()")
        return cur.fetchone()[0]

    async def _lock(
        self, cur: Cursor, p: dict[str, Any], create: ConsumerConfig | None
    ) -> tuple[_Consumer | None, bool]:
        """Lock the consumer's row, creating it from ``create`` if given.

        Returns (the row or None, whether this transaction created it).
        """
        select = f"SELECT {_CONSUMER_COLUMNS} FROM consumers c WHERE {_CONSUMER} FOR UPDATE"
        await cur.execute(select, p)
        row = cur.fetchone()
        if row is not None or create is None:
            return (None if row is None else _Consumer(*row)), False
        # Where the channel starts now, and no prune under way or until we commit.
        await cur.execute(retention.SHARED_CHANNEL_LOCK, p)
        start = {"earliest": "1", "latest": f"{_HEAD} + 1"}.get(str(create.start), "%(start)s::bigint")
        # An id below what retention deleted starts at the first stored
        # event; the ones in between count as expired ("earliest" skips none).
        skipped = f"greatest(0, {retention.PRUNED_TO} + 1 - {start})"
        if create.start == "earliest":
            skipped = "0"
        await cur.execute(
            "INSERT INTO consumers (context, channel, name, mode, lease_s, max_deliveries,"
            "    next_new, expired, missed)"
            " VALUES (%(context)s, %(channel)s, %(name)s, %(mode)s, %(lease)s, %(max)s,"
            f"    greatest({start}, {retention.PRUNED_TO} + 1), {skipped}, {skipped})"
            " ON CONFLICT (context, channel, name) DO NOTHING"
            f" RETURNING {_CONSUMER_COLUMNS}",
            dict(p, mode=create.mode, lease=create.lease_s, max=create.max_deliveries, start=create.start),
        )
        row = cur.fetchone()
        if row is not None:
            return _Consumer(*row), True
        # Created by a concurrent transaction that has committed meanwhile.
        await cur.execute(select, p)
        row = cur.fetchone()
        return (None if row is None else _Consumer(*row)), False
