"""Every SQL statement of the pruner (``schema/008_retention.sql``).

What is stored: the events of a channel are exactly ``pruned_to + 1 ..
last_id`` (``channel_retention.pruned_to``, 0 by default; ``channels.last_id``).
:meth:`RetentionStore.prune` deletes a run at the bottom of a channel and
raises ``pruned_to`` in one transaction, so what is stored stays gapless,
and ids are never reused: the counter in ``channels`` is never lowered.
Appends never touch ``channel_retention``, and the pruner never touches the
channel row, so pruning never waits for a publish nor a publish for it.

Coordination, with transaction-scoped locks only (no session state, so a
pooler in transaction mode may sit in front of the database):

* which process prunes: one lease row, ``retention_pruner`` (owner and
  ``lease_until`` on the database's clock), renewed every round;
* per channel: the pruning transaction takes
  ``pg_advisory_xact_lock(PRUNE_LOCK, hashtext('<context>/<channel>'))``
  and then the rows of the channel's consumers ``FOR UPDATE``.  A leasing
  round holds its consumer's row lock, so a lease taken before the prune
  is seen by it and none is taken during it; a consumer being *created*
  holds the same advisory lock in shared mode (:data:`SHARED_CHANNEL_LOCK`)
  while it reads where the channel starts, so it never starts below what a
  concurrent prune deletes.  Two pruners on one channel queue on the lock.

What a prune does to consumers: it never deletes an event a consumer holds
on an unexpired lease, nor anything above one (what is stored stays
gapless); it deletes the consumer rows of the events it deletes, counting
those not dead in ``expired`` and ``missed``, and moves ``next_new`` past the
deleted run, counting what it skips the same way.  Dead letters are
deleted with their events and not counted (they were delivered, and given up on).

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from typing import NamedTuple

from eventbus.model import Retention
from eventbus.storage import consumer_rows
from eventbus.storage.database import Database

#: First key of the per-channel advisory locks ("prun" in ASCII): its own
#: key space, apart from the migrations' single bigint key.
PRUNE_LOCK = 0x7072756E
_CHANNEL_KEY = "hashtext(%(context)s || '/' || %(channel)s)"
#: Taken by a transaction that creates a consumer, before it reads pruned_to.
SHARED_CHANNEL_LOCK = f"SELECT pg_advisory_xact_lock_shared({PRUNE_LOCK}, {_CHANNEL_KEY})"
_CHANNEL_LOCK = f"SELECT pg_advisory_xact_lock({PRUNE_LOCK}, {_CHANNEL_KEY})"
#: The highest id retention deleted from the channel named by the
#: ``context`` and ``channel`` parameters (0: none).
PRUNED_TO = (
    "coalesce((SELECT r.pruned_to FROM channel_retention r JOIN channels ch ON ch.id = r.channel_id"
    " WHERE ch.context = %(context)s AND ch.channel = %(channel)s), 0)"
)

#: Every channel with something to delete under its effective policy (its
#: own settings, else the server's defaults ``%(max_age)s``/``%(max_events)s``)
#: and how far: past ``max_events`` from the head, and every event older than
#: ``max_age`` (timestamps never decrease within a channel, so that is a run
#: at the bottom, found on the (channel_id, ts, id) index).  Only committed
#: ids (up to the committed ``last_id``) are ever targets.
DUE_SQL = f"""/* eventbus_retention_due */
WITH p AS (
    SELECT c.id, c.context, c.channel, c.last_id, coalesce(r.pruned_to, 0) AS pruned_to,
           coalesce(r.max_age_s, %(max_age)s::float8) AS max_age,
           coalesce(r.max_events, %(max_events)s::bigint) AS max_events
      FROM channels c LEFT JOIN channel_retention r ON r.channel_id = c.id
     WHERE c.last_id > coalesce(r.pruned_to, 0)
       AND (r.max_age_s IS NOT NULL OR r.max_events IS NOT NULL
            OR %(max_age)s::float8 IS NOT NULL OR %(max_events)s::bigint IS NOT NULL)
), t AS (
    SELECT p.*, greatest(
        coalesce(p.last_id - p.max_events, 0),
        CASE WHEN p.max_age IS NULL THEN 0 ELSE coalesce(
            (SELECT e.id - 1 FROM events e
              WHERE e.channel_id = p.id AND e.id > p.pruned_to
                AND e.ts >= {consumer_rows.CLOCK_NOW} - p.max_age * interval '1 second'
              ORDER BY e.ts, e.id LIMIT 1),
            p.last_id) END) AS target
      FROM p
)
SELECT id, context, channel, pruned_to, target FROM t WHERE target > pruned_to
 ORDER BY context, channel
"""

_DEAD = consumer_rows.DEAD.format(now=consumer_rows.CLOCK_NOW)
_IN_FLIGHT = consumer_rows.IN_FLIGHT.format(now=consumer_rows.CLOCK_NOW)
_OF_CHANNEL = "c.context = %(context)s AND c.channel = %(channel)s"
#: One batch, in one round trip: a multi-statement query runs as one
#: transaction (PostgreSQL's implicit transaction block), so the locks are
#: transaction-scoped and nothing is left on the session.  In order: the
#: channel's advisory lock; its consumers' rows; then, in one snapshot taken
#: after both, how far to go (``%(upto)s``, or below the lowest event a
#: consumer holds on an unexpired lease), the events' DELETE by primary
#: key, ``pruned_to``, and the consumers' side: their rows of deleted events
#: go (those not dead are counted) and ``next_new`` moves past the run
#: (what it skips is counted).  Returns where the channel was, where it is
#: now, and how many events went.
PRUNE_SQL = f"""/* eventbus_retention_prune */
{_CHANNEL_LOCK};
SELECT c.id FROM consumers c WHERE {_OF_CHANNEL} ORDER BY c.id FOR UPDATE;
WITH b AS (
    SELECT coalesce((SELECT r.pruned_to FROM channel_retention r WHERE r.channel_id = %(cid)s), 0) AS from_id,
           least(%(upto)s::bigint, coalesce((
               SELECT min(e.event_id) - 1 FROM consumer_events e JOIN consumers c ON c.id = e.consumer_id
                WHERE {_OF_CHANNEL} AND {_IN_FLIGHT}), %(upto)s::bigint)) AS upto
), run AS (
    SELECT from_id, upto FROM b WHERE upto > from_id
), del AS (
    DELETE FROM events e USING run WHERE e.channel_id = %(cid)s AND e.id > run.from_id AND e.id <= run.upto
    RETURNING e.id
), mark AS (
    INSERT INTO channel_retention AS r (channel_id, pruned_to) SELECT %(cid)s, upto FROM run
    ON CONFLICT (channel_id) DO UPDATE SET pruned_to = greatest(r.pruned_to, EXCLUDED.pruned_to)
    RETURNING r.pruned_to
), gone AS (
    DELETE FROM consumer_events e USING consumers c, run
     WHERE {_OF_CHANNEL} AND e.consumer_id = c.id AND e.event_id <= run.upto
    RETURNING e.consumer_id, NOT {_DEAD} AS counted
), n AS (
    SELECT consumer_id, count(*) FILTER (WHERE counted) AS n FROM gone GROUP BY consumer_id
), s AS (
    SELECT c.id, coalesce(n.n, 0) + greatest(0, run.upto + 1 - c.next_new) AS skipped
      FROM consumers c CROSS JOIN run LEFT JOIN n ON n.consumer_id = c.id
     WHERE {_OF_CHANNEL}
), moved AS (
    UPDATE consumers c
       SET expired = c.expired + s.skipped, missed = c.missed + s.skipped,
           next_new = greatest(c.next_new, run.upto + 1)
      FROM s, run WHERE c.id = s.id AND (s.skipped > 0 OR c.next_new <= run.upto)
    RETURNING c.id
)
SELECT b.from_id, greatest(b.from_id, b.upto), (SELECT count(*) FROM del) FROM b
"""


class Due(NamedTuple):
    """A channel with events to delete: from ``pruned_to`` + 1 up to ``target``."""

    channel_id: int
    context: str
    channel: str
    pruned_to: int
    target: int


class RetentionStore:
    """The pruner's statements: who prunes, what is due, one batch."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def lead(self, owner: str, lease_s: float) -> bool:
        """Take or renew the pruner's lease; False while another process holds it."""
        found = await self.database.query(
            "UPDATE retention_pruner"
            "   SET owner = %(owner)s, lease_until = clock_timestamp() + %(lease)s * interval '1 second'"
            " WHERE owner = %(owner)s OR owner IS NULL OR lease_until < clock_timestamp()"
            " RETURNING owner",
            {"owner": owner, "lease": lease_s},
        )
        return bool(found)

    async def release(self, owner: str) -> None:
        """Give the lease up (at shutdown), so another process takes over at once."""
        await self.database.query(
            "UPDATE retention_pruner SET owner = NULL, lease_until = NULL WHERE owner = %s RETURNING id",
            (owner,),
            timeout=3.0,
        )

    async def due(self, defaults: Retention) -> list[Due]:
        """Every channel with events to delete under its effective policy."""
        found = await self.database.query(
            DUE_SQL, {"max_age": defaults.max_age_s, "max_events": defaults.max_events}, timeout=30.0
        )
        return [Due(*row) for row in found]

    async def prune(self, due: Due, upto: int) -> tuple[int, int]:
        """Delete the channel's events up to ``upto`` (less if a consumer holds
        a lease on one), in one transaction (:data:`PRUNE_SQL`); (its
        ``pruned_to`` now, events deleted)."""
        found = await self.database.query(
            PRUNE_SQL, {"cid": due.channel_id, "context": due.context, "channel": due.channel, "upto": upto}
        )
        _, reached, deleted = found[0]
        return int(reached), int(deleted)
