"""Response bodies: JSON answers, errors, and the resources' objects.

Invariant: every complete answer the server sends goes through :func:`body`
(a status, ``Content-Type: application/json`` (the metrics: Prometheus
text) and a ``Content-Length``, so nothing is chunked), and every error body is :func:`error_body` —
``{"error": "<message>"}``, with the error's ``details`` (JSON facts such
as ``last_id``) beside it.  Handlers never build either by hand.

Layer rule: the HTTP layer; renders domain values, never reads the store.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.web.server import Request

from eventbus.model import ALL_CHANNELS, ConsumerStatus, Delivery, Event, SubscriptionState, render_event

JSON = b"application/json"
#: Reason phrases twisted.web does not know (it would send "Unknown Status").
REASONS = {422: b"Unprocessable Content", 429: b"Too Many Requests"}


def body(request: Request, data: bytes, status: int = 200, content_type: bytes = JSON) -> bytes:
    """A complete response, JSON unless said otherwise (with Content-Length,
    so no chunking)."""
    request.setResponseCode(status, REASONS.get(status))
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(data))
    return data


def json(request: Request, value: Any, status: int = 200) -> bytes:
    return body(request, orjson.dumps(value), status)


def no_content(request: Request) -> bytes:
    request.setResponseCode(204)
    return b""


def error_body(message: str, **details: object) -> bytes:
    """``{"error": message}``, then what a client needs to act on it
    (``details``; never another ``error``)."""
    if not details:
        return orjson.dumps({"error": message})
    return orjson.dumps({"error": message, **{k: v for k, v in details.items() if k != "error"}})


def error(request: Request, status: int, message: str, **details: object) -> bytes:
    return body(request, error_body(message, **details), status)


def events_array(context: str, channel: str, events: list[Event]) -> bytes:
    return b"[" + b",".join(render_event(context, channel, e) for e in events) + b"]"


# -- durable consumers -------------------------------------------------------------
def _seconds(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def consumer_status(s: ConsumerStatus) -> bytes:
    return orjson.dumps(
        {
            "name": s.name,
            "mode": s.mode,
            "cursor": s.cursor,
            "lag": s.lag,
            "in_flight": s.in_flight,
            "dead": s.dead,
            "expired": s.expired,
            "lease": _seconds(s.lease_s),
            "max_deliveries": s.max_deliveries,
        }
    )


def leased(context: str, channel: str, event: Event, deliveries: int, lease: str | None = None) -> bytes:
    """``{"event": ..., "lease": ..., "deliveries": n}`` (no lease for a dead letter)."""
    token = b"" if lease is None else b',"lease":' + orjson.dumps(lease)
    return b'{"event":' + render_event(context, channel, event) + token + b',"deliveries":%d}' % deliveries


def delivery(context: str, channel: str, d: Delivery) -> bytes:
    """A leased event; ``missed`` only the first time after retention made
    the consumer skip events."""
    body = leased(context, channel, d.event, d.deliveries, d.lease)
    return body[:-1] + b',"missed":%d}' % d.missed if d.missed else body


# -- webhook subscriptions ---------------------------------------------------------------
def subscription(state: SubscriptionState, secret: str | None = None) -> dict[str, Any]:
    """The subscription object; ``secret`` only in the answer to its creation."""
    channels = {
        c.channel: {
            "cursor": c.delivered_id,
            "head": c.head,
            "lag": max(0, c.head - c.delivered_id),
            "consecutive_failures": c.failures,
            "failing_since": c.failing_since,
            "last_attempt": c.last_attempt,
            "last_status": c.last_status,
            "last_error": c.last_error,
            "expired": c.expired,
        }
        for c in state.channels
    }
    tried = [c for c in state.channels if c.last_attempt is not None]
    latest = max(tried, key=lambda c: c.last_attempt or 0.0) if tried else None
    single = None if state.channel == ALL_CHANNELS else channels.get(state.channel)
    result: dict[str, Any] = {
        "id": state.id,
        "context": state.context,
        "channel": state.channel,
        "url": state.url,
        "status": "disabled" if state.disabled_at is not None else "active",
        "disabled_at": state.disabled_at,
        "disabled_reason": state.disabled_reason,
        "created": state.created,
        "owner": state.owner,
        "cursor": single["cursor"] if single else None,
        "lag": sum(c["lag"] for c in channels.values()),
        "last_attempt": latest.last_attempt if latest else None,
        "last_status": latest.last_status if latest else None,
        "last_error": latest.last_error if latest else None,
        "consecutive_failures": max((c.failures for c in state.channels), default=0),
        "channels": channels,
    }
    if secret is not None:
        result["secret"] = secret
    return result
