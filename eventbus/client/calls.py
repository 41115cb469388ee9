"""Every call of the HTTP API as data: what to send and how to read the answer.

Invariant: the two flavours of the client (:mod:`.sync` on httpx,
:mod:`.tx` on treq) differ only in how they send a :class:`Call` and wait;
what each method sends (path, query, headers, body) and how it reads the
answer (status, JSON, the error of :mod:`.errors`) is written once, here,
after the README's API section.  A call is marked :attr:`Call.retry` only
when sending it twice has the effect of sending it once.

Layer rule: the client library; the standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from eventbus.client.errors import EventBusError, error_for
from eventbus.client.model import DeadEvent, Delivery, Event, dead_event
from eventbus.client.wire import ArrayReader

T = TypeVar("T")

#: The server's default limits (``--max-batch``, ``--max-body``): where
#: ``publish_batch(split=True)`` cuts a list.
MAX_BATCH = 1000
MAX_BODY = 1024 * 1024
#: The server's default and longest hold of a long poll.
DEFAULT_TIMEOUT_S = 25.0
MAX_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Answer:
    """A response: its status, headers (lower-case names) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Answer], T]
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    #: Seconds the server may hold the request before answering.
    hold: float = 0.0
    #: Sending it again after a connection error or a 503 is harmless.
    retry: bool = False


def name(value: str) -> str:
    return quote(value, safe="")


def channel_path(prefix: str, context: str, channel: str) -> str:
    return f"/{prefix}/{name(context)}/{name(channel)}"


def checked(answer: Answer, *ok: int) -> Answer:
    if answer.status not in ok:
        raise error_for(answer.status, answer.body)
    return answer


def json_of(answer: Answer, *ok: int) -> Any:
    checked(answer, *ok)
    try:
        return json.loads(answer.body)
    except ValueError:
        raise EventBusError(f"the server sent no JSON: {answer.body[:120]!r}", status=answer.status) from None


def nothing(answer: Answer) -> None:
    checked(answer, 200, 201, 204)


def encode(payload: Mapping[str, Any] | str | bytes) -> bytes:
    """A payload's JSON text: a mapping is encoded; text is sent as it is."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seconds(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


# -- events -----------------------------------------------------------------------------
def _event(answer: Answer) -> Event:
    checked(answer, 200, 201)
    return Event.from_json(answer.body.decode("utf-8"), missed=int(answer.headers.get("events-missed", 0)))


def _events(answer: Answer) -> list[Event]:
    checked(answer, 200, 201)
    reader = ArrayReader()
    elements = reader.feed(answer.body) + reader.close()
    return [Event.from_json(raw, value) for raw, value in elements]


def publish_headers(
    issuer: str | None, idempotency_key: str | None, expected_last_id: int | None
) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if issuer is not None:
        headers["X-EVENT-ISSUER"] = issuer
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if expected_last_id is not None:
        headers["Expected-Last-Id"] = str(expected_last_id)
    return headers


def new_key() -> str:
    """A fresh ``Idempotency-Key``: what makes a publish safe to resend."""
    return uuid.uuid4().hex


def publish(
    context: str, channel: str, body: bytes, headers: Mapping[str, str], many: bool = False
) -> Call[Any]:
    """A publish; resent on failure only with an ``Idempotency-Key``."""
    return Call(
        "POST",
        channel_path("events", context, channel),
        _events if many else _event,
        headers=headers,
        body=body,
        retry="Idempotency-Key" in headers,
    )


def batches(payloads: Sequence[bytes], max_events: int, max_bytes: int) -> Iterable[list[bytes]]:
    """Consecutive runs of ``payloads`` of at most ``max_events`` and (but
    for one larger event) ``max_bytes`` as an array."""
    run: list[bytes] = []
    size = 2
    for p in payloads:
        if run and (len(run) >= max_events or size + len(p) + 1 > max_bytes):
            yield run
            run, size = [], 2
        run.append(p)
        size += len(p) + 1
    if run:
        yield run


def array(items: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def event(context: str, channel: str, event_id: int) -> Call[Event]:
    return Call("GET", f"{channel_path('events', context, channel)}/{int(event_id)}", _event, retry=True)


def _peeked(answer: Answer) -> Event | None:
    if answer.status == 204:
        return None
    return _event(answer)


def peek(
    context: str, channel: str, cursor: int, timeout: float, on_expired: str = "error"
) -> Call[Event | None]:
    params = {"peek": str(int(cursor)), "timeout": seconds(timeout)}
    if on_expired != "error":
        params["on_expired"] = on_expired
    return Call(
        "GET", channel_path("events", context, channel), _peeked, params=params, hold=timeout, retry=True
    )


def start_param(start: float | dt.datetime | str) -> str:
    if isinstance(start, dt.datetime):
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.timezone.utc)
        return start.isoformat()
    if isinstance(start, str):
        return start
    return seconds(start)


def history_params(start: float | dt.datetime | str | None, limit: int | None) -> dict[str, str]:
    params = {}
    if start is not None:
        params["start"] = start_param(start)
    if limit is not None:
        params["limit"] = str(int(limit))
    return params


def stream_request(
    context: str, channel: str, after: int | None, last_event_id: int | None
) -> tuple[str, dict[str, str], dict[str, str]]:
    """Path, query and headers of an SSE stream (``Last-Event-ID`` wins)."""
    headers = {"Accept": "text/event-stream"}
    params = {}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(int(last_event_id))
    elif after is not None:
        params["after"] = str(int(after))
    return f"{channel_path('events', context, channel)}/stream", params, headers


# -- durable consumers ----------------------------------------------------------------------
def consumer_path(context: str, channel: str, consumer: str) -> str:
    return f"{channel_path('consumers', context, channel)}/{name(consumer)}"


#: ``consumer(..., **config)`` keyword → the PUT body's field.
CONSUMER_FIELDS = {"mode": "mode", "start": "start", "lease": "lease", "max_deliveries": "max_deliveries"}


def configure_consumer(context: str, channel: str, consumer: str, config: Mapping[str, Any]) -> Call[Any]:
    unknown = sorted(set(config) - set(CONSUMER_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown consumer setting(s): {', '.join(unknown)}; known: {', '.join(CONSUMER_FIELDS)}"
        )
    body = json.dumps({CONSUMER_FIELDS[k]: v for k, v in config.items()}).encode()
    path = consumer_path(context, channel, consumer)
    return Call("PUT", path, lambda a: json_of(a, 200, 201), body=body, retry=True)


def consumer_state(context: str, channel: str, consumer: str) -> Call[Any]:
    return Call("GET", consumer_path(context, channel, consumer), lambda a: json_of(a, 200), retry=True)


def consumers(context: str, channel: str) -> Call[Any]:
    return Call("GET", channel_path("consumers", context, channel), lambda a: json_of(a, 200), retry=True)


def delete_consumer(context: str, channel: str, consumer: str) -> Call[None]:
    return Call("DELETE", consumer_path(context, channel, consumer), nothing)


def _leased(answer: Answer) -> Delivery | None:
    if answer.status == 204:
        return None
    return Delivery.from_json(json_of(answer, 200))


def next_lease(context: str, channel: str, consumer: str, timeout: float) -> Call[Delivery | None]:
    # Not resent by itself: a lost answer leaves a lease nobody holds, which
    # expires and is delivered again; the caller decides to ask again.
    path = consumer_path(context, channel, consumer) + "/next"
    return Call("POST", path, _leased, params={"timeout": seconds(timeout)}, hold=timeout)


def ack(context: str, channel: str, consumer: str, lease: str) -> Call[None]:
    body = json.dumps({"lease": lease}).encode()
    return Call("POST", consumer_path(context, channel, consumer) + "/ack", nothing, body=body)


def nack(context: str, channel: str, consumer: str, lease: str, delay: float | None) -> Call[None]:
    fields: dict[str, Any] = {"lease": lease}
    if delay is not None:
        fields["delay"] = delay
    body = json.dumps(fields).encode()
    return Call("POST", consumer_path(context, channel, consumer) + "/nack", nothing, body=body)


def _dead(answer: Answer) -> list[DeadEvent]:
    return [dead_event(v) for v in json_of(answer, 200)]


def dead(context: str, channel: str, consumer: str) -> Call[list[DeadEvent]]:
    return Call("GET", consumer_path(context, channel, consumer) + "/dead", _dead, retry=True)


def retry_dead(context: str, channel: str, consumer: str, event_id: int) -> Call[None]:
    path = f"{consumer_path(context, channel, consumer)}/dead/{int(event_id)}/retry"
    return Call("POST", path, nothing)


# -- webhook subscriptions ---------------------------------------------------------------------
def subscribe(fields: Mapping[str, Any]) -> Call[Any]:
    body = json.dumps({k: v for k, v in fields.items() if v is not None}).encode()
    return Call("POST", "/subscriptions", lambda a: json_of(a, 201), body=body)


def subscriptions() -> Call[Any]:
    return Call("GET", "/subscriptions", lambda a: json_of(a, 200), retry=True)


def subscription(sub_id: int) -> Call[Any]:
    return Call("GET", f"/subscriptions/{int(sub_id)}", lambda a: json_of(a, 200), retry=True)


def delete_subscription(sub_id: int) -> Call[None]:
    return Call("DELETE", f"/subscriptions/{int(sub_id)}", nothing)


def enable_subscription(sub_id: int) -> Call[Any]:
    return Call("POST", f"/subscriptions/{int(sub_id)}/enable", lambda a: json_of(a, 200), retry=True)


# -- channels -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelPage:
    """One page of ``GET /channels``, and where the next starts (None: last page)."""

    channels: list[dict[str, Any]]
    next_after: str | None


def _channel_page(answer: Answer) -> ChannelPage:
    items = json_of(answer, 200)
    link = answer.headers.get("link", "")
    next_after = None
    if 'rel="next"' in link and "after=" in link:
        next_after = link.split("after=", 1)[1].split(">", 1)[0].split("&", 1)[0]
    return ChannelPage(items, next_after)


def channel_page(context: str | None, after: str | None, limit: int | None) -> Call[ChannelPage]:
    params = {}
    if context is not None:
        params["context"] = context
    if after is not None:
        params["after"] = after
    if limit is not None:
        params["limit"] = str(int(limit))
    return Call("GET", "/channels", _channel_page, params=params, retry=True)


def channel(context: str, channel: str) -> Call[Any]:
    return Call("GET", channel_path("channels", context, channel), lambda a: json_of(a, 200), retry=True)


def configure_channel(context: str, channel: str, retention: Mapping[str, Any]) -> Call[Any]:
    body = json.dumps({"retention": dict(retention)}).encode()
    path = channel_path("channels", context, channel)
    return Call("PATCH", path, lambda a: json_of(a, 200), body=body, retry=True)


def restore(context: str, channel: str, events: Sequence[str], after: int) -> Call[Any]:
    """Restore events (their JSON texts) after the channel's last id ``after``."""
    body = array(e.encode("utf-8") for e in events)
    path = channel_path("channels", context, channel) + "/restore"
    return Call("POST", path, lambda a: json_of(a, 200), params={"after": str(after)}, body=body)


# -- tokens and health ----------------------------------------------------------------------------
def create_token(fields: Mapping[str, Any]) -> Call[Any]:
    body = json.dumps({k: v for k, v in fields.items() if v is not None}).encode()
    return Call("POST", "/tokens", lambda a: json_of(a, 201), body=body)


def tokens() -> Call[Any]:
    return Call("GET", "/tokens", lambda a: json_of(a, 200), retry=True)


def token(token_name: str) -> Call[Any]:
    return Call("GET", f"/tokens/{name(token_name)}", lambda a: json_of(a, 200), retry=True)


def revoke_token(token_name: str) -> Call[None]:
    return Call("DELETE", f"/tokens/{name(token_name)}", nothing)


def health() -> Call[Any]:
    return Call("GET", "/health", lambda a: json_of(a, 200), retry=True)
