"""The HTTP API: Klein routes that parse, call the store or notifier, render.

No SQL here, and no error body built by hand: handlers raise the typed
errors of :mod:`eventbus.errors`, and :meth:`EventBusAPI.api_error` renders
them all.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote_to_bytes

import orjson
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import RequestRedirect

from eventbus.consumers import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MODE,
    DEFAULT_START,
    MAX_DELIVERIES_LIMIT,
    MAX_LEASE_S,
    MAX_NACK_DELAY_S,
    MODES,
    ConsumerConfig,
    Consumers,
    ConsumerStatus,
    Delivery,
)
from eventbus.consumerstore import ConsumerStore
from eventbus.errors import ApiError, BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from eventbus.model import (
    MAX_ID,
    Event,
    check_issuer,
    check_name,
    error_body,
    parse_payload,
    render_event,
    render_events,
    split_array,
)
from eventbus.notifier import Notifier
from eventbus.pacer import Pacer
from eventbus.sse import DEFAULT_HEARTBEAT_S, EventStreams
from eventbus.store import PAGE_SIZE, Store
from eventbus.webhooks import WebhookService
from eventbus.webhookstore import ALL_CHANNELS, Start, SubscriptionState

log = Logger()

DEFAULT_PEEK_TIMEOUT_S = 25.0
DEFAULT_MAX_BATCH = 1000
MAX_PEEK_TIMEOUT_S = 300.0
#: Latest instant a ``start`` may name: the end of year 9999.
MAX_START_S = 253402300799
JSON = b"application/json"

_UINT = re.compile(r"[0-9]{1,19}\Z")
_UDECIMAL = re.compile(r"[0-9]{1,19}(\.[0-9]{1,9})?\Z")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_PLUS_OFFSET = re.compile(r"\A(.*\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)\Z")


class EventBusAPI:
    """The REST API over one store and one notifier."""

    app = Klein()

    def __init__(self, store: Store, notifier: Notifier, reactor: IReactorTime,
                 max_batch: int = DEFAULT_MAX_BATCH,
                 heartbeat: float = DEFAULT_HEARTBEAT_S,
                 consumers: Optional[Consumers] = None,
                 webhooks: Optional[WebhookService] = None) -> None:
        self.store = store
        self.notifier = notifier
        self.reactor = reactor
        self.max_batch = max_batch
        self.streams = EventStreams(store, notifier, reactor, heartbeat)
        self.consumers = consumers or Consumers(reactor, ConsumerStore(store), notifier)
        self.webhooks = webhooks

    def resource(self) -> Resource:
        return _Utf8PathGuard(self.app.resource())

    # -- routes -------------------------------------------------------------
    @app.route("/health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        await self.store.ping()
        return _json(request, {"status": "ok"})

    @app.route("/events/<context>/<channel>", methods=["POST"])
    async def publish(self, request: IRequest, context: str, channel: str) -> bytes:
        check_name("context", context)
        check_name("channel", channel)
        issuer = check_issuer(_issuer_header(request))
        text, value = parse_payload(request.content.read())
        if isinstance(value, list):
            return await self._publish_batch(request, context, channel, issuer, text, value)
        if not isinstance(value, dict):
            raise BadRequest("the payload must be a JSON object (or an array of objects)")
        [event] = await self.store.append(context, channel, issuer, [text])
        request.setHeader(b"Location", f"/events/{context}/{channel}/{event.id}".encode())
        return _body(request, render_event(context, channel, event), 201)

    async def _publish_batch(self, request: IRequest, context: str, channel: str,
                             issuer: str, text: str, values: list) -> bytes:
        """An array body: all its events are stored atomically, in array order."""
        if not values:
            raise BadRequest("a batch must hold at least one event")
        if len(values) > self.max_batch:
            raise PayloadTooLarge(
                f"a batch may hold at most {self.max_batch} events, got {len(values)}")
        for i, value in enumerate(values):
            if not isinstance(value, dict):
                raise BadRequest(f"batch element {i} is not a JSON object")
        payloads = split_array(text)
        events = await self.store.append(context, channel, issuer, payloads)
        body = b"[" + b",".join(render_events(context, channel, events)) + b"]"
        return _body(request, body, 201)

    @app.route("/events/<context>/<channel>", methods=["GET"])
    async def read(self, request: IRequest, context: str, channel: str) -> Optional[bytes]:
        check_name("context", context)
        check_name("channel", channel)
        params = _query(request)
        # Every parameter given is checked, even one this mode ignores.
        limit = None
        if "limit" in params:
            limit = _int_param("limit", params["limit"], 1, 2**63 - 1)
        timeout = _timeout_param(params.get("timeout"))
        if "peek" in params:
            if "start" in params:
                raise BadRequest("start and peek cannot be combined")
            cursor = _int_param("peek", params["peek"], 0, MAX_ID)
            return await self._peek(request, context, channel, cursor, timeout)
        start = _start_param(params["start"]) if "start" in params else None
        await self._stream(request, context, channel, start, limit)
        return None

    @app.route("/events/<context>/<channel>/stream", methods=["GET"])
    async def stream(self, request: IRequest, context: str, channel: str) -> None:
        """Server-Sent Events; werkzeug ranks this static segment above <event_id>."""
        check_name("context", context)
        check_name("channel", channel)
        params = _query(request)
        after = None
        if "after" in params:
            after = _int_param("after", params["after"], 0, MAX_ID)
        last_event_id = _last_event_id(request)
        if last_event_id is not None:
            after = last_event_id  # a reconnect resumes where it stopped
        await self.streams.serve(request, context, channel, after)

    @app.route("/events/<context>/<channel>/<event_id>", methods=["GET"])
    async def one(self, request: IRequest, context: str, channel: str,
                  event_id: str) -> bytes:
        check_name("context", context)
        check_name("channel", channel)
        if not _UINT.match(event_id) or not 1 <= int(event_id) <= MAX_ID + 1:
            raise NotFound(f"no event {event_id[:40]!r} in {context}/{channel}")
        event = await self.store.event(context, channel, int(event_id))
        if event is None:
            raise NotFound(f"no event {event_id} in {context}/{channel}")
        return _body(request, render_event(context, channel, event))

    # -- durable consumers ---------------------------------------------------
    @app.route("/consumers/<context>/<channel>", methods=["GET"])
    async def list_consumers(self, request: IRequest, context: str, channel: str) -> bytes:
        _check_consumer(context, channel)
        found = await self.consumers.list(context, channel)
        return _body(request, b"[" + b",".join(_render_status(s) for s in found) + b"]")

    @app.route("/consumers/<context>/<channel>/<name>", methods=["PUT"])
    async def put_consumer(self, request: IRequest, context: str, channel: str,
                           name: str) -> bytes:
        _check_consumer(context, channel, name)
        config = _consumer_config(request.content.read())
        created, status = await self.consumers.configure(context, channel, name, config)
        return _body(request, _render_status(status), 201 if created else 200)

    @app.route("/consumers/<context>/<channel>/<name>", methods=["GET"])
    async def get_consumer(self, request: IRequest, context: str, channel: str,
                           name: str) -> bytes:
        _check_consumer(context, channel, name)
        status = await self.consumers.status(context, channel, name)
        return _body(request, _render_status(status))

    @app.route("/consumers/<context>/<channel>/<name>", methods=["DELETE"])
    async def delete_consumer(self, request: IRequest, context: str, channel: str,
                              name: str) -> bytes:
        _check_consumer(context, channel, name)
        await self.consumers.delete(context, channel, name)
        request.setResponseCode(204)
        return b""

    @app.route("/consumers/<context>/<channel>/<name>/next", methods=["POST"])
    async def next_event(self, request: IRequest, context: str, channel: str,
                         name: str) -> bytes:
        _check_consumer(context, channel, name)
        timeout = _timeout_param(_query(request).get("timeout"))
        delivery = await self.consumers.next(context, channel, name, timeout)
        if delivery is None:
            request.setResponseCode(204)
            return b""
        return _body(request, _render_delivery(context, channel, delivery))

    @app.route("/consumers/<context>/<channel>/<name>/ack", methods=["POST"])
    async def ack(self, request: IRequest, context: str, channel: str, name: str) -> bytes:
        _check_consumer(context, channel, name)
        fields = _object_body(request.content.read(), ("lease",))
        await self.consumers.ack(context, channel, name, _lease_token(fields))
        request.setResponseCode(204)
        return b""

    @app.route("/consumers/<context>/<channel>/<name>/nack", methods=["POST"])
    async def nack(self, request: IRequest, context: str, channel: str, name: str) -> bytes:
        _check_consumer(context, channel, name)
        fields = _object_body(request.content.read(), ("lease", "delay"))
        delay = 0.0
        if "delay" in fields:
            delay = _number("delay", fields["delay"], 0, MAX_NACK_DELAY_S)
        await self.consumers.nack(context, channel, name, _lease_token(fields), delay)
        request.setResponseCode(204)
        return b""

    @app.route("/consumers/<context>/<channel>/<name>/dead", methods=["GET"])
    async def dead(self, request: IRequest, context: str, channel: str, name: str) -> bytes:
        _check_consumer(context, channel, name)
        found = await self.consumers.dead(context, channel, name)
        return _body(request, b"[" + b",".join(
            _render_leased(context, channel, d.event, d.deliveries) for d in found) + b"]")

    @app.route("/consumers/<context>/<channel>/<name>/dead/<event_id>/retry",
               methods=["POST"])
    async def retry(self, request: IRequest, context: str, channel: str, name: str,
                    event_id: str) -> bytes:
        _check_consumer(context, channel, name)
        if not _UINT.match(event_id) or not 1 <= int(event_id) <= MAX_ID + 1:
            raise NotFound(f"event {event_id[:40]!r} is not dead for consumer {name}")
        await self.consumers.retry(context, channel, name, int(event_id))
        request.setResponseCode(204)
        return b""
    # -- webhook subscriptions ----------------------------------------------------
    @app.route("/subscriptions", methods=["POST"])
    async def create_subscription(self, request: IRequest) -> bytes:
        webhooks = self._webhooks()
        _, body = parse_payload(request.content.read())
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        unknown = sorted(set(body) - _SUBSCRIPTION_FIELDS)
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(unknown)[:200]}")
        context = check_name("context", _str_field(body, "context"))
        channel = _str_field(body, "channel")
        if channel != ALL_CHANNELS:
            check_name("channel", channel)
        url = _str_field(body, "url")
        secret = body.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise BadRequest("secret must be a string")
        start = _start_field(body.get("start"), channel)
        state, secret = await webhooks.create(context, channel, url, secret, start)
        request.setHeader(b"Location", f"/subscriptions/{state.id}".encode())
        return _body(request, orjson.dumps(_subscription(state, secret)), 201)

    @app.route("/subscriptions", methods=["GET"])
    async def list_subscriptions(self, request: IRequest) -> bytes:
        states = await self._webhooks().states()
        return _json(request, [_subscription(s) for s in states])

    @app.route("/subscriptions/<sub_id>", methods=["GET"])
    async def get_subscription(self, request: IRequest, sub_id: str) -> bytes:
        states = await self._webhooks().states(_subscription_id(sub_id))
        if not states:
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        return _json(request, _subscription(states[0]))

    @app.route("/subscriptions/<sub_id>", methods=["DELETE"])
    async def delete_subscription(self, request: IRequest, sub_id: str) -> bytes:
        if not await self._webhooks().delete(_subscription_id(sub_id)):
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        request.setResponseCode(204)
        return b""

    @app.route("/subscriptions/<sub_id>/enable", methods=["POST"])
    async def enable_subscription(self, request: IRequest, sub_id: str) -> bytes:
        sid = _subscription_id(sub_id)
        webhooks = self._webhooks()
        if not await webhooks.enable(sid):
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        states = await webhooks.states(sid)
        if not states:  # deleted in between
            raise NotFound(f"no subscription {sub_id[:40]!r}")
        return _json(request, _subscription(states[0]))

    def _webhooks(self) -> WebhookService:
        if self.webhooks is None:
            raise NotFound("webhooks are not enabled on this server")
        return self.webhooks

    # -- reading ------------------------------------------------------------
    async def _peek(self, request: IRequest, context: str, channel: str,
                    cursor: int, timeout: float) -> bytes:
        if timeout == 0:
            recent = self.notifier.recent(context, channel, cursor, 1)
            event = recent[0] if recent else await self.store.first_after(context, channel, cursor)
        else:
            event = await self.notifier.wait(context, channel, cursor, timeout)
        if event is None:
            request.setResponseCode(204)
            return b""
        return _body(request, render_event(context, channel, event))

    async def _stream(self, request: IRequest, context: str, channel: str,
                      start: Optional[dt.datetime], limit: Optional[int]) -> None:
        """Write the channel as a JSON array, page by page, paced by the client.

        The array ends at the channel's head as of the request, so it is a
        consistent prefix of the log even while publishers keep writing.
        """
        head = await self.store.head(context, channel)
        after = 0
        if start is not None and head:
            first = await self.store.first_id_at(context, channel, start)
            after = head if first is None else first - 1
        remaining = limit if limit is not None else head
        request.setHeader(b"Content-Type", JSON)
        pacer = Pacer()
        request.registerProducer(pacer, True)
        try:
            request.write(b"[")
            separator = b""
            while after < head and remaining > 0:
                await pacer.ready()
                page = await self.store.page(context, channel, after, head,
                                             min(PAGE_SIZE, remaining))
                if not page:
                    break
                request.write(separator + b",".join(
                    render_event(context, channel, e) for e in page))
                separator = b","
                after = page[-1].id
                remaining -= len(page)
            request.write(b"]")
        except ApiError:
            # The 200 and part of the array are out: the only honest signal
            # left is to cut the connection so the client sees a truncation.
            log.warn("aborting a history stream of {context}/{channel}",
                     context=context, channel=channel)
            request.unregisterProducer()
            request.channel.transport.abortConnection()
            await request.notifyFinish()
        finally:
            if request.producer is not None:
                request.unregisterProducer()

    # -- errors -------------------------------------------------------------
    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        if isinstance(error, MethodNotAllowed):
            request.setHeader(b"Allow", ", ".join(error.allowed).encode())
        return _error(request, error.status, error.message)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        if isinstance(error, WerkzeugMethodNotAllowed):
            allowed = sorted(error.valid_methods or [])
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            method = request.method.decode("latin-1")
            return _error(request, 405, f"method {method} not allowed here; allowed: {', '.join(allowed)}")
        # RequestRedirect: werkzeug would merge "//" and redirect to another
        # resource ("/events/c//1" to channel "1"); an empty name is no path.
        if isinstance(error, (WerkzeugNotFound, RequestRedirect)):
            return _error(request, 404, f"no such resource: {request.path.decode('latin-1')[:200]}")
        return _error(request, error.code or 400, error.description or error.name)

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("unhandled error serving {uri}", failure, uri=request.uri)
        return _error(request, 500, "internal error")


# -- helpers -------------------------------------------------------------------
_SUBSCRIPTION_FIELDS = {"context", "channel", "url", "secret", "start"}


def _str_field(body: dict, name: str) -> str:
    value = body.get(name)
    if value is None:
        raise BadRequest(f"{name} is required")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _start_field(value: Any, channel: str) -> Start:
    """Parse start: "latest", "earliest" or the id of the first event to deliver."""
    if value in ("latest", "earliest"):
        return value
    if value is None:
        raise BadRequest('start is required: "latest", "earliest" or an event id')
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID + 1:
        raise BadRequest(f'start must be "latest", "earliest" or an event id from 1 to'
                         f" {MAX_ID + 1}, got {str(value)[:40]!r}")
    if channel == ALL_CHANNELS:
        raise BadRequest('an event id as start needs one channel, not "*"')
    return value


def _subscription_id(value: str) -> int:
    if not _UINT.match(value) or int(value) > 2**63 - 1:
        raise NotFound(f"no subscription {value[:40]!r}")
    return int(value)


def _subscription(state: SubscriptionState, secret: Optional[str] = None) -> dict[str, Any]:
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


def _body(request: IRequest, body: bytes, status: int = 200) -> bytes:
    """A complete JSON response (with Content-Length, so no chunking)."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _json(request: IRequest, value: Any) -> bytes:
    return _body(request, orjson.dumps(value))


def _error(request: IRequest, status: int, message: str) -> bytes:
    return _body(request, error_body(message), status)


def _issuer_header(request: IRequest) -> Optional[bytes]:
    for name in (b"X-EVENT-ISSUER", b"X-JISS-ISSUER"):
        values = request.requestHeaders.getRawHeaders(name)
        if values:
            return values[0]
    return None


def _last_event_id(request: IRequest) -> Optional[int]:
    """The ``Last-Event-ID`` header an SSE client sends when it reconnects."""
    values = request.requestHeaders.getRawHeaders(b"Last-Event-ID")
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("Last-Event-ID header given more than once")
    return _int_param("Last-Event-ID", values[0].decode("latin-1").strip(), 0, MAX_ID)


def _query(request: IRequest) -> dict[str, str]:
    """Query parameters of the request; each may appear once."""
    _, _, raw = request.uri.partition(b"?")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True,
                          encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("query string is not valid UTF-8") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise BadRequest(f"query parameter {name!r} given more than once")
        params[name] = value
    return params


def _int_param(name: str, value: str, low: int, high: int) -> int:
    if not _UINT.match(value) or not low <= int(value) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {value[:40]!r}")
    return int(value)


def _timeout_param(value: Optional[str]) -> float:
    if value is None:
        return DEFAULT_PEEK_TIMEOUT_S
    if not _UDECIMAL.match(value) or float(value) > MAX_PEEK_TIMEOUT_S:
        raise BadRequest(
            f"timeout must be a number of seconds from 0 to {MAX_PEEK_TIMEOUT_S:g},"
            f" got {value[:40]!r}"
        )
    return float(value)


def _start_param(value: str) -> dt.datetime:
    """Unix seconds (integer or fractional) or an ISO-8601 instant, as UTC."""
    if _UDECIMAL.match(value):
        micros = math.ceil(Decimal(value) * 1_000_000)
        if micros > MAX_START_S * 1_000_000:
            raise BadRequest(f"start is out of range: {value[:40]!r}")
        return _EPOCH + dt.timedelta(microseconds=micros)
    # An unencoded "+01:00" offset arrives as " 01:00" (form decoding).
    value = _PLUS_OFFSET.sub(r"\1+\2", value)
    try:
        instant = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            "start must be unix seconds or an ISO-8601 instant, got " f"{value[:40]!r}"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.timezone.utc)
    try:
        instant = instant.astimezone(dt.timezone.utc)
    except OverflowError:
        raise BadRequest(f"start is out of range: {value[:40]!r}") from None
    if instant < _EPOCH:
        raise BadRequest(f"start is before 1970: {value[:40]!r}")
    return instant


# -- consumer helpers ------------------------------------------------------------
_CONSUMER_FIELDS = ("mode", "start", "lease", "max_deliveries")


def _check_consumer(context: str, channel: str, name: Optional[str] = None) -> None:
    check_name("context", context)
    check_name("channel", channel)
    if name is not None:
        check_name("consumer name", name)


def _object_body(body: bytes, allowed: tuple[str, ...],
                 empty_ok: bool = False) -> dict[str, Any]:
    """A JSON object body with only ``allowed`` fields."""
    if empty_ok and not body.strip():
        return {}
    _, value = parse_payload(body)
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))[:200]};"
                         f" allowed: {', '.join(allowed)}")
    return value


def _number(name: str, value: Any, low: float, high: float,
            low_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        bound = f"more than {low:g}" if low_open else f"from {low:g}"
        raise BadRequest(f"{name} must be a number of seconds {bound} to {high:g},"
                         f" got {orjson.dumps(value)[:40].decode()}")
    return float(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high},"
                         f" got {orjson.dumps(value)[:40].decode()}")
    return value


def _consumer_config(body: bytes) -> ConsumerConfig:
    """A PUT body; absent fields take their defaults (PUT sets the whole
    configuration), and an empty body means all defaults."""
    fields = _object_body(body, _CONSUMER_FIELDS, empty_ok=True)
    mode = fields.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)},"
                         f" got {orjson.dumps(mode)[:40].decode()}")
    start = fields.get("start", DEFAULT_START)
    if start not in ("earliest", "latest"):
        if isinstance(start, str):
            raise BadRequest(f"start must be \"earliest\", \"latest\" or an event id,"
                             f" got {orjson.dumps(start)[:40].decode()}")
        start = _integer("start", start, 1, MAX_ID + 1)
    lease = DEFAULT_LEASE_S
    if "lease" in fields:
        lease = _number("lease", fields["lease"], 0, MAX_LEASE_S, low_open=True)
    max_deliveries = DEFAULT_MAX_DELIVERIES
    if "max_deliveries" in fields:
        max_deliveries = _integer("max_deliveries", fields["max_deliveries"], 1,
                                  MAX_DELIVERIES_LIMIT)
    return ConsumerConfig(mode, lease, max_deliveries, start)


def _lease_token(fields: dict[str, Any]) -> str:
    token = fields.get("lease")
    if not isinstance(token, str) or not token:
        raise BadRequest("lease must be the lease token string returned by next")
    return token


def _seconds(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def _render_status(s: ConsumerStatus) -> bytes:
    return orjson.dumps({
        "name": s.name, "mode": s.mode, "cursor": s.cursor, "lag": s.lag,
        "in_flight": s.in_flight, "dead": s.dead, "lease": _seconds(s.lease_s),
        "max_deliveries": s.max_deliveries,
    })


def _render_leased(context: str, channel: str, event: Event, deliveries: int,
                   lease: Optional[str] = None) -> bytes:
    token = b"" if lease is None else b',"lease":' + orjson.dumps(lease)
    return (b'{"event":' + render_event(context, channel, event) + token
            + b',"deliveries":%d}' % deliveries)


def _render_delivery(context: str, channel: str, d: Delivery) -> bytes:
    return _render_leased(context, channel, d.event, d.deliveries, d.lease)


class _Utf8PathGuard(Resource):
    """Answers a non-UTF-8 path with a JSON 400 (Klein's answer is plain text),
    and a path with an encoded slash too: twisted.web decodes each segment and
    Klein joins them with "/", so a name "a%2Fb" would route as two segments."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self.inner = inner

    def render(self, request: IRequest) -> Any:
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return _error(request, 400, "request path is not valid UTF-8")
        if b"%2f" in request.path.lower():
            return _error(request, 400, "a name in the request path contains an encoded '/'")
        return self.inner.render(request)
