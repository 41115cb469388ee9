"""The OpenAPI paths of events and channels, health, metrics and the documents themselves.

Invariant: each operation lists every status its handler (and the router,
the gate and the site before it) can answer, and the bounds of the
running server (``--max-wait``, ``--max-batch``) where a parameter has them.

Layer rule: the HTTP layer; pure data, no I/O.
"""

from __future__ import annotations

from typing import Any

from eventbus.http.openapi.components import (
    CHANNEL_PATH,
    CURSOR,
    NAME,
    Schema,
    headers,
    json_body,
    json_response,
    no_content,
    params,
    responses,
    schema,
)
from eventbus.http.params import DEFAULT_TIMEOUT_S, IDEMPOTENCY_KEY_MAX, MAX_START_S

#: ``start``: unix seconds, or an ISO-8601 instant (UTC without an offset);
#: an instant before 1970 selects everything.
START: Schema = {
    "description": "unix seconds (a number), or an ISO-8601 instant (without an offset: UTC)",
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": MAX_START_S},
        {"type": "string", "format": "date-time"},
    ],
}
ISSUER_HEADER: Schema = {
    "name": "X-EVENT-ISSUER",
    "in": "header",
    "required": True,
    "description": "Who publishes (X-JISS-ISSUER is an alias; given twice, every value must be the same)."
    " A token with exactly one issuer may leave it out.",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "pattern": r"^[\x20-\x7e]*[\x21-\x7e][\x20-\x7e]*$",
    },
}


def timeout(max_wait: float) -> Schema:
    return {
        "type": "number",
        "minimum": 0,
        "maximum": max_wait,
        "default": min(DEFAULT_TIMEOUT_S, max_wait),
        "description": "seconds to hold the request open (this server's cap: --max-wait)",
    }


def events_paths(max_wait: float, max_batch: int) -> dict[str, Any]:
    payloads: Schema = {
        "oneOf": [
            schema("Payload"),
            {"type": "array", "minItems": 1, "maxItems": max_batch, "items": schema("Payload")},
        ]
    }
    publish = {
        "tags": ["events"],
        "operationId": "publish",
        "summary": "Publish an event (a JSON object), or a batch (an array of objects) atomically",
        "parameters": [
            *params(*CHANNEL_PATH),
            ISSUER_HEADER,
            {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "A repeat within --idempotency-window gets the first answer.",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": IDEMPOTENCY_KEY_MAX,
                    "pattern": r"^[\x21-\x7e]+$",
                },
            },
            {
                "name": "Expected-Last-Id",
                "in": "header",
                "description": "Store only if the channel's last id is this (0: no event yet); else 409.",
                "schema": CURSOR,
            },
        ],
        "requestBody": json_body(payloads, "The payload, or an array of payloads (a batch)."),
        "responses": responses(
            {
                201: json_response(
                    "Committed: the stored event (Location: its URL), or the array of a batch.",
                    {"oneOf": [schema("Event"), schema("Events")]},
                    "Location",
                    "Idempotent-Replayed",
                )
            },
            409,
            422,
        ),
    }
    selection: Schema = {
        "name": "selection",
        "in": "query",
        "style": "form",
        "explode": True,
        "description": "Either the history (start, limit) or a walk (peek, timeout, on_expired).",
        "schema": {
            "oneOf": [
                {
                    "title": "history",
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "start": START,
                        "limit": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                    },
                },
                {
                    "title": "walk",
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["peek"],
                    "properties": {
                        "peek": {
                            **CURSOR,
                            "description": "the id of the last event seen (0: from the start)",
                        },
                        "timeout": timeout(max_wait),
                        "on_expired": {"enum": ["error", "earliest"], "default": "error"},
                    },
                },
            ]
        },
    }
    read = {
        "tags": ["events"],
        "operationId": "read",
        "summary": "The history (in id order, streamed), from a moment; or walk: the first event after a cursor",
        "parameters": [*params(*CHANNEL_PATH), selection],
        "responses": responses(
            {
                200: {
                    "description": "The history (an array), or the event after the cursor.",
                    "headers": headers("Events-First-Id", "Events-Missed"),
                    "content": {
                        "application/json": {"schema": {"oneOf": [schema("Events"), schema("Event")]}}
                    },
                },
                204: no_content("No event after the cursor within timeout."),
            },
            410,
            429,
        ),
    }
    stream = {
        "tags": ["events"],
        "operationId": "stream",
        "summary": "Follow the channel live (Server-Sent Events)",
        "parameters": [
            *params(*CHANNEL_PATH),
            {
                "name": "after",
                "in": "query",
                "description": "Start after this id (0: replay all).",
                "schema": CURSOR,
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Sent by EventSource on a reconnect: start after it (wins over after).",
                "schema": CURSOR,
            },
        ],
        "responses": responses(
            {
                200: {
                    "description": "A stream that stays open: `id: N` / `event: event` / `data: <event object>`"
                    " per event; `event: expired` with {first_id, missed} when retention deleted events"
                    " it would have sent; `event: error` when its token is revoked; `: keepalive`"
                    " comments after --heartbeat seconds of silence.",
                    "headers": headers("Cache-Control"),
                    "content": {
                        "text/event-stream": {
                            "schema": {"type": "string", "contentMediaType": "text/event-stream"}
                        }
                    },
                }
            },
            429,
        ),
    }
    one = {
        "tags": ["events"],
        "operationId": "event",
        "summary": "One event",
        "parameters": params(*CHANNEL_PATH, "event_id"),
        "responses": responses({200: json_response("The event.", schema("Event"))}, 404),
    }
    return {
        "/events/{context}/{channel}": {"post": publish, "get": read},
        "/events/{context}/{channel}/stream": {"get": stream},
        "/events/{context}/{channel}/{event_id}": {"get": one},
    }


def restore_operation(max_batch: int) -> dict[str, Any]:
    batch: Schema = {"type": "array", "minItems": 1, "maxItems": max_batch, "items": schema("RestoredEvent")}
    return {
        "tags": ["channels"],
        "operationId": "restore",
        "summary": "Store exported events with their own ids and timestamps (admin; what eventbus import uses)",
        "parameters": [
            *params(*CHANNEL_PATH),
            {
                "name": "after",
                "in": "query",
                "required": True,
                "description": "The channel's last id the batch continues (0: a channel never written); else 409.",
                "schema": CURSOR,
            },
        ],
        "requestBody": json_body(batch, "Consecutive events after `after`, timestamps not decreasing."),
        "responses": responses(
            {200: json_response("Stored, all of it, in one transaction.", schema("Restored"))}, 404, 409
        ),
    }


def channels_paths(max_batch: int) -> dict[str, Any]:
    listing = {
        "tags": ["channels"],
        "operationId": "channels",
        "summary": "Every channel the token may read, ordered by context then channel, a page at a time",
        "parameters": [
            {"name": "context", "in": "query", "description": "Only this context.", "schema": NAME},
            {
                "name": "limit",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            },
            {
                "name": "after",
                "in": "query",
                "description": "CONTEXT/CHANNEL: the last one seen (from the Link header).",
                "schema": {
                    "type": "string",
                    "allOf": [
                        {"pattern": r"^[A-Za-z0-9_.:-]{1,128}/[A-Za-z0-9_.:-]{1,128}$"},
                        {"pattern": r"^[^/]*[^./][^/]*/[^/]*[^./][^/]*$"},
                    ],
                },
            },
        ],
        "responses": responses({200: json_response("A page of channels.", schema("Channels"), "Link")}),
    }
    one = {
        "tags": ["channels"],
        "operationId": "channel",
        "summary": "What the channel stores and the retention that applies",
        "parameters": params(*CHANNEL_PATH),
        "responses": responses({200: json_response("The channel.", schema("Channel"))}, 404),
    }
    patch = {
        "tags": ["channels"],
        "operationId": "configureChannel",
        "summary": "Set the channel's own retention (scope manage); null goes back to the server's default",
        "parameters": params(*CHANNEL_PATH),
        "requestBody": json_body(schema("ChannelSettings"), "The settings to change."),
        "responses": responses({200: json_response("The channel.", schema("Channel"))}),
    }
    return {
        "/channels": {"get": listing},
        "/channels/{context}/{channel}": {"get": one, "patch": patch},
        "/channels/{context}/{channel}/restore": {"post": restore_operation(max_batch)},
    }


def service_paths() -> dict[str, Any]:
    health = {
        "tags": ["service"],
        "operationId": "health",
        "summary": "Whether this process reaches its database (no token needed)",
        "responses": responses({200: json_response("The database answers.", schema("Health"))}, public=True),
    }
    document = {
        "tags": ["service"],
        "operationId": "openapi",
        "summary": "This document (no token needed)",
        "responses": responses(
            {200: json_response("The OpenAPI 3.1 document of this server.", {"type": "object"})},
            public=True,
        ),
    }
    docs = {
        "tags": ["service"],
        "operationId": "docs",
        "summary": "This document as a web page (no token needed)",
        "responses": responses(
            {
                200: {
                    "description": "An HTML page that renders /openapi.json.",
                    "headers": headers(),
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
            public=True,
        ),
    }
    metrics = {
        "tags": ["service"],
        "operationId": "metrics",
        "summary": "Prometheus metrics of this process (scope admin or metrics; local requests in local mode)",
        "responses": responses(
            {
                200: {
                    "description": "The Prometheus text exposition (OpenMetrics if the request's Accept"
                    " asks for application/openmetrics-text).",
                    "headers": headers(),
                    "content": {
                        "text/plain; version=0.0.4": {"schema": {"type": "string"}},
                        "application/openmetrics-text; version=1.0.0": {"schema": {"type": "string"}},
                    },
                }
            },
        ),
    }
    return {
        "/health": {"get": health},
        "/openapi.json": {"get": document},
        "/docs": {"get": docs},
        "/metrics": {"get": metrics},
    }
