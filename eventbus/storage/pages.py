"""Reads of runs of events, bounded in bytes as well as in count.

Invariant: a read of a run of events (a page of history, an SSE catch-up, a
wake-up's read-ahead, a webhook loop's batch) holds at most ``max_bytes`` of
payload, or one event if that one alone is larger, whatever the events'
sizes; and the payloads it leaves out are never fetched from the database.

How: every event row carries the size of its payload (``events.payload_size``,
a column PostgreSQL computes, migration 6).  A read asks for
its rows with each payload only if it is *small* (at most the budget divided
by the row limit, so all the small ones together fit the budget) and always
with its size; it keeps rows in id order while the sizes add up to the
budget, and then fetches by id the few large payloads it kept, in a second
round trip that the common case (small events) never needs.  A window
function (a running sum in SQL) would cut the page in one round trip, but it
costs every page about 40 % more database time even when every event is
small.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from itertools import accumulate
from operator import itemgetter

from eventbus.model import Event
from eventbus.storage.database import Database, Row, select_list

#: Events fetched per round trip when streaming a channel.
PAGE_SIZE = 1000
#: Payload bytes of one read of a run of events, whatever their count (but
#: always at least one event, which may be larger).  What one reading client
#: costs the server is bounded by this, not by the count: 1,000 events of
#: 1 MiB each would be a gigabyte.
PAGE_BYTES = 1024 * 1024

#: The channel's row id, from the ``context`` and ``channel`` parameters.
CHANNEL_ID = "(SELECT id FROM channels WHERE context = %(context)s AND channel = %(channel)s)"


def slim_columns(e: str) -> str:
    """The columns of an :class:`Event` from ``events <e>``, its payload only
    if it is at most ``%(small)s`` octets (else NULL), then its size: what
    :func:`within` and :func:`complete` take.  The size is a stored
    generated column (migration 6): PostgreSQL cannot tell the length of a
    json value without reading it, from TOAST for a large one."""
    size = f"{e}.payload_size"
    return (
        select_list(
            Event,
            id=f"{e}.id",
            timestamp=f"extract(epoch FROM {e}.ts)::float8",
            issuer=f"{e}.issuer",
            payload=f"CASE WHEN {size} <= %(small)s THEN {e}.payload::text END",
        )
        + f", {size} AS size"
    )


SLIM_COLUMNS = slim_columns("e")
PAGE_SQL = (
    f"/* eventbus_page */ SELECT {SLIM_COLUMNS} FROM events e"
    f" WHERE e.channel_id = {CHANNEL_ID} AND e.id > %(after)s AND e.id <= %(upto)s"
    " ORDER BY e.id LIMIT %(limit)s"
)
BY_ID_SQL = (
    f"/* eventbus_by_id */ SELECT {SLIM_COLUMNS} FROM events e"
    f" WHERE e.channel_id = {CHANNEL_ID} AND e.id = ANY(%(ids)s) ORDER BY e.id"
)
PAYLOADS_SQL = (
    "/* eventbus_payloads */ SELECT e.id, e.payload::text FROM events e"
    f" WHERE e.channel_id = {CHANNEL_ID} AND e.id = ANY(%(ids)s)"
)


#: Of a row of :func:`slim_columns`: the size, the payload (None if left
#: out), the event's fields.  (Pages are the hot path of history and SSE:
#: these keep the per-row work in C.)
_SIZE = itemgetter(4)
_PAYLOAD = itemgetter(3)
_FIELDS = itemgetter(0, 1, 2, 3)


class Page(list[Event]):
    """Events of one channel in id order, as :func:`page` read them.

    ``cut``: the read stopped at its count or byte limit, so more events
    follow in the range asked for; False: the range holds no more.
    """

    __slots__ = ("cut",)

    def __init__(self, events: Iterable[Event] = (), cut: bool = False) -> None:
        super().__init__(events)
        self.cut = cut


async def page(
    database: Database,
    context: str,
    channel: str,
    after: int,
    upto: int,
    limit: int = PAGE_SIZE,
    max_bytes: int = PAGE_BYTES,
) -> Page:
    """Events with after < id <= upto, in id order: at most ``limit``, and no
    more than ``max_bytes`` of payload (but at least one event)."""
    rows = await database.query(
        PAGE_SQL,
        {
            "context": context,
            "channel": channel,
            "after": after,
            "upto": upto,
            # One row more tells whether the range holds more.
            "limit": limit + 1,
            "small": max(1, max_bytes // limit),
        },
    )
    kept = within(rows[:limit], max_bytes)
    return Page(await complete(database, context, channel, kept), cut=len(kept) < len(rows))


async def by_id(
    database: Database,
    context: str,
    channel: str,
    ids: set[int],
    ahead: Iterable[int] = (),
    max_bytes: int = PAGE_BYTES,
) -> dict[int, Event]:
    """Every one of ``ids`` that exists, and of ``ahead`` those that fit, in
    id order, within ``max_bytes`` of payload (``ids`` count towards it)."""
    wanted = sorted(ids.union(ahead))
    if not wanted:
        return {}
    rows = await database.query(
        BY_ID_SQL,
        {"context": context, "channel": channel, "ids": wanted, "small": max(1, max_bytes // len(wanted))},
    )
    kept: list[Row] = []
    total = 0
    for row in rows:
        total += row[-1]
        if row[0] in ids or total <= max_bytes:
            kept.append(row)
    return {event.id: event for event in await complete(database, context, channel, kept)}


def within(rows: list[Row], max_bytes: int) -> list[Row]:
    """The longest prefix of rows of :func:`slim_columns` within ``max_bytes``
    of payload, and at least one row."""
    if sum(map(_SIZE, rows)) <= max_bytes:
        return rows
    return rows[: bisect_right(list(accumulate(map(_SIZE, rows))), max_bytes) or 1]


async def complete(database: Database, context: str, channel: str, rows: list[Row]) -> list[Event]:
    """The events of rows of :func:`slim_columns` (further columns are
    ignored), their large payloads fetched (one more round trip, only if
    there are any); a prefix if an event has gone meanwhile."""
    if None not in map(_PAYLOAD, rows):
        return list(map(Event._make, map(_FIELDS, rows)))
    large = [row[0] for row in rows if row[3] is None]
    payloads: dict[int, str] = {}
    if large:
        found = await database.query(PAYLOADS_SQL, {"context": context, "channel": channel, "ids": large})
        payloads = dict(found)
    events = []
    for event_id, timestamp, issuer, payload, *_ in rows:
        if payload is None:
            payload = payloads.get(event_id)
            if payload is None:
                break  # gone meanwhile: what was read stays a prefix
        events.append(Event(event_id, timestamp, issuer, payload))
    return events
