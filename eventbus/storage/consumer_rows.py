"""What a row of ``consumer_events`` means, as SQL fragments, and what is read of them.

Shared by the consumer store (:mod:`.consumers`), which leases and reports,
and the pruner (:mod:`.retention`), which must tell the events a consumer
still holds (never deleted) from those it had yet to handle (counted as
expired) and from its dead letters (deleted, not counted).

Each fragment needs the aliases ``e`` (consumer_events) and ``c``
(consumers); ``{now}`` is the clock: a transaction's reading ``%(now)s``
under the consumer's lock (:data:`LOCKED_NOW`), or the statement's
(:data:`STATEMENT_NOW`, :data:`CLOCK_NOW`) for reads without it.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from eventbus.model import Backlog, ConsumerStatus
from eventbus.storage.database import select_list

#: An event row is dead when marked so, or when it has used up its
#: deliveries and is no longer leased (an expired lease, or put back by a
#: nack or a lowered max_deliveries).
DEAD = (
    "(e.state = 'dead' OR e.deliveries >= c.max_deliveries"
    " AND (e.state = 'available' OR e.lease_until <= {now}))"
)
#: Leased to an instance, and the lease has not expired.
IN_FLIGHT = "(e.state = 'leased' AND e.lease_until > {now})"
#: May be leased (again) now.
READY = (
    "(e.state = 'available' AND e.available_at <= %(now)s OR e.state = 'leased' AND e.lease_until <= %(now)s)"
)
LOCKED_NOW = "%(now)s"
STATEMENT_NOW = "now()"
CLOCK_NOW = "clock_timestamp()"
#: The consumer named by the parameters ``context``, ``channel``, ``name``.
CONSUMER = "c.context = %(context)s AND c.channel = %(channel)s AND c.name = %(name)s"
#: The channel's last id.
HEAD = "coalesce((SELECT last_id FROM channels WHERE context = %(context)s AND channel = %(channel)s), 0)"

#: A consumer's state: the cursor is derived (every id below the lowest
#: pending one, else below next_new, is acked or dead); the lag counts the
#: pending events and those never delivered, up to the channel's head.
STATUS_COLUMNS = select_list(
    ConsumerStatus,
    name="c.name",
    mode="c.mode",
    lease_s="c.lease_s",
    max_deliveries="c.max_deliveries",
    cursor="coalesce(s.first_pending, c.next_new) - 1",
    lag=f"s.pending + greatest(0, {HEAD} - c.next_new + 1)",
    in_flight="s.in_flight",
    dead="s.dead",
    expired="c.expired",
)
BACKLOG_COLUMNS = select_list(
    Backlog,
    mode="%(mode)s",
    next_new="%(next_new)s::bigint",
    head=HEAD,
    in_flight=f"count(*) FILTER (WHERE {IN_FLIGHT.format(now=LOCKED_NOW)})",
    first_pending="min(e.event_id)",
    first_ready=f"min(e.event_id) FILTER (WHERE {READY})",
    next_change_s="extract(epoch FROM min(CASE"
    f"   WHEN {IN_FLIGHT.format(now=LOCKED_NOW)} THEN e.lease_until"
    "   WHEN e.state = 'available' AND e.available_at > %(now)s THEN e.available_at"
    " END) - %(now)s)::float8",
)
