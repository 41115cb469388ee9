"""The OpenAPI paths of durable consumers, webhook subscriptions and tokens.

Invariant: as for :mod:`.events`: every status a handler can answer is
listed, with the running server's ``--max-wait`` as the cap of ``timeout``.

Layer rule: the HTTP layer; pure data, no I/O.
"""

from __future__ import annotations

from typing import Any

from eventbus.http.openapi.components import (
    CHANNEL_PATH,
    CONSUMER_PATH,
    json_body,
    json_response,
    no_content,
    params,
    responses,
    schema,
)
from eventbus.http.openapi.events import timeout


def _op(tag: str, operation_id: str, summary: str, **rest: Any) -> dict[str, Any]:
    return {"tags": [tag], "operationId": operation_id, "summary": summary, **rest}


def consumers_paths(max_wait: float) -> dict[str, Any]:
    consumer = "/consumers/{context}/{channel}/{name}"
    state = json_response("The consumer's state.", schema("Consumer"))
    return {
        "/consumers/{context}/{channel}": {
            "get": _op(
                "consumers",
                "consumers",
                "The channel's consumers (scope consume or manage)",
                parameters=params(*CHANNEL_PATH),
                responses=responses({200: json_response("Their states.", schema("Consumers"))}),
            )
        },
        consumer: {
            "put": _op(
                "consumers",
                "configureConsumer",
                "Create or update a consumer (scope manage); a field left out takes its default",
                parameters=params(*CONSUMER_PATH),
                requestBody=json_body(
                    schema("ConsumerConfig"), "The configuration (empty: all defaults).", False
                ),
                responses=responses({200: state, 201: {**state, "description": "Created."}}),
            ),
            "get": _op(
                "consumers",
                "consumer",
                "A consumer's state (scope consume or manage)",
                parameters=params(*CONSUMER_PATH),
                responses=responses({200: state}, 404),
            ),
            "delete": _op(
                "consumers",
                "deleteConsumer",
                "Delete a consumer (scope manage)",
                parameters=params(*CONSUMER_PATH),
                responses=responses({204: no_content("Deleted.")}, 404),
            ),
        },
        consumer + "/next": {
            "post": _op(
                "consumers",
                "next",
                "Lease the next event (scope consume); held open until one can be leased or timeout",
                parameters=[
                    *params(*CONSUMER_PATH),
                    {"name": "timeout", "in": "query", "schema": timeout(max_wait)},
                ],
                responses=responses(
                    {
                        200: json_response("A leased event.", schema("Delivery")),
                        204: no_content("Nothing could be leased within timeout."),
                    },
                    429,
                ),
            )
        },
        consumer + "/ack": {
            "post": _op(
                "consumers",
                "ack",
                "Done with a leased event (scope consume)",
                parameters=params(*CONSUMER_PATH),
                requestBody=json_body(schema("Ack"), "The lease."),
                responses=responses({204: no_content("Acked.")}, 409),
            )
        },
        consumer + "/nack": {
            "post": _op(
                "consumers",
                "nack",
                "Put a leased event back, now or after delay seconds (scope consume)",
                parameters=params(*CONSUMER_PATH),
                requestBody=json_body(schema("Nack"), "The lease, and the delay."),
                responses=responses({204: no_content("Put back.")}, 409),
            )
        },
        consumer + "/dead": {
            "get": _op(
                "consumers",
                "deadLetters",
                "The consumer's dead letters, in id order (scope consume or manage)",
                parameters=params(*CONSUMER_PATH),
                responses=responses({200: json_response("The dead letters.", schema("DeadLetters"))}, 404),
            )
        },
        consumer + "/dead/{event_id}/retry": {
            "post": _op(
                "consumers",
                "retryDeadLetter",
                "Deliver a dead letter again (scope manage)",
                parameters=params(*CONSUMER_PATH, "event_id"),
                responses=responses({204: no_content("Put back.")}, 404),
            )
        },
    }


def subscriptions_paths() -> dict[str, Any]:
    state = json_response("The subscription.", schema("Subscription"))
    return {
        "/subscriptions": {
            "post": _op(
                "webhooks",
                "subscribe",
                "Have the channel's events POSTed to a URL (scope manage on the channel, or on context/*)",
                requestBody=json_body(schema("NewSubscription"), "What to deliver, where, from where."),
                responses=responses(
                    {
                        201: json_response(
                            "Created; the only answer that shows the secret.",
                            schema("NewSubscriptionAnswer"),
                            "Location",
                        )
                    },
                    404,
                ),
            ),
            "get": _op(
                "webhooks",
                "subscriptions",
                "The subscriptions the token may manage",
                responses=responses({200: json_response("Their states.", schema("Subscriptions"))}, 404),
            ),
        },
        "/subscriptions/{sub_id}": {
            "get": _op(
                "webhooks",
                "subscription",
                "A subscription's state",
                parameters=params("sub_id"),
                responses=responses({200: state}, 404),
            ),
            "delete": _op(
                "webhooks",
                "unsubscribe",
                "Delete a subscription",
                parameters=params("sub_id"),
                responses=responses({204: no_content("Deleted.")}, 404),
            ),
        },
        "/subscriptions/{sub_id}/enable": {
            "post": _op(
                "webhooks",
                "enableSubscription",
                "Make a disabled subscription active again; delivery resumes at its cursor",
                parameters=params("sub_id"),
                responses=responses({200: state}, 404),
            )
        },
    }


def tokens_paths() -> dict[str, Any]:
    return {
        "/tokens": {
            "post": _op(
                "tokens",
                "createToken",
                "Create a token (admin); the only answer that shows it",
                requestBody=json_body(schema("NewToken"), "Its name, scopes, issuers and lifetime."),
                responses=responses(
                    {201: json_response("Created.", schema("NewTokenAnswer"), "Location", "Cache-Control")},
                    409,
                ),
            ),
            "get": _op(
                "tokens",
                "tokens",
                "Every token (admin), without secrets",
                responses=responses({200: json_response("The tokens.", schema("Tokens"))}),
            ),
        },
        "/tokens/{token_name}": {
            "get": _op(
                "tokens",
                "token",
                "A token (admin)",
                parameters=params("token_name"),
                responses=responses({200: json_response("The token.", schema("Token"))}, 404),
            ),
            "delete": _op(
                "tokens",
                "revokeToken",
                "Revoke a token (admin), in every process within about a second",
                parameters=params("token_name"),
                responses=responses({204: no_content("Revoked.")}, 404),
            ),
        },
    }
