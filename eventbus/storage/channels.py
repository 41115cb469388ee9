"""Every SQL statement of channels as resources: what they store, their settings.

A channel exists once it has had an event or a retention setting: its row
in ``channels`` (created by its first append, or by its first setting with
``last_id`` 0) and, once it has settings or has been pruned, its row in
``channel_retention`` (``schema/008_retention.sql``).  What a channel stores
is ``pruned_to + 1 .. last_id`` (gapless), so its count and first id need no
scan, and its first timestamp is one primary-key lookup.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventbus.model import ChannelInfo, ChannelKey, Retention
from eventbus.storage.database import Cursor, Database, Row, select_list

_PRUNED_TO = "coalesce(r.pruned_to, 0)"
_INFO_COLUMNS = (
    select_list(
        ChannelInfo,
        context="c.context",
        channel="c.channel",
        last_id="c.last_id",
        pruned_to=_PRUNED_TO,
        first_timestamp="(SELECT extract(epoch FROM e.ts)::float8 FROM events e"
        f"  WHERE e.channel_id = c.id AND e.id = {_PRUNED_TO} + 1)",
        last_timestamp=f"CASE WHEN c.last_id > {_PRUNED_TO} THEN extract(epoch FROM c.last_ts)::float8 END",
    )
    + ", r.max_age_s, r.max_events"
)
#: A channel that never had an event and has no settings does not exist.
_EXISTS = "(c.last_id > 0 OR r.max_age_s IS NOT NULL OR r.max_events IS NOT NULL)"
#: The channel matches one of the patterns ``%(p_ctx)s``/``%(p_ch)s`` ('*': any).
_READABLE = (
    "EXISTS (SELECT 1 FROM unnest(%(p_ctx)s::text[], %(p_ch)s::text[]) AS p(ctx, ch)"
    " WHERE p.ctx IN ('*', c.context) AND p.ch IN ('*', c.channel))"
)
_FROM = "FROM channels c LEFT JOIN channel_retention r ON r.channel_id = c.id"


def _info(row: Row) -> ChannelInfo:
    context, channel, last_id, pruned_to, first_ts, last_ts, max_age_s, max_events = row
    return ChannelInfo(
        context, channel, last_id, pruned_to, first_ts, last_ts, settings=Retention(max_age_s, max_events)
    )


class ChannelStore:
    """Channels: what they hold, listed and one by one, and their settings."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def list(
        self,
        context: str | None,
        after: ChannelKey | None,
        limit: int,
        patterns: Sequence[ChannelKey] | None = None,
    ) -> list[ChannelInfo]:
        """Up to ``limit`` channels by context then channel, after ``after``;
        of one context (None: all); matching one of ``patterns`` (context,
        channel, each may be ``*``; None: any channel)."""
        where = [_EXISTS]
        p: dict[str, Any] = {"limit": limit}
        if context is not None:
            where.append("c.context = %(context)s")
            p["context"] = context
        if after is not None:
            where.append("(c.context, c.channel) > (%(a_ctx)s, %(a_ch)s)")
            p["a_ctx"], p["a_ch"] = after
        if patterns is not None:
            where.append(_READABLE)
            p["p_ctx"] = [ctx for ctx, _ in patterns]
            p["p_ch"] = [ch for _, ch in patterns]
        rows = await self.database.query(
            f"SELECT {_INFO_COLUMNS} {_FROM} WHERE {' AND '.join(where)}"
            " ORDER BY c.context, c.channel LIMIT %(limit)s",
            p,
        )
        return [_info(row) for row in rows]

    async def get(self, context: str, channel: str) -> ChannelInfo | None:
        rows = await self.database.query(
            f"SELECT {_INFO_COLUMNS} {_FROM}"
            f" WHERE c.context = %(context)s AND c.channel = %(channel)s AND {_EXISTS}",
            {"context": context, "channel": channel},
        )
        return _info(rows[0]) if rows else None

    async def configure(self, context: str, channel: str, changes: dict[str, float | int | None]) -> None:
        """Set the channel's retention settings named in ``changes``
        (``max_age_s``, ``max_events``; None: the server's default), leaving
        the others; creates the channel if it never had an event."""
        p: dict[str, Any] = {"context": context, "channel": channel}
        for name in ("max_age_s", "max_events"):
            p[name] = changes.get(name)
            p["set_" + name] = name in changes

        async def work(cur: Cursor) -> None:
            # Never locks an existing channel row: publishes go on meanwhile.
            await cur.execute(
                "INSERT INTO channels (context, channel, last_id, last_ts)"
                " VALUES (%(context)s, %(channel)s, 0, clock_timestamp())"
                " ON CONFLICT (context, channel) DO NOTHING",
                p,
            )
            await cur.execute(
                "INSERT INTO channel_retention (channel_id, max_age_s, max_events)"
                " SELECT id, %(max_age_s)s, %(max_events)s FROM channels"
                "  WHERE context = %(context)s AND channel = %(channel)s"
                " ON CONFLICT (channel_id) DO UPDATE SET"
                "  max_age_s = CASE WHEN %(set_max_age_s)s THEN EXCLUDED.max_age_s"
                "              ELSE channel_retention.max_age_s END,"
                "  max_events = CASE WHEN %(set_max_events)s THEN EXCLUDED.max_events"
                "               ELSE channel_retention.max_events END",
                p,
            )

        await self.database.transaction(work)
