"""What the metrics read from the database when scraped: consumers' and webhooks' state.

Invariant: one statement per kind, each one pass over its small tables
(``consumers`` and the not-acked rows of ``consumer_events``; the
subscriptions and their cursors) with one index lookup per consumer or
cursor for the channel's head; never a scan of ``events``.  The values
are those the API reports (a consumer's ``lag``, ``in_flight`` and
``dead`` as in its state; a subscription's undelivered events as
``head - delivered_id`` of its channels, counting only what is still
stored), so a dashboard and ``GET /consumers/...`` agree.  The metrics
reuse them for a few seconds (:class:`eventbus.metrics.Stored`).

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from eventbus.metrics import ConsumerGauge, StoredState, WebhookGauge
from eventbus.storage import consumer_rows as rows
from eventbus.storage.database import Database

_NOW = rows.STATEMENT_NOW

#: Every consumer: its lag (pending events and those never delivered, up to
#: the channel's head), its events in flight and its dead letters.
CONSUMERS_SQL = f"""/* eventbus_metrics_consumers */
SELECT c.context, c.channel, c.name,
       s.pending + greatest(0, coalesce(ch.last_id, 0) - c.next_new + 1),
       s.in_flight, s.dead
  FROM consumers c
  LEFT JOIN channels ch ON ch.context = c.context AND ch.channel = c.channel
 CROSS JOIN LATERAL (
   SELECT count(*) FILTER (WHERE NOT e.dead) AS pending,
          count(*) FILTER (WHERE e.in_flight) AS in_flight,
          count(*) FILTER (WHERE e.dead) AS dead
     FROM (SELECT {rows.DEAD.format(now=_NOW)} AS dead, {rows.IN_FLIGHT.format(now=_NOW)} AS in_flight
             FROM consumer_events e WHERE e.consumer_id = c.id) e
 ) s
 ORDER BY c.context, c.channel, c.name
"""

#: Every subscription: whether it is disabled, and the events stored in its
#: channels past its cursors (for '*', every channel of the context; a
#: channel without a cursor row starts at 0).
WEBHOOKS_SQL = """/* eventbus_metrics_webhooks */
WITH names AS (
    SELECT subscription_id AS sid, channel FROM webhook_cursors
    UNION
    SELECT s.id, ch.channel FROM webhook_subscriptions s JOIN channels ch ON ch.context = s.context
     WHERE s.channel = '*'
)
SELECT s.id, s.disabled_at IS NOT NULL,
       coalesce(sum(greatest(0, ch.last_id - greatest(coalesce(c.delivered_id, 0), coalesce(r.pruned_to, 0)))), 0)
  FROM webhook_subscriptions s
  LEFT JOIN names n ON n.sid = s.id
  LEFT JOIN webhook_cursors c ON c.subscription_id = s.id AND c.channel = n.channel
  LEFT JOIN channels ch ON ch.context = s.context AND ch.channel = n.channel
  LEFT JOIN channel_retention r ON r.channel_id = ch.id
 GROUP BY s.id, s.disabled_at
 ORDER BY s.id
"""


async def read(database: Database) -> StoredState:
    """The consumers' and the subscriptions' gauges, as of now."""
    consumers = await database.query(CONSUMERS_SQL)
    webhooks = await database.query(WEBHOOKS_SQL)
    return StoredState(
        consumers=[ConsumerGauge(*row) for row in consumers],
        webhooks=[WebhookGauge(int(sid), bool(disabled), int(lag)) for sid, disabled, lag in webhooks],
    )
