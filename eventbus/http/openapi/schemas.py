"""The OpenAPI document's schemas: the objects the API reads and answers.

Invariant: every bound is the constant the code checks (the lease limits
of :mod:`eventbus.consumers`, the retention bounds, the token limits…),
imported rather than copied; answers are described member by member
(``additionalProperties: false``), so a new member must be described too.

Layer rule: the HTTP layer; pure data, no I/O.
"""

from __future__ import annotations

from eventbus.auth import MAX_ISSUERS, MAX_SCOPES
from eventbus.consumers import MAX_DELIVERIES_LIMIT, MAX_LEASE_S, MAX_NACK_DELAY_S, MIN_LEASE_S
from eventbus.http.openapi.components import (
    COUNT,
    CURSOR,
    EVENT_ID,
    ISSUER,
    NAME,
    NULLABLE_TIMESTAMP,
    SCOPE_REGEX,
    TIMESTAMP,
    Schema,
    nullable,
    obj,
    schema,
)
from eventbus.http.params import MAX_START_S
from eventbus.model import MAX_ID, MODES
from eventbus.retention import MAX_MAX_AGE_S, MAX_MAX_EVENTS, MIN_MAX_AGE_S
from eventbus.tokens import MAX_EXPIRES_S
from eventbus.webhooks.addresses import MAX_URL_LEN

_CHANNEL_STATE = obj(
    {
        "cursor": CURSOR,
        "head": CURSOR,
        "lag": COUNT,
        "consecutive_failures": COUNT,
        "failing_since": NULLABLE_TIMESTAMP,
        "last_attempt": NULLABLE_TIMESTAMP,
        "last_status": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "expired": COUNT,
    },
    (
        "cursor",
        "head",
        "lag",
        "consecutive_failures",
        "failing_since",
        "last_attempt",
        "last_status",
        "last_error",
        "expired",
    ),
)
_SUBSCRIPTION = {
    "id": {"type": "integer", "minimum": 1},
    "context": NAME,
    "channel": {"type": "string", "description": "a channel name, or * for every channel of the context"},
    "url": {"type": "string"},
    "status": {"enum": ["active", "disabled"]},
    "disabled_at": NULLABLE_TIMESTAMP,
    "disabled_reason": {"type": ["string", "null"]},
    "created": TIMESTAMP,
    "owner": {"type": ["string", "null"], "description": "the process delivering it (host:pid:random)"},
    "cursor": nullable(CURSOR),
    "lag": COUNT,
    "last_attempt": NULLABLE_TIMESTAMP,
    "last_status": {"type": ["integer", "null"]},
    "last_error": {"type": ["string", "null"]},
    "consecutive_failures": COUNT,
    "channels": {"type": "object", "additionalProperties": schema("SubscriptionChannel")},
}
_TOKEN = {
    "name": NAME,
    "scopes": {"type": "array", "items": {"type": "string"}},
    "issuers": {"type": ["array", "null"], "items": {"type": "string"}},
    "created": TIMESTAMP,
    "expires": NULLABLE_TIMESTAMP,
    "last_used": NULLABLE_TIMESTAMP,
}
#: A webhook URL the delivery client can send to (described, not complete:
#: hosts of at most three labels, so the name stays within DNS's 253).
_LABEL = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_PCHAR = "([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
URL_REGEX = rf"^https?://{_LABEL}(\.{_LABEL}){{0,2}}(:{_PORT})?(/{_PCHAR}*)*(\?({_PCHAR}|[/?])*)?$"
#: ``whsec_`` + base64 (padded) of 24 to 64 bytes: 8 to 21 groups of 4, and a padded tail.
_B64 = "[A-Za-z0-9+/]"
_WHSEC = rf"^whsec_(({_B64}{{4}}){{8,20}}({_B64}{{2}}==|{_B64}{{3}}=)?|({_B64}{{4}}){{21}}({_B64}{{2}}==)?)$"
_START = {"enum": ["earliest", "latest"]}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error: a message naming what is at fault; some carry facts beside it.",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "LastIdConflict": {
        "type": "object",
        "description": "409: a lease that is unknown or expired, a token name in use, or an"
        " Expected-Last-Id that is not the channel's last id (then with last_id; nothing stored).",
        "properties": {"error": {"type": "string"}, "last_id": CURSOR},
        "required": ["error"],
    },
    "ExpiredCursor": obj(
        {"error": {"type": "string"}, "first_id": EVENT_ID, "missed": {"type": "integer", "minimum": 1}},
        ("error", "first_id", "missed"),
        description="410: retention deleted the events after the cursor.",
    ),
    "Payload": {
        "type": "object",
        "description": "Any JSON object (at most 100 levels deep, no member twice).",
    },
    "Event": obj(
        {
            "id": EVENT_ID,
            "issuer": {"type": "string"},
            "context": NAME,
            "channel": NAME,
            "timestamp": TIMESTAMP,
            "payload": schema("Payload"),
        },
        ("id", "issuer", "context", "channel", "timestamp", "payload"),
    ),
    "Events": {"type": "array", "items": schema("Event")},
    "Health": obj({"status": {"const": "ok"}}, ("status",)),
    "Retention": obj(
        {
            "max_age": {"type": ["number", "null"], "minimum": MIN_MAX_AGE_S, "maximum": MAX_MAX_AGE_S},
            "max_events": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_MAX_EVENTS},
        }
    ),
    "Channel": obj(
        {
            "context": NAME,
            "channel": NAME,
            "first_id": nullable(EVENT_ID),
            "last_id": CURSOR,
            "count": COUNT,
            "first_timestamp": NULLABLE_TIMESTAMP,
            "last_timestamp": NULLABLE_TIMESTAMP,
            "retention": obj(
                {
                    "max_age": {"type": ["number", "null"]},
                    "max_events": {"type": ["integer", "null"]},
                    "source": obj(
                        {
                            "max_age": {"enum": ["channel", "server"]},
                            "max_events": {"enum": ["channel", "server"]},
                        },
                        ("max_age", "max_events"),
                    ),
                },
                ("max_age", "max_events", "source"),
            ),
        },
        (
            "context",
            "channel",
            "first_id",
            "last_id",
            "count",
            "first_timestamp",
            "last_timestamp",
            "retention",
        ),
    ),
    "Channels": {"type": "array", "items": schema("Channel")},
    "ChannelSettings": obj({"retention": schema("Retention")}, ("retention",)),
    "ConsumerConfig": obj(
        {
            "mode": {"enum": list(MODES), "default": MODES[0]},
            "start": {
                "default": "earliest",
                "anyOf": [_START, {"type": "integer", "minimum": 1, "maximum": MAX_ID + 1}],
            },
            "lease": {"type": "number", "minimum": MIN_LEASE_S, "maximum": MAX_LEASE_S, "default": 30},
            "max_deliveries": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_DELIVERIES_LIMIT,
                "default": 5,
            },
        }
    ),
    "Consumer": obj(
        {
            "name": NAME,
            "mode": {"enum": list(MODES)},
            "cursor": CURSOR,
            "lag": COUNT,
            "in_flight": COUNT,
            "dead": COUNT,
            "expired": COUNT,
            "lease": {"type": "number"},
            "max_deliveries": {"type": "integer", "minimum": 1},
        },
        ("name", "mode", "cursor", "lag", "in_flight", "dead", "expired", "lease", "max_deliveries"),
    ),
    "Consumers": {"type": "array", "items": schema("Consumer")},
    "RestoredEvent": obj(
        {
            "id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            "issuer": ISSUER,
            "timestamp": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_START_S,
                "description": "unix seconds",
            },
            "payload": schema("Payload"),
            "context": {"description": "ignored (the path names the channel)"},
            "channel": {"description": "ignored (the path names the channel)"},
        },
        ("id", "issuer", "timestamp", "payload"),
        description="An event as the API renders it (a line of eventbus export).",
    ),
    "Restored": obj(
        {
            "context": NAME,
            "channel": NAME,
            "first_id": EVENT_ID,
            "last_id": EVENT_ID,
            "count": {"type": "integer", "minimum": 1},
        },
        ("context", "channel", "first_id", "last_id", "count"),
    ),
    "Delivery": obj(
        {
            "event": schema("Event"),
            "lease": {"type": "string", "description": "the lease token for ack and nack"},
            "deliveries": {"type": "integer", "minimum": 1},
            "missed": {"type": "integer", "minimum": 1, "description": "events skipped since the last lease"},
        },
        ("event", "lease", "deliveries"),
    ),
    "DeadLetters": {
        "type": "array",
        "items": obj(
            {"event": schema("Event"), "deliveries": {"type": "integer", "minimum": 1}},
            ("event", "deliveries"),
        ),
    },
    "Ack": obj({"lease": {"type": "string", "minLength": 1}}, ("lease",)),
    "Nack": obj(
        {
            "lease": {"type": "string", "minLength": 1},
            "delay": {"type": "number", "minimum": 0, "maximum": MAX_NACK_DELAY_S},
        },
        ("lease",),
    ),
    "NewSubscription": obj(
        {
            "context": NAME,
            "channel": {"anyOf": [NAME, {"const": "*"}]},
            "url": {
                "type": "string",
                "maxLength": MAX_URL_LEN,
                "pattern": URL_REGEX,
                "description": "an http or https URL: ASCII (punycode, percent-encoding), no credentials,"
                " a port from 1 to 65535, a host name or IPv4 address; unless the server runs with"
                " --webhook-allow-private, the host must be (and resolve to) public addresses",
            },
            "secret": {
                "type": ["string", "null"],
                "pattern": _WHSEC,
                "description": "whsec_ + base64 of 24 to 64 bytes; left out or null: generated",
            },
            "start": {"anyOf": [_START, {"type": "integer", "minimum": 1, "maximum": MAX_ID + 1}]},
        },
        ("context", "channel", "url", "start"),
        # An event id as start needs one channel.
        **{"if": {"properties": {"channel": {"const": "*"}}}, "then": {"properties": {"start": _START}}},
    ),
    "SubscriptionChannel": _CHANNEL_STATE,
    "Subscription": obj(_SUBSCRIPTION, tuple(_SUBSCRIPTION)),
    "NewSubscriptionAnswer": obj(
        {**_SUBSCRIPTION, "secret": {"type": "string"}},
        (*_SUBSCRIPTION, "secret"),
    ),
    "Subscriptions": {"type": "array", "items": schema("Subscription")},
    "NewToken": obj(
        {
            "name": NAME,
            "scopes": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_SCOPES,
                "items": {"type": "string", "pattern": SCOPE_REGEX},
            },
            "issuers": {"type": ["array", "null"], "minItems": 1, "maxItems": MAX_ISSUERS, "items": ISSUER},
            "expires_in": {"type": ["number", "null"], "minimum": 1, "maximum": MAX_EXPIRES_S},
        },
        ("name", "scopes"),
    ),
    "Token": obj(_TOKEN, tuple(_TOKEN)),
    "NewTokenAnswer": obj({**_TOKEN, "token": {"type": "string"}}, (*_TOKEN, "token")),
    "Tokens": {"type": "array", "items": schema("Token")},
}
