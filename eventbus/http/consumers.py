"""``/consumers``: durable consumers, their leases and their dead letters.

Invariant: the handlers only parse and render; every leasing decision is
the domain's (:mod:`eventbus.consumers`) and every state change is one
transaction of the consumer store.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from eventbus.auth import Action
from eventbus.consumers import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MODE,
    DEFAULT_START,
    MAX_DELIVERIES_LIMIT,
    MAX_LEASE_S,
    MAX_NACK_DELAY_S,
    MIN_LEASE_S,
    Consumers,
)
from eventbus.errors import InvalidInput, NotFound
from eventbus.http import access, params, render
from eventbus.http.router import Router
from eventbus.http.streams import stream_array
from eventbus.model import MAX_ID, MODES, ConsumerConfig, Start

#: The fields of a consumer's configuration (``PUT``).
CONFIG_FIELDS = ("mode", "start", "lease", "max_deliveries")
#: ``next`` holds the request open for at most ``timeout`` seconds.
NEXT_QUERY = params.QueryParams(names=("timeout",))


def consumer_config(body: bytes) -> ConsumerConfig:
    """A PUT body; absent fields take their defaults (PUT sets the whole
    configuration), and an empty body means all defaults."""
    fields = params.object_body(body, CONFIG_FIELDS, empty_ok=True)
    mode = fields.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {fields.sent('mode')}")
    raw_start = fields.get("start", DEFAULT_START)
    start: Start
    if raw_start in ("earliest", "latest"):
        start = raw_start
    elif isinstance(raw_start, str):
        raise InvalidInput(f'start must be "earliest", "latest" or an event id, got {fields.sent("start")}')
    else:
        start = params.integer(fields, "start", 1, MAX_ID + 1)
    lease = DEFAULT_LEASE_S
    if "lease" in fields:
        lease = params.number(fields, "lease", MIN_LEASE_S, MAX_LEASE_S)
    max_deliveries = DEFAULT_MAX_DELIVERIES
    if "max_deliveries" in fields:
        max_deliveries = params.integer(fields, "max_deliveries", 1, MAX_DELIVERIES_LIMIT)
    return ConsumerConfig(mode=mode, lease_s=lease, max_deliveries=max_deliveries, start=start)


def lease_token(fields: dict[str, Any]) -> str:
    token = fields.get("lease")
    if not isinstance(token, str) or not token:
        raise InvalidInput("lease must be the lease token string returned by next")
    return token


class ConsumersResource:
    """The routes under ``/consumers``."""

    router = Router()

    def __init__(self, consumers: Consumers, max_wait: float) -> None:
        self.consumers = consumers
        #: The longest ``timeout`` of a ``next`` (``--max-wait``).
        self.max_wait = max_wait

    @router.route("/consumers/<context>/<channel>", methods=["GET"], need=(Action.CONSUME, Action.MANAGE))
    async def list_consumers(self, request: Request, context: str, channel: str) -> bytes:
        found = await self.consumers.of_channel(context, channel)
        return render.body(request, b"[" + b",".join(render.consumer_status(s) for s in found) + b"]")

    @router.route("/consumers/<context>/<channel>/<name>", methods=["PUT"], need=(Action.MANAGE,))
    async def put_consumer(self, request: Request, context: str, channel: str, name: str) -> bytes:
        config = consumer_config(params.body(request))
        created, status = await self.consumers.configure(context, channel, name, config)
        return render.body(request, render.consumer_status(status), 201 if created else 200)

    @router.route(
        "/consumers/<context>/<channel>/<name>", methods=["GET"], need=(Action.CONSUME, Action.MANAGE)
    )
    async def get_consumer(self, request: Request, context: str, channel: str, name: str) -> bytes:
        status = await self.consumers.status(context, channel, name)
        return render.body(request, render.consumer_status(status))

    @router.route("/consumers/<context>/<channel>/<name>", methods=["DELETE"], need=(Action.MANAGE,))
    async def delete_consumer(self, request: Request, context: str, channel: str, name: str) -> bytes:
        await self.consumers.delete(context, channel, name)
        return render.no_content(request)

    @router.route(
        "/consumers/<context>/<channel>/<name>/next",
        methods=["POST"],
        need=(Action.CONSUME,),
        query=NEXT_QUERY,
    )
    async def next_event(self, request: Request, context: str, channel: str, name: str) -> bytes:
        timeout = params.timeout_param(params.query(request).get("timeout"), self.max_wait)
        delivery = await access.held(request, lambda: self.consumers.next(context, channel, name, timeout))
        if delivery is None:
            return render.no_content(request)
        return render.body(request, render.delivery(context, channel, delivery))

    @router.route("/consumers/<context>/<channel>/<name>/ack", methods=["POST"], need=(Action.CONSUME,))
    async def ack(self, request: Request, context: str, channel: str, name: str) -> bytes:
        fields = params.object_body(params.body(request), ("lease",))
        await self.consumers.ack(context, channel, name, lease_token(fields))
        return render.no_content(request)

    @router.route("/consumers/<context>/<channel>/<name>/nack", methods=["POST"], need=(Action.CONSUME,))
    async def nack(self, request: Request, context: str, channel: str, name: str) -> bytes:
        fields = params.object_body(params.body(request), ("lease", "delay"))
        delay = 0.0
        if "delay" in fields:
            delay = params.number(fields, "delay", 0, MAX_NACK_DELAY_S)
        await self.consumers.nack(context, channel, name, lease_token(fields), delay)
        return render.no_content(request)

    @router.route(
        "/consumers/<context>/<channel>/<name>/dead", methods=["GET"], need=(Action.CONSUME, Action.MANAGE)
    )
    async def dead(self, request: Request, context: str, channel: str, name: str) -> None:
        after, more = 0, True

        async def next_page() -> list[bytes]:
            nonlocal after, more
            if not more:
                return []
            found, more = await self.consumers.dead(context, channel, name, after)
            if found:
                after = found[-1].event.id
            return [render.leased(context, channel, d.event, d.deliveries) for d in found]

        await stream_array(request, next_page, f"dead letters of {context}/{channel}/{name}")

    @router.route(
        "/consumers/<context>/<channel>/<name>/dead/<event_id>/retry", methods=["POST"], need=(Action.MANAGE,)
    )
    async def retry(self, request: Request, context: str, channel: str, name: str, event_id: str) -> bytes:
        number = params.path_id(event_id)
        if number is None:
            raise NotFound(f"event {event_id[:40]!r} is not dead for consumer {name}")
        await self.consumers.retry(context, channel, name, number)
        return render.no_content(request)
