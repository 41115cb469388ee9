"""The event object: names, the stored row, and its JSON form.

Payloads are kept as the exact JSON text the publisher sent (validated, never
re-encoded), so numbers too large for a double and key order survive
untouched, and rendering an event is string concatenation.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple, Optional

import orjson

from eventbus.errors import BadRequest

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}\Z")
MAX_ISSUER_LEN = 128
#: Largest id a client may name: ids are PostgreSQL bigints and a cursor
#: must leave room for "the next one".
MAX_ID = 2**63 - 2


class Event(NamedTuple):
    """One stored event, as read from the database."""

    id: int
    timestamp: float
    issuer: str
    payload: str  # JSON text of an object, exactly as published


def check_name(kind: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise BadRequest(
            f"{kind} must match [A-Za-z0-9_.:-]{{1,128}}, got {value[:140]!r}"
        )
    return value


def check_issuer(raw: Optional[bytes]) -> str:
    if raw is None:
        raise BadRequest("missing X-EVENT-ISSUER header")
    try:
        issuer = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRequest("X-EVENT-ISSUER header is not valid UTF-8") from None
    if not issuer:
        raise BadRequest("X-EVENT-ISSUER header is empty")
    if len(issuer) > MAX_ISSUER_LEN:
        raise BadRequest(f"X-EVENT-ISSUER header is longer than {MAX_ISSUER_LEN} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in issuer):
        raise BadRequest("X-EVENT-ISSUER header contains control characters")
    return issuer


def parse_payload(body: bytes) -> tuple[str, object]:
    """Validate a request body; return its text and its parsed value.

    Rejects empty bodies, invalid UTF-8, invalid JSON (NaN and Infinity
    included) with a 400.  The caller decides which shapes it accepts.
    """
    if not body.strip():
        raise BadRequest("empty body: the payload must be a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"body is not valid UTF-8 (byte {e.start})") from None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
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


def render_event(context: str, channel: str, event: Event) -> bytes:
    """The event object as JSON bytes (context/channel need no escaping)."""
    return _template(context, channel, event) % (event.id, event.payload.encode("utf-8"))


def render_events(context: str, channel: str, events: list[Event]) -> list[bytes]:
    """Several events of one channel; a batch shares issuer and timestamp,
    so the constant part of the object is built once."""
    out = []
    template = b""
    key: tuple[str, float] = ("", -1.0)
    for event in events:
        if (event.issuer, event.timestamp) != key:
            key = (event.issuer, event.timestamp)
            template = _template(context, channel, event)
        out.append(template % (event.id, event.payload.encode("utf-8")))
    return out


def _template(context: str, channel: str, event: Event) -> bytes:
    return b"".join((
        b'{"id":%d,"issuer":', orjson.dumps(event.issuer).replace(b"%", b"%%"),
        b',"context":"', context.encode(),
        b'","channel":"', channel.encode(),
        b'","timestamp":', repr(event.timestamp).encode(),
        b',"payload":%s}',
    ))


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
