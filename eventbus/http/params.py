"""Reading a request: query parameters, headers and JSON bodies, validated.

Invariant: whatever a client sends, these functions return a value within
its documented bounds or raise :class:`~eventbus.errors.InvalidInput` with a
message that names the parameter and quotes (a bounded prefix of) what was
sent; nothing invalid reaches the domain or the database.

Layer rule: the HTTP layer; pure functions of the request, no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson
from twisted.web.server import Request

from eventbus.errors import InvalidInput
from eventbus.model import MAX_ID, check_issuer

DEFAULT_TIMEOUT_S = 25.0
#: Longest long-poll ``timeout`` (peek, consumer ``next``).
MAX_TIMEOUT_S = 300.0
#: Latest instant a ``start`` may name: the end of year 9999.
MAX_START_S = 253402300799
#: Header names a publisher may give its name in (the second is an alias).
ISSUER_HEADERS = (b"X-EVENT-ISSUER", b"X-JISS-ISSUER")

UINT = re.compile(r"[0-9]{1,19}\Z")
_UDECIMAL = re.compile(r"[0-9]{1,19}(\.[0-9]{1,9})?\Z")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_PLUS_OFFSET = re.compile(r"\A(.*\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)\Z")


# -- the query string ----------------------------------------------------------------
def query(request: Request) -> dict[str, str]:
    """Query parameters of the request; each may appear once."""
    _, _, raw = request.uri.partition(b"?")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("query string is not valid UTF-8") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidInput(f"query parameter {name!r} given more than once")
        params[name] = value
    return params


def int_param(name: str, value: str, low: int, high: int) -> int:
    if not UINT.match(value) or not low <= int(value) <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {value[:40]!r}")
    return int(value)


def path_id(value: str) -> int | None:
    """A positive id from a path segment, or None (the caller's 404)."""
    if not UINT.match(value) or not 1 <= int(value) <= MAX_ID + 1:
        return None
    return int(value)


def timeout_param(value: str | None) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if not _UDECIMAL.match(value) or float(value) > MAX_TIMEOUT_S:
        raise InvalidInput(
            f"timeout must be a number of seconds from 0 to {MAX_TIMEOUT_S:g}, got {value[:40]!r}"
        )
    return float(value)


def start_param(value: str) -> dt.datetime:
    """Unix seconds (integer or fractional) or an ISO-8601 instant, as UTC."""
    if _UDECIMAL.match(value):
        micros = math.ceil(Decimal(value) * 1_000_000)
        if micros > MAX_START_S * 1_000_000:
            raise InvalidInput(f"start is out of range: {value[:40]!r}")
        return _EPOCH + dt.timedelta(microseconds=micros)
    # An unencoded "+01:00" offset arrives as " 01:00" (form decoding).
    value = _PLUS_OFFSET.sub(r"\1+\2", value)
    try:
        instant = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"start must be unix seconds or an ISO-8601 instant, got {value[:40]!r}") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.timezone.utc)
    try:
        instant = instant.astimezone(dt.timezone.utc)
    except OverflowError:
        raise InvalidInput(f"start is out of range: {value[:40]!r}") from None
    if instant < _EPOCH:
        raise InvalidInput(f"start is before 1970: {value[:40]!r}")
    return instant


# -- headers -------------------------------------------------------------------------------
def issuer(request: Request) -> str | None:
    """The publisher's name, from ``X-EVENT-ISSUER`` (or its alias); None if
    neither is sent (:func:`eventbus.auth.publishing_issuer` decides)."""
    for name in ISSUER_HEADERS:
        values = request.requestHeaders.getRawHeaders(name)
        if values:
            try:
                text = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("X-EVENT-ISSUER header is not valid UTF-8") from None
            return check_issuer(text, "X-EVENT-ISSUER header")
    return None


def last_event_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` header an SSE client sends when it reconnects."""
    values = request.requestHeaders.getRawHeaders(b"Last-Event-ID")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput("Last-Event-ID header given more than once")
    return int_param("Last-Event-ID", values[0].decode("latin-1").strip(), 0, MAX_ID)


# -- JSON bodies -------------------------------------------------------------------------------
def body(request: Request) -> bytes:
    """The request body (twisted.web has read it whole, within ``--max-body``)."""
    content = request.content
    return content.read() if content is not None else b""


def payload(body: bytes) -> tuple[str, object]:
    """Validate a request body; return its text and its parsed value.

    Rejects empty bodies, invalid UTF-8, invalid JSON (NaN and Infinity
    included).  The caller decides which shapes it accepts.
    """
    if not body.strip():
        raise InvalidInput("empty body: the payload must be a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    return text.strip(), value


_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


def split_array(text: str) -> list[str]:
    """The exact source text of each element of an (already validated) JSON array.

    Elements are kept as sent, like single payloads; the stdlib's C scanner
    finds where each one ends.
    """
    items: list[str] = []
    i = text.index("[") + 1
    n = len(text)
    while True:
        while i < n and text[i] in _WS:
            i += 1
        if text[i] == "]":
            return items
        _, end = _DECODER.raw_decode(text, i)
        items.append(text[i:end])
        i = end
        while i < n and text[i] in _WS:
            i += 1
        if text[i] == ",":
            i += 1


def object_body(body: bytes, allowed: tuple[str, ...], empty_ok: bool = False) -> dict[str, Any]:
    """A JSON object body with only ``allowed`` fields."""
    if empty_ok and not body.strip():
        return {}
    _, value = payload(body)
    if not isinstance(value, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; allowed: {', '.join(allowed)}"
        )
    return value


def shown(value: Any) -> str:
    return orjson.dumps(value)[:40].decode(errors="replace")


def number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """A JSON number of seconds within bounds."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and (low < value if low_open else low <= value)
        and value <= high
    )
    if not ok:
        bound = f"more than {low:g}" if low_open else f"from {low:g}"
        raise InvalidInput(f"{name} must be a number of seconds {bound} to {high:g}, got {shown(value)}")
    return float(value)


def integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {shown(value)}")
    return value


def string(fields: dict[str, Any], name: str) -> str:
    """A required string field."""
    value = fields.get(name)
    if value is None:
        raise InvalidInput(f"{name} is required")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value
