"""What a row of ``consumer_events`` means, as SQL fragments.

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
