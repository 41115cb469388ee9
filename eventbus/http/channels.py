"""``/channels``: what each channel stores, and its retention settings.

Invariant: a token sees only the channels it may ``read`` (the list is
filtered in the database, so its pages are full and its ``Link`` honest)
and changes settings only where it may ``manage``; the ``retention`` shown
is the policy that applies, each value with where it comes from.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from eventbus.auth import Action
from eventbus.errors import InvalidInput, NotFound
from eventbus.http import access, params, render
from eventbus.http.restore import QUERY as RESTORE_QUERY
from eventbus.http.restore import Restorer
from eventbus.http.router import Router
from eventbus.model import ChannelInfo, ChannelKey, Retention, check_name
from eventbus.retention import check_max_age, check_max_events, effective
from eventbus.storage.channels import ChannelStore

#: ``GET /channels``: one context, a page size, and where the page starts.
LIST_QUERY = params.QueryParams(names=("context", "limit", "after"))
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: The fields of ``PATCH /channels/{context}/{channel}``, and of its ``retention``.
PATCH_FIELDS = ("retention",)
RETENTION_FIELDS = ("max_age", "max_events")


def _seconds(value: float | None) -> float | int | None:
    return int(value) if value is not None and value.is_integer() else value


def channel_object(info: ChannelInfo, defaults: Retention) -> dict[str, Any]:
    policy, source = effective(info.settings, defaults)
    return {
        "context": info.context,
        "channel": info.channel,
        "first_id": info.first_id,
        "last_id": info.last_id,
        "count": info.count,
        "first_timestamp": info.first_timestamp,
        "last_timestamp": info.last_timestamp,
        "retention": {
            "max_age": _seconds(policy.max_age_s),
            "max_events": policy.max_events,
            "source": source,
        },
    }


def after_param(value: str) -> ChannelKey:
    context, slash, channel = value.partition("/")
    if not slash:
        raise InvalidInput(f"after must be <context>/<channel> (the last one seen), got {value[:140]!r}")
    return check_name("after's context", context), check_name("after's channel", channel)


def retention_changes(body: bytes) -> dict[str, float | int | None]:
    """The settings a PATCH changes (None: back to the server's default)."""
    fields = params.object_body(body, PATCH_FIELDS)
    if "retention" not in fields:
        raise InvalidInput('retention is required: {"retention": {"max_age": S, "max_events": N}}')
    retention = fields["retention"]
    if not isinstance(retention, dict):
        raise InvalidInput("retention must be a JSON object with max_age and/or max_events")
    unknown = sorted(set(retention) - set(RETENTION_FIELDS))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) of retention {', '.join(map(repr, unknown))[:200]};"
            f" allowed: {', '.join(RETENTION_FIELDS)}"
        )
    changes: dict[str, float | int | None] = {}
    if "max_age" in retention:
        value = retention["max_age"]
        changes["max_age_s"] = None if value is None else check_max_age(value, "retention.max_age")
    if "max_events" in retention:
        value = retention["max_events"]
        changes["max_events"] = None if value is None else check_max_events(value, "retention.max_events")
    return changes


class ChannelsResource:
    """The routes under ``/channels``."""

    router = Router()

    def __init__(self, store: ChannelStore, defaults: Retention, restorer: Restorer | None = None) -> None:
        self.store = store
        self.defaults = defaults
        self.restorer = restorer

    @router.route("/channels", methods=["GET"], need=(Action.READ,), query=LIST_QUERY)
    async def list_all(self, request: Request) -> bytes:
        query = params.query(request)
        context = check_name("context", query["context"]) if "context" in query else None
        limit = params.int_param("limit", query["limit"], 1, MAX_LIMIT) if "limit" in query else DEFAULT_LIMIT
        after = after_param(query["after"]) if "after" in query else None
        principal = access.principal_of(request)
        patterns = None
        if not principal.unrestricted:
            patterns = [
                (s.context, s.channel) for s in principal.scopes if s.action in (Action.READ, Action.ADMIN)
            ]
        found = await self.store.list(context, after, limit + 1, patterns) if patterns != [] else []
        if len(found) > limit:
            found = found[:limit]
            last = found[-1]
            link = "/channels?" + (f"context={context}&" if context is not None else "")
            link += f"limit={limit}&after={last.context}/{last.channel}"
            # Names are of [A-Za-z0-9_.:-]: nothing in the link needs escaping.
            request.setHeader(b"Link", f'<{link}>; rel="next"'.encode())
        return render.json(request, [channel_object(info, self.defaults) for info in found])

    @router.route("/channels/<context>/<channel>", methods=["GET"], need=(Action.READ,))
    async def get(self, request: Request, context: str, channel: str) -> bytes:
        return render.json(request, channel_object(await self._info(context, channel), self.defaults))

    @router.route("/channels/<context>/<channel>", methods=["PATCH"], need=(Action.MANAGE,))
    async def patch(self, request: Request, context: str, channel: str) -> bytes:
        await self.store.configure(context, channel, retention_changes(params.body(request)))
        return render.json(request, channel_object(await self._info(context, channel), self.defaults))

    @router.route(
        "/channels/<context>/<channel>/restore", methods=["POST"], need=(Action.ADMIN,), query=RESTORE_QUERY
    )
    async def restore(self, request: Request, context: str, channel: str) -> bytes:
        """Exported events with their ids and timestamps (:mod:`.restore`)."""
        if self.restorer is None:
            raise NotFound("this server does not restore events")
        return await self.restorer.restore(request, context, channel)

    async def _info(self, context: str, channel: str) -> ChannelInfo:
        info = await self.store.get(context, channel)
        if info is None:
            raise NotFound(f"no channel {context}/{channel}: it never had an event and has no settings")
        return info
