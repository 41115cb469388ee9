"""Value types of the event bus, built by keyword, and the event's JSON form.

Invariant: an :class:`Event` is immutable once committed, and its payload is
the exact JSON text the publisher sent (validated, never re-encoded), so
numbers too large for a double and key order survive untouched, and
rendering an event is string concatenation.

Layer rule: imports nothing of ours but :mod:`eventbus.errors`; no HTTP (no
header names, no statuses), no SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import orjson

from eventbus.errors import InvalidInput

#: Names of contexts, channels and consumers.
NAME_PATTERN = r"[A-Za-z0-9_.:-]{1,128}"
NAME_RE = re.compile(NAME_PATTERN + r"\Z")
MAX_ISSUER_LEN = 128
#: Largest id a client may name: ids are PostgreSQL bigints and a cursor
#: must leave room for "the next one".
MAX_ID = 2**63 - 2

#: ``(context, channel)``: how a channel is named everywhere in the process.
ChannelKey = tuple[str, str]


class Event(NamedTuple):
    """One stored event, as read from the database."""

    id: int
    timestamp: float
    issuer: str
    payload: str  # JSON text of an object, exactly as published


class Pruned(NamedTuple):
    """The answer to "the first event after a cursor" when retention deleted
    every event after it that was ever published: the next one stored will
    be ``first_id`` (those from the cursor + 1 to ``first_id`` - 1 are gone)."""

    first_id: int


# -- channels and retention -----------------------------------------------------------
@dataclass(frozen=True)
class Retention:
    """A retention policy: events older than ``max_age_s`` seconds, or
    beyond the newest ``max_events``, are deleted; None: no such limit (in a
    channel's settings: the server's default applies)."""

    max_age_s: float | None = None
    max_events: int | None = None


@dataclass(frozen=True)
class ChannelInfo:
    """A channel as stored: its ids, its times and its own retention settings."""

    context: str
    channel: str
    #: The channel's last id (0: never written).
    last_id: int
    #: The highest id retention deleted (0: none); stored are pruned_to+1 .. last_id.
    pruned_to: int
    first_timestamp: float | None
    last_timestamp: float | None
    settings: Retention = field(default_factory=Retention)

    @property
    def count(self) -> int:
        return max(0, self.last_id - self.pruned_to)

    @property
    def first_id(self) -> int | None:
        return self.pruned_to + 1 if self.count else None


class PublishCondition(NamedTuple):
    """What a conditional publish asks for besides storing its events."""

    #: ``Idempotency-Key``: a repeat within the window gets the first answer.
    key: str | None
    #: SHA-256 of the request body (hex), with a key: what makes a repeat the same.
    digest: str | None
    #: ``Expected-Last-Id``: store only if the channel's last id is this (0: empty).
    expected: int | None


class Appended(NamedTuple):
    """The events a conditional publish stored, or those it stored before."""

    events: list[Event]
    #: True when these are the events of an earlier publish with the same key.
    replayed: bool


#: Largest integer a JSON number written with a fraction or an exponent
#: (``5.0``, ``1e3``) can carry exactly, as a float.
MAX_EXACT_FLOAT_INT = 2**53


def json_integer(value: object) -> int | None:
    """``value`` as an integer if JSON Schema calls it one (``5`` and ``5.0``
    alike), else None.  A float is taken only while it is exact (up to
    2^53): beyond, it may not be the number the client wrote."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_FLOAT_INT:
        return int(value)
    return None


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a valid name of a context, channel or consumer.

    A name made only of dots is refused: ``.`` and ``..`` are path steps,
    which a client that normalises URLs would resolve away, so the
    resource could never be reached.
    """
    if not NAME_RE.match(value):
        raise InvalidInput(f"{kind} must match {NAME_PATTERN}, got {value[:140]!r}")
    if not value.strip("."):
        raise InvalidInput(f"{kind} cannot be made only of dots, got {value[:140]!r}")
    return value


def check_issuer(issuer: str, source: str) -> str:
    """A publisher's name; ``source`` says where it came from, for the message."""
    issuer = issuer.strip()
    if not issuer:
        raise InvalidInput(f"{source} is empty")
    if len(issuer) > MAX_ISSUER_LEN:
        raise InvalidInput(f"{source} is longer than {MAX_ISSUER_LEN} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in issuer):
        raise InvalidInput(f"{source} contains control characters")
    return issuer


# -- the event's JSON form (the HTTP answers, SSE messages and webhook bodies) ----
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
    return b"".join(
        (
            b'{"id":%d,"issuer":',
            orjson.dumps(event.issuer).replace(b"%", b"%%"),
            b',"context":"',
            context.encode(),
            b'","channel":"',
            channel.encode(),
            b'","timestamp":',
            repr(event.timestamp).encode(),
            b',"payload":%s}',
        )
    )


# -- durable consumers ---------------------------------------------------------------
ORDERED = "ordered"
SHARED = "shared"
MODES = (ORDERED, SHARED)

#: Where a new consumer or subscription begins: "earliest", "latest" or an event id.
Start = Literal["earliest", "latest"] | int


@dataclass(frozen=True)
class ConsumerConfig:
    mode: str
    lease_s: float
    max_deliveries: int
    #: Applies only when the consumer is created; a later PUT never moves it.
    start: Start


class Backlog(NamedTuple):
    """What a leasing decision needs, read under the consumer's lock."""

    mode: str
    next_new: int
    head: int  # the channel's last id
    in_flight: int  # unexpired leases
    first_pending: int | None  # lowest leased or available (not dead) id
    first_ready: int | None  # lowest id that may be leased now
    #: Seconds until the next lease expiry or end of a nack delay (None: none).
    next_change_s: float | None


class Leased(NamedTuple):
    event_id: int
    token: str
    deliveries: int
    #: Events retention deleted since the last lease (skipped), reported once.
    missed: int = 0


class LeaseOutcome(NamedTuple):
    backlog: Backlog
    leased: Leased | None
    #: Events the round made dead letters (their deliveries used up).
    dead_lettered: int = 0


class ConsumerStatus(NamedTuple):
    name: str
    mode: str
    lease_s: float
    max_deliveries: int
    cursor: int
    lag: int
    in_flight: int
    dead: int
    #: Events retention deleted before this consumer handled them.
    expired: int = 0


class DeadEvent(NamedTuple):
    event: Event
    deliveries: int


class Delivery(NamedTuple):
    """An event leased to a consumer instance."""

    event: Event
    lease: str
    deliveries: int
    #: Events skipped since the previous lease because retention deleted them.
    missed: int = 0


# -- webhook subscriptions --------------------------------------------------------------
#: The ``channel`` of a subscription to every channel of its context.
ALL_CHANNELS = "*"


@dataclass(frozen=True)
class Claimed:
    """A subscription this process delivers, with what delivery needs."""

    id: int
    context: str
    channel: str
    url: str
    secret: str


@dataclass(frozen=True)
class ChannelState:
    """One channel of a subscription: its cursor and its latest attempt."""

    channel: str
    delivered_id: int
    head: int
    failures: int
    failing_since: float | None
    last_attempt: float | None
    last_status: int | None
    last_error: str | None
    #: Events retention deleted before they were delivered (skipped).
    expired: int = 0


@dataclass(frozen=True)
class SubscriptionState:
    id: int
    context: str
    channel: str
    url: str
    created: float
    disabled_at: float | None
    disabled_reason: str | None
    #: The process delivering it now (None: nobody holds a live lease).
    owner: str | None
    channels: list[ChannelState] = field(default_factory=list)


# -- access tokens ---------------------------------------------------------------------
class TokenRecord(NamedTuple):
    """A stored access token: never the secret, only its digest."""

    name: str
    #: SHA-256 of the token, hex.
    digest: str
    #: ``ACTION:CONTEXT/CHANNEL`` texts (:mod:`eventbus.auth` parses them).
    scopes: tuple[str, ...]
    #: Issuers it may publish under; None: any.
    issuers: tuple[str, ...] | None
    created: float
    expires: float | None
    #: Coarse: written at most once a minute per token per process.
    last_used: float | None
