"""Reading a request: query parameters, headers and JSON bodies, validated.

Invariant: whatever a client sends, these functions return a value within
its documented bounds or raise :class:`~eventbus.errors.InvalidInput` with a
message that names the parameter and quotes (a bounded prefix of) what was
sent; nothing invalid reaches the domain or the database.  A route takes
only the query parameters it declares (:class:`QueryParams`), and a JSON
body nests no deeper than :data:`~eventbus.http.jsontext.MAX_DEPTH` and
names no member twice in one object.

Layer rule: the HTTP layer; pure functions of the request, no I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import orjson
from twisted.web.server import Request

from eventbus.errors import InvalidInput
from eventbus.http import jsontext
from eventbus.model import MAX_ID, PublishCondition, check_issuer, json_integer

#: A long poll's ``timeout`` when none is given (or the server's cap, if lower).
DEFAULT_TIMEOUT_S = 25.0
#: Latest instant a ``start`` may name: the end of year 9999.
MAX_START_S = 253402300799
#: Header names a publisher may give its name in (the second is an alias).
ISSUER_HEADERS = (b"X-EVENT-ISSUER", b"X-JISS-ISSUER")

UINT = re.compile(r"[0-9]{1,19}\Z")
#: A number in a query string, written as a non-negative JSON number is
#: (``2``, ``0.25``, ``2.5e-1``): what a client's number type prints.
UNUMBER = re.compile(r"[0-9]{1,40}(\.[0-9]{1,40})?([eE][-+]?[0-9]{1,4})?\Z")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_PLUS_OFFSET = re.compile(r"\A(.*\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)\Z")


# -- the query string ----------------------------------------------------------------
#: Accepted, and ignored here, on every GET (and HEAD) route: browsers'
#: ``EventSource`` cannot send headers, so a bearer token comes this way.
ACCESS_TOKEN = "access_token"
#: Methods whose routes take :data:`ACCESS_TOKEN`.
READ_METHODS = frozenset({b"GET", b"HEAD"})


@dataclass(frozen=True)
class QueryParams:
    """The query parameters a route takes; any other is a 400 naming it.

    ``names`` go together in the route's plain form.  ``modes`` maps a
    parameter that switches the route into another form to the parameters
    that form takes besides it (``peek`` takes ``timeout``); in that form
    the plain ``names`` are refused, and the mode's own parameters are
    refused without it.
    """

    names: tuple[str, ...] = ()
    modes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def known(self) -> list[str]:
        return [*self.modes, *(p for ps in self.modes.values() for p in ps), *self.names]

    def check(self, given: Mapping[str, str], method: bytes) -> None:
        keys = [k for k in self.modes if k in given]
        if len(keys) > 1:
            raise InvalidInput(f"query parameters {keys[0]} and {keys[1]} cannot be combined")
        allowed = {keys[0], *self.modes[keys[0]]} if keys else set(self.names)
        if method in READ_METHODS:
            allowed.add(ACCESS_TOKEN)
        for name in given:
            if name in allowed:
                continue
            if name not in self.known():
                takes = [*self.known(), *([ACCESS_TOKEN] if method in READ_METHODS else [])]
                raise InvalidInput(
                    f"unknown query parameter {name[:40]!r}; "
                    + (f"this route takes: {', '.join(takes)}" if takes else "this route takes none")
                )
            if keys:
                raise InvalidInput(f"query parameters {name} and {keys[0]} cannot be combined")
            mode = next(k for k, ps in self.modes.items() if name in ps)
            raise InvalidInput(f"query parameter {name} applies only together with {mode}")


#: What a route takes when it declares nothing.
NO_QUERY = QueryParams()


def query(request: Request) -> dict[str, str]:
    """Query parameters of the request; each may appear once."""
    _, mark, raw = request.uri.partition(b"?")
    if not mark:
        return {}
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("query string is not valid UTF-8") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidInput(f"query parameter {name[:40]!r} given more than once")
        params[name] = value
    return params


def int_param(name: str, value: str, low: int, high: int) -> int:
    if not UINT.match(value) or not low <= int(value) <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {value[:40]!r}")
    return int(value)


def choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}, got {value[:40]!r}")
    return value


def path_id(value: str) -> int | None:
    """A positive id from a path segment, or None (the caller's 404)."""
    if not UINT.match(value) or not 1 <= int(value) <= MAX_ID + 1:
        return None
    return int(value)


def timeout_param(value: str | None, max_wait: float) -> float:
    """A long poll's ``timeout``: 0 to ``max_wait`` (``--max-wait``) seconds."""
    if value is None:
        return min(DEFAULT_TIMEOUT_S, max_wait)
    if not UNUMBER.match(value) or not float(value) <= max_wait:
        raise InvalidInput(f"timeout must be a number of seconds from 0 to {max_wait:g}, got {value[:40]!r}")
    return float(value)


def start_param(value: str) -> dt.datetime:
    """Unix seconds (a number) or an ISO-8601 instant, as UTC.  An instant
    before 1970 selects everything, as 1970 does."""
    if UNUMBER.match(value):
        seconds = Decimal(value)
        if seconds > MAX_START_S:
            raise InvalidInput(f"start is out of range (at most {MAX_START_S}): {value[:40]!r}")
        return _EPOCH + dt.timedelta(microseconds=math.ceil(seconds * 1_000_000))
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
    except OverflowError:  # in UTC, before the year 1 or after 9999
        offset = instant.utcoffset() or dt.timedelta()
        return _EPOCH if offset > dt.timedelta() else dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    return max(instant, _EPOCH)


# -- headers -------------------------------------------------------------------------------
def issuer(request: Request) -> str | None:
    """The publisher's name, from ``X-EVENT-ISSUER`` (or its alias); given
    more than once, every value must be the same.  None if neither is sent
    (:func:`eventbus.auth.publishing_issuer` decides)."""
    values = [v for name in ISSUER_HEADERS for v in request.requestHeaders.getRawHeaders(name, [])]
    if not values:
        return None
    if any(v != values[0] for v in values):
        raise InvalidInput("X-EVENT-ISSUER (or X-JISS-ISSUER) given more than once, with different values")
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("X-EVENT-ISSUER header is not valid UTF-8") from None
    return check_issuer(text, "X-EVENT-ISSUER header")


def last_event_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` header an SSE client sends when it reconnects."""
    values = request.requestHeaders.getRawHeaders(b"Last-Event-ID")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput("Last-Event-ID header given more than once")
    return int_param("Last-Event-ID", values[0].decode("latin-1").strip(), 0, MAX_ID)


#: ``Idempotency-Key``: 1 to 255 visible ASCII characters (no space).
IDEMPOTENCY_KEY_MAX = 255
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+\Z")


def _one_header(request: Request, name: bytes) -> bytes | None:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(f"{name.decode()} header given more than once")
    return values[0]


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, if sent (surrounding blanks are not part of it)."""
    value = _one_header(request, b"Idempotency-Key")
    if value is None:
        return None
    if not value:
        raise InvalidInput("Idempotency-Key header is empty")
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise InvalidInput(f"Idempotency-Key header is longer than {IDEMPOTENCY_KEY_MAX} characters")
    if not _VISIBLE_ASCII.match(value):
        raise InvalidInput(
            "Idempotency-Key header must be visible ASCII characters (no spaces or control characters),"
            f" got {value[:40].decode('latin-1')!r}"
        )
    return value.decode("ascii")


def expected_last_id(request: Request) -> int | None:
    """The ``Expected-Last-Id`` header, if sent: 0 (an empty channel) or an id."""
    value = _one_header(request, b"Expected-Last-Id")
    if value is None:
        return None
    return int_param("Expected-Last-Id", value.decode("latin-1"), 0, MAX_ID)


def publish_condition(request: Request, body: bytes) -> PublishCondition | None:
    """What a publish is conditional on, or None for a plain publish.  With
    a key, the body's SHA-256: a repeat is the same request only if its body
    is the same, byte for byte."""
    key = idempotency_key(request)
    expected = expected_last_id(request)
    if key is None and expected is None:
        return None
    digest = hashlib.sha256(body).hexdigest() if key is not None else None
    return PublishCondition(key, digest, expected)


# -- JSON bodies -------------------------------------------------------------------------------
def body(request: Request) -> bytes:
    """The request body (twisted.web has read it whole, within ``--max-body``)."""
    content = request.content
    return content.read() if content is not None else b""


def payload(body: bytes) -> tuple[str, object]:
    """Validate a request body; return its text and its parsed value.

    Rejects empty bodies, invalid UTF-8, invalid JSON (NaN and Infinity
    included), objects nested deeper than :data:`~eventbus.http.jsontext.MAX_DEPTH`
    and objects that name a member twice.  The caller decides which shapes
    it accepts; the events of an array are measured by :func:`batch`.
    """
    if not body.strip():
        raise InvalidInput("empty body: the payload must be a JSON object")
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise InvalidInput(f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        value = orjson.loads(body)  # no recursion: it has its own depth limit
    except orjson.JSONDecodeError as e:
        if jsontext.too_deep(body):
            raise InvalidInput(DEPTH_MESSAGE) from None
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    if not isinstance(value, list) and jsontext.too_deep(body):
        raise InvalidInput(DEPTH_MESSAGE)
    _unique_names(body, text, value)
    return text, value


DEPTH_MESSAGE = f"JSON nested deeper than {jsontext.MAX_DEPTH} levels of arrays and objects (in one event)"
#: Bodies up to this size get the repeated member named in the error (the
#: search is a Python loop; above it, only that there is one).
NAME_SEARCH_MAX = 64 * 1024


def _unique_names(body: bytes, text: str, value: object) -> None:
    """Refuse an object that names a member twice (``{"a": 1, "a": 2}``).

    Parsers disagree on what that means (most keep the last value, some the
    first, some refuse the document), so the consumers of one stored event
    could read different data.  Checked in C: orjson keeps one member per
    name, so the body has more member colons than orjson's rendering of its
    value exactly when a name is repeated.  Colons inside strings are the
    same in both unless the body escapes one (``\\u003a``); then strings are
    cut out of both before counting.
    """
    if not isinstance(value, (dict, list)):
        return
    try:
        rendered = orjson.dumps(value)
    except TypeError:  # orjson renders 254 levels; events have at most MAX_DEPTH
        raise InvalidInput(DEPTH_MESSAGE) from None
    if b"\\u003" in body:
        body, rendered = jsontext.without_strings(body), jsontext.without_strings(rendered)
    if body.count(b":") == rendered.count(b":"):
        return
    name = jsontext.duplicate_name(text) if len(text) <= NAME_SEARCH_MAX else None
    raise InvalidInput(
        "an object names the same member twice"
        + (f": {name[:40]!r}" if name is not None else "")
        + "; member names must be unique"
    )


def batch(text: str) -> list[str]:
    """The exact text of each event of a batch (an array of objects that
    :func:`payload` accepted), each within the nesting limit."""
    items, deepest = jsontext.split_array(text)
    if deepest > jsontext.MAX_DEPTH:
        raise InvalidInput(DEPTH_MESSAGE)
    return items


class Fields(dict[str, Any]):
    """A JSON object body's members, and how the client wrote each value."""

    def __init__(self, values: dict[str, Any], text: str) -> None:
        super().__init__(values)
        self.text = text

    def sent(self, name: str) -> str:
        """The member's value as written (``1e-300`` stays so), bounded.

        (Above :data:`NAME_SEARCH_MAX` characters the scan is not worth it:
        orjson's rendering of the value.)"""
        if len(self.text) <= NAME_SEARCH_MAX:
            for member, raw in jsontext.members(self.text):
                if member == name:
                    return raw[:40]
        return orjson.dumps(self.get(name))[:40].decode(errors="replace")


def object_body(body: bytes, allowed: tuple[str, ...], empty_ok: bool = False) -> Fields:
    """A JSON object body with only ``allowed`` fields."""
    if empty_ok and not body.strip():
        return Fields({}, "{}")
    text, value = payload(body)
    if not isinstance(value, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"unknown field(s) {', '.join(map(repr, unknown))[:200]}; allowed: {', '.join(allowed)}"
        )
    return Fields(value, text)


def number(fields: Fields, name: str, low: float, high: float) -> float:
    """A JSON number of seconds within bounds."""
    value = fields[name]
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high
    if not ok:
        raise InvalidInput(
            f"{name} must be a number of seconds from {low:g} to {high:g}, got {fields.sent(name)}"
        )
    return float(value)


def integer(fields: Fields, name: str, low: int, high: int) -> int:
    """An integer member (``5.0`` is one, as JSON Schema counts) within bounds."""
    value = json_integer(fields[name])
    if value is None or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}, got {fields.sent(name)}")
    return value


def string(fields: dict[str, Any], name: str) -> str:
    """A required string field."""
    value = fields.get(name)
    if value is None:
        raise InvalidInput(f"{name} is required")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value
