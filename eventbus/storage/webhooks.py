"""Every SQL statement of webhook subscriptions (``schema/004_webhooks.sql``).

Who delivers
------------
A subscription is delivered by the one process named in its ``owner``
column, for as long as ``lease_until`` lies in the future.  Every process
runs :meth:`WebhookStore.claim` every few seconds: it renews its own leases
and takes the subscriptions that have no owner or whose lease ran out (its
owner died or lost the database).  All times are the database's clock, so the
processes' clocks never have to agree.

Fencing: every write a deliverer makes (moving a cursor, counting a failure,
disabling) first takes ``FOR SHARE`` on the subscription row *with
owner = me*.  A process whose subscription was taken over writes nothing and
learns that it lost it; and a claim (an ``UPDATE`` of that row) waits for a
cursor write in progress, so the new owner reads the cursor only after it.
Hence a stale owner can deliver at most the one event it had in flight.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

import dataclasses

from eventbus.model import ALL_CHANNELS, ChannelState, Claimed, Start, SubscriptionState
from eventbus.storage.database import Cursor, Database, select_list

_LOCK_MINE = "SELECT id FROM webhook_subscriptions WHERE id = %(sid)s AND owner = %(owner)s FOR SHARE"


_CLAIMED_COLUMNS = select_list(
    Claimed, id="id", context="context", channel="channel", url="url", secret="secret"
)
_SUBSCRIPTION_COLUMNS = select_list(
    SubscriptionState,
    id="id",
    context="context",
    channel="channel",
    url="url",
    created="extract(epoch FROM created)::float8",
    disabled_at="extract(epoch FROM disabled_at)::float8",
    disabled_reason="disabled_reason",
    owner="CASE WHEN lease_until > clock_timestamp() THEN owner END",
)
_CHANNEL_STATE_COLUMNS = select_list(
    ChannelState,
    channel="n.channel",
    delivered_id="coalesce(c.delivered_id, 0)",
    head="coalesce(ch.last_id, 0)",
    failures="coalesce(c.failures, 0)",
    failing_since="extract(epoch FROM c.failing_since)::float8",
    last_attempt="extract(epoch FROM c.last_attempt)::float8",
    last_status="c.last_status",
    last_error="c.last_error",
    expired="coalesce(c.expired, 0)",
)


class WebhookStore:
    """Subscriptions, their per-channel cursors and their delivery leases."""

    def __init__(self, database: Database) -> None:
        self.database = database

    # -- the API's side ----------------------------------------------------
    async def create(
        self, context: str, channel: str, url: str, secret: str, start: Start
    ) -> SubscriptionState:
        async def work(cur: Cursor) -> int:
            await cur.execute(
                "INSERT INTO webhook_subscriptions (context, channel, url, secret)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (context, channel, url, secret),
            )
            sid = cur.fetchone()[0]
            if channel == ALL_CHANNELS:
                # Channels created later start from 0 (all of their events
                # are newer than the subscription): no row needed for them.
                if start == "latest":
                    await cur.execute(
                        "INSERT INTO webhook_cursors (subscription_id, channel, delivered_id)"
                        " SELECT %s, channel, last_id FROM channels WHERE context = %s",
                        (sid, context),
                    )
                else:  # "earliest": the first event stored (retention deleted the rest)
                    await cur.execute(
                        "INSERT INTO webhook_cursors (subscription_id, channel, delivered_id)"
                        " SELECT %s, c.channel, r.pruned_to"
                        "   FROM channels c JOIN channel_retention r ON r.channel_id = c.id"
                        "  WHERE c.context = %s AND r.pruned_to > 0",
                        (sid, context),
                    )
            elif start == "latest":
                await cur.execute(
                    "INSERT INTO webhook_cursors (subscription_id, channel, delivered_id)"
                    " SELECT %s, %s, coalesce((SELECT last_id FROM channels"
                    "   WHERE context = %s AND channel = %s), 0)",
                    (sid, channel, context, channel),
                )
            elif start == "earliest":  # the first event stored (retention)
                await cur.execute(
                    "INSERT INTO webhook_cursors (subscription_id, channel, delivered_id)"
                    " SELECT %s, %s, coalesce((SELECT r.pruned_to FROM channels c"
                    "   JOIN channel_retention r ON r.channel_id = c.id"
                    "  WHERE c.context = %s AND c.channel = %s), 0)",
                    (sid, channel, context, channel),
                )
            else:
                await cur.execute(
                    "INSERT INTO webhook_cursors (subscription_id, channel, delivered_id)"
                    " VALUES (%s, %s, %s)",
                    (sid, channel, int(start) - 1),
                )
            return sid

        sid = await self.database.transaction(work)
        return (await self.states(sid))[0]

    async def states(self, sid: int | None = None) -> list[SubscriptionState]:
        """One subscription's state (``sid``), or every subscription's, by id."""
        params = {"sid": sid}
        subs = await self.database.query(
            f"SELECT {_SUBSCRIPTION_COLUMNS}"
            "  FROM webhook_subscriptions"
            " WHERE %(sid)s::bigint IS NULL OR id = %(sid)s::bigint ORDER BY id",
            params,
        )
        if not subs:
            return []
        # Per channel: those with a cursor, plus, for '*', every channel of
        # the context (a channel not delivered to yet has cursor 0).
        rows = await self.database.query(
            "WITH s AS (SELECT id, context, channel FROM webhook_subscriptions"
            "            WHERE %(sid)s::bigint IS NULL OR id = %(sid)s::bigint),"
            " names AS (SELECT c.subscription_id AS sid, c.channel"
            "             FROM webhook_cursors c JOIN s ON s.id = c.subscription_id"
            "           UNION"
            "           SELECT s.id, ch.channel FROM s JOIN channels ch ON ch.context = s.context"
            "            WHERE s.channel = '*')"
            f" SELECT n.sid, {_CHANNEL_STATE_COLUMNS}"
            "   FROM names n JOIN s ON s.id = n.sid"
            "   LEFT JOIN webhook_cursors c ON c.subscription_id = n.sid AND c.channel = n.channel"
            "   LEFT JOIN channels ch ON ch.context = s.context AND ch.channel = n.channel"
            "  ORDER BY n.sid, n.channel",
            params,
        )
        channels: dict[int, list[ChannelState]] = {}
        for row in rows:
            channels.setdefault(row[0], []).append(ChannelState(*row[1:]))
        states = (SubscriptionState(*row) for row in subs)
        return [dataclasses.replace(s, channels=channels.get(s.id, [])) for s in states]

    async def delete(self, sid: int) -> bool:
        rows = await self.database.query(
            "DELETE FROM webhook_subscriptions WHERE id = %s RETURNING id", (sid,)
        )
        return bool(rows)

    async def enable(self, sid: int) -> bool:
        """Re-enable (also when not disabled) and forget past failures."""

        async def work(cur: Cursor) -> bool:
            await cur.execute(
                "UPDATE webhook_subscriptions SET disabled_at = NULL, disabled_reason = NULL"
                " WHERE id = %s RETURNING id",
                (sid,),
            )
            if not cur.fetchall():
                return False
            await cur.execute(
                "UPDATE webhook_cursors SET failures = 0, failing_since = NULL WHERE subscription_id = %s",
                (sid,),
            )
            return True

        return await self.database.transaction(work)

    # -- the deliverer's side ------------------------------------------------
    async def claim(self, owner: str, lease_s: float) -> list[Claimed]:
        """Renew this owner's leases and take every free or expired one.

        Returns everything ``owner`` now holds.  A plain UPDATE re-checks its
        WHERE after waiting for a competing claim, so a row is never taken
        by two processes.
        """
        rows = await self.database.query(
            "UPDATE webhook_subscriptions"
            "   SET owner = %(owner)s,"
            "       lease_until = clock_timestamp() + %(lease)s * interval '1 second'"
            " WHERE disabled_at IS NULL"
            "   AND (owner = %(owner)s OR owner IS NULL OR lease_until < clock_timestamp())"
            f" RETURNING {_CLAIMED_COLUMNS}",
            {"owner": owner, "lease": lease_s},
        )
        return [Claimed(*row) for row in rows]

    async def release(self, owner: str) -> None:
        """Give up every lease at shutdown, so another process takes over at once."""
        await self.database.query(
            "UPDATE webhook_subscriptions SET owner = NULL, lease_until = NULL WHERE owner = %s RETURNING id",
            (owner,),
            timeout=3.0,
        )

    async def pending_channels(self, sid: int, context: str) -> list[str]:
        """Channels of the context with events past the subscription's cursor."""
        rows = await self.database.query(
            "SELECT ch.channel FROM channels ch"
            "  LEFT JOIN webhook_cursors c ON c.subscription_id = %(sid)s AND c.channel = ch.channel"
            " WHERE ch.context = %(context)s AND ch.last_id > coalesce(c.delivered_id, 0)"
            " ORDER BY ch.channel",
            {"sid": sid, "context": context},
        )
        return [row[0] for row in rows]

    async def cursor(self, sid: int, channel: str, owner: str) -> tuple[int, int] | None:
        """The last delivered id of a channel (creating it at 0), and the
        events skipped since (retention) not yet reported; None if not ours."""
        rows = await self.database.query(
            f"WITH s AS ({_LOCK_MINE}),"
            " ins AS (INSERT INTO webhook_cursors (subscription_id, channel, delivered_id)"
            "         SELECT id, %(channel)s, 0 FROM s"
            "         ON CONFLICT DO NOTHING RETURNING delivered_id, missed)"
            " SELECT delivered_id, missed FROM ins"
            " UNION ALL"
            " SELECT c.delivered_id, c.missed FROM webhook_cursors c JOIN s ON c.subscription_id = s.id"
            "  WHERE c.channel = %(channel)s",
            {"sid": sid, "channel": channel, "owner": owner},
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def skipped(self, sid: int, channel: str, owner: str, first_id: int) -> int | None:
        """Move the cursor past events retention deleted, up to ``first_id`` - 1,
        counting them; the events skipped and not yet reported, or None if
        not ours any more."""
        rows = await self.database.query(
            f"WITH s AS ({_LOCK_MINE}), n AS (SELECT greatest(0, %(first)s - 1 - c.delivered_id) AS n"
            "   FROM webhook_cursors c JOIN s ON c.subscription_id = s.id WHERE c.channel = %(channel)s)"
            " UPDATE webhook_cursors c"
            "    SET delivered_id = greatest(c.delivered_id, %(first)s - 1),"
            "        expired = c.expired + n.n, missed = c.missed + n.n"
            "   FROM s, n WHERE c.subscription_id = s.id AND c.channel = %(channel)s"
            " RETURNING c.missed",
            {"sid": sid, "channel": channel, "owner": owner, "first": first_id},
        )
        return rows[0][0] if rows else None

    async def delivered(self, sid: int, channel: str, owner: str, event_id: int, status: int) -> bool:
        """Move the cursor past an acknowledged event; False if not ours any more."""
        rows = await self.database.query(
            f"WITH s AS ({_LOCK_MINE})"
            " UPDATE webhook_cursors c"
            "    SET delivered_id = greatest(c.delivered_id, %(id)s), failures = 0, missed = 0,"
            "        failing_since = NULL, last_attempt = clock_timestamp(),"
            "        last_status = %(status)s, last_error = NULL"
            "   FROM s WHERE c.subscription_id = s.id AND c.channel = %(channel)s"
            " RETURNING c.delivered_id",
            {"sid": sid, "channel": channel, "owner": owner, "id": event_id, "status": status},
        )
        return bool(rows)

    async def failed(
        self, sid: int, channel: str, owner: str, status: int | None, error: str
    ) -> tuple[int, float] | None:
        """Count a failed attempt; return (consecutive failures, seconds failing),
        or None if the subscription is not ours any more."""
        rows = await self.database.query(
            f"WITH s AS ({_LOCK_MINE})"
            " UPDATE webhook_cursors c"
            "    SET failures = c.failures + 1,"
            "        failing_since = coalesce(c.failing_since, clock_timestamp()),"
            "        last_attempt = clock_timestamp(), last_status = %(status)s,"
            "        last_error = %(error)s"
            "   FROM s WHERE c.subscription_id = s.id AND c.channel = %(channel)s"
            " RETURNING c.failures,"
            "           extract(epoch FROM clock_timestamp() - c.failing_since)::float8",
            {"sid": sid, "channel": channel, "owner": owner, "status": status, "error": error},
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def disable(self, sid: int, owner: str, reason: str) -> bool:
        rows = await self.database.query(
            "UPDATE webhook_subscriptions"
            "   SET disabled_at = clock_timestamp(), disabled_reason = %s,"
            "       owner = NULL, lease_until = NULL"
            " WHERE id = %s AND owner = %s RETURNING id",
            (reason, sid, owner),
        )
        return bool(rows)
