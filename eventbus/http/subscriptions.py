"""``/subscriptions``: webhook subscriptions, their status, delete and enable.

Invariant: a subscription's secret is shown once, in the answer to its
creation; no other answer carries it.  A token sees and changes only the
subscriptions whose context and channel it may ``manage`` (a ``*``
subscription needs ``manage:<context>/*``); the list leaves the others out.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from twisted.web.server import Request

from eventbus.auth import Action
from eventbus.errors import InvalidInput, NotFound
from eventbus.http import access, params, render
from eventbus.http.router import Router
from eventbus.model import ALL_CHANNELS, MAX_ID, Start, SubscriptionState, check_name, json_integer
from eventbus.webhooks.service import WebhookService

MANAGE = (Action.MANAGE,)
#: The fields of ``POST /subscriptions``.
FIELDS = ("context", "channel", "url", "secret", "start")


def start_field(fields: params.Fields, channel: str) -> Start:
    """Parse start: "latest", "earliest" or the id of the first event to deliver."""
    value = fields.get("start")
    if value == "latest" or value == "earliest":
        return value
    if value is None:
        raise InvalidInput('start is required: "latest", "earliest" or an event id')
    value = json_integer(value)
    if value is None or not 1 <= value <= MAX_ID + 1:
        raise InvalidInput(
            f'start must be "latest", "earliest" or an event id from 1 to {MAX_ID + 1}, got {fields.sent("start")}'
        )
    if channel == ALL_CHANNELS:
        raise InvalidInput('an event id as start needs one channel, not "*"')
    return value


def subscription_id(value: str) -> int:
    if not params.UINT.match(value) or int(value) > 2**63 - 1:
        raise NotFound(f"no subscription {value[:40]!r}")
    return int(value)


class SubscriptionsResource:
    """The routes under ``/subscriptions``."""

    router = Router()

    def __init__(self, webhooks: WebhookService | None) -> None:
        self.webhooks = webhooks

    def _service(self) -> WebhookService:
        if self.webhooks is None:
            raise NotFound("webhooks are not enabled on this server")
        return self.webhooks

    async def _managed(self, request: Request, sub_id: str) -> SubscriptionState:
        """The subscription, if the request may manage it."""
        states = await self._service().states(subscription_id(sub_id))
        if not states:
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        access.authorize(request, MANAGE, states[0].context, states[0].channel)
        return states[0]

    @router.route("/subscriptions", methods=["POST"], need=MANAGE)
    async def create(self, request: Request) -> bytes:
        webhooks = self._service()
        body = params.object_body(params.body(request), FIELDS)
        context = check_name("context", params.string(body, "context"))
        channel = params.string(body, "channel")
        if channel != ALL_CHANNELS:
            check_name("channel", channel)
        url = params.string(body, "url")
        secret = body.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise InvalidInput("secret must be a string")
        start = start_field(body, channel)
        access.authorize(request, MANAGE, context, channel)
        state, secret = await webhooks.create(context, channel, url, secret, start)
        request.setHeader(b"Location", f"/subscriptions/{state.id}".encode())
        return render.json(request, render.subscription(state, secret), 201)

    @router.route("/subscriptions", methods=["GET"], need=MANAGE)
    async def list_all(self, request: Request) -> bytes:
        states = await self._service().states()
        principal = access.principal_of(request)
        return render.json(
            request,
            [render.subscription(s) for s in states if principal.may(Action.MANAGE, s.context, s.channel)],
        )

    @router.route("/subscriptions/<sub_id>", methods=["GET"], need=MANAGE)
    async def get(self, request: Request, sub_id: str) -> bytes:
        state = await self._managed(request, sub_id)
        return render.json(request, render.subscription(state))

    @router.route("/subscriptions/<sub_id>", methods=["DELETE"], need=MANAGE)
    async def delete(self, request: Request, sub_id: str) -> bytes:
        await self._managed(request, sub_id)
        if not await self._service().delete(subscription_id(sub_id)):
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        return render.no_content(request)

    @router.route("/subscriptions/<sub_id>/enable", methods=["POST"], need=MANAGE)
    async def enable(self, request: Request, sub_id: str) -> bytes:
        sid = subscription_id(sub_id)
        webhooks = self._service()
        await self._managed(request, sub_id)
        if not await webhooks.enable(sid):
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        states = await webhooks.states(sid)
        if not states:  # deleted in between
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        return render.json(request, render.subscription(states[0]))
