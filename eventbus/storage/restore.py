"""Restoring exported events into a channel, with their ids and timestamps.

Invariant: a restore never reuses an id and leaves a channel exactly as if
its events had been published (and those below the first pruned by
retention: ``pruned_to``, consumers' ``next_new`` and ``expired``): one
transaction per batch locks the channel's row, checks that its last id is
the one the batch continues (``after``: 0 for a channel that never had an
event), inserts the batch's gap-free ids after it with their timestamps
(never earlier than the channel's latest), and moves ``last_id`` and
``last_ts`` to the batch's last, so the next publish gets the last id + 1
and a timestamp no earlier, and every reader (peek, SSE, consumers,
webhooks) is announced the new head by the same NOTIFY as a publish.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from typing import NamedTuple

from eventbus.errors import Conflict, InvalidInput
from eventbus.model import Event
from eventbus.storage.database import Cursor, Database
from eventbus.storage.notify import notify_sql
from eventbus.storage.retention import PRUNE_SQL

#: Lock the channel's row, creating it (empty) if it does not exist.
_CREATE = (
    "INSERT INTO channels (context, channel, last_id, last_ts)"
    " VALUES (%(context)s, %(channel)s, 0, timestamptz 'epoch') ON CONFLICT (context, channel) DO NOTHING"
)
_LOCK = (
    "SELECT id, last_id, (extract(epoch FROM last_ts) * 1000000)::bigint FROM channels"
    " WHERE context = %(context)s AND channel = %(channel)s FOR UPDATE"
)
#: Timestamps travel as integer microseconds since the epoch: exact both ways.
_INSERT = """/* eventbus_restore */
INSERT INTO events (channel_id, id, ts, issuer, payload)
SELECT %(cid)s, e.id, timestamptz 'epoch' + e.us * interval '1 microsecond',
       (%(issuers)s::text[])[e.iss], e.payload
  FROM ROWS FROM (unnest(%(ids)s::bigint[]), unnest(%(us)s::bigint[]), unnest(%(iss)s::int[]),
                  json_array_elements(%(payloads)s::json)) AS e(id, us, iss, payload)
"""
_MOVE = (
    "UPDATE channels SET last_id = %(last_id)s, last_ts = timestamptz 'epoch' + %(last_us)s * interval '1 microsecond'"
    f" WHERE id = %(cid)s RETURNING {notify_sql('context', 'channel', 'last_id')}"
)


class Restored(NamedTuple):
    """One event to restore: its id, its timestamp in microseconds, its issuer
    and its payload's JSON text."""

    id: int
    micros: int
    issuer: str
    payload: str


class RestoreStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def restore(self, context: str, channel: str, after: int, events: list[Restored]) -> list[Event]:
        """Store ``events`` (gap-free ids, timestamps in order: the caller
        checked) after the channel's last id ``after``; the stored events.
        :class:`Conflict` if the channel's last id is not ``after``."""
        first = events[0]
        if after and first.id != after + 1:
            raise InvalidInput(f"the batch after id {after} must start with id {after + 1}, not {first.id}")
        issuers: dict[str, str] = {}
        iss = [issuers.setdefault(e.issuer, str(len(issuers) + 1)) for e in events]
        params = {
            "context": context,
            "channel": channel,
            "ids": "{" + ",".join(str(e.id) for e in events) + "}",
            "us": "{" + ",".join(str(e.micros) for e in events) + "}",
            "iss": "{" + ",".join(iss) + "}",
            "issuers": list(issuers),
            "payloads": "[" + ",".join(e.payload for e in events) + "]",
            "last_id": events[-1].id,
            "last_us": events[-1].micros,
        }

        async def work(cur: Cursor) -> None:
            await cur.execute(_CREATE, params)
            await cur.execute(_LOCK, params)
            cid, last_id, last_us = cur.fetchone()
            if last_id != after:
                raise Conflict(
                    f"{context}/{channel} ends at id {last_id}, not at {after}"
                    + (": a restore goes into a channel that never had an event" if not after else ""),
                    details={"last_id": last_id},
                )
            if after and first.micros < last_us:
                raise InvalidInput(f"event {first.id} is older than the channel's last event")
            params["cid"] = cid
            if not after and first.id > 1:
                # The export began after a prune: the ids below it count as
                # deleted by retention here too (pruned_to; consumers skip
                # and count them), exactly as a prune of an empty run does.
                await cur.execute(PRUNE_SQL, dict(params, upto=first.id - 1))
            await cur.execute(_INSERT, params)
            await cur.execute(_MOVE, params)

        await self.database.transaction(work)
        return [Event(e.id, e.micros / 1e6, e.issuer, e.payload) for e in events]
