"""The client's value types: events as the server sends them, and leases.

Invariant: an :class:`Event` holds what the server sent, both parsed
(:attr:`Event.payload` is a ``dict``) and exactly as sent
(:attr:`Event.raw`, the event object's JSON text), so a program can act on
the payload and an export can write the bytes untouched.

Layer rule: the client library; the standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from eventbus.client.errors import EventBusError


@dataclass(frozen=True)
class Event:
    """One stored event."""

    id: int
    issuer: str
    context: str
    channel: str
    #: Unix seconds, fractional, assigned by the server.
    timestamp: float
    payload: dict[str, Any]
    #: Events just before this one that retention deleted before they were
    #: seen (``follow``/``stream`` with ``on_expired="skip"``, consumer leases).
    missed: int = 0
    #: The event object's JSON text exactly as the server sent it (for
    #: events read from ``/events``: history, peek, follow, stream, one
    #: event, publish answers; empty for a consumer's leases and dead letters).
    raw: str = field(default="", repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: str, value: object = None, missed: int = 0) -> Event:
        """An event from the server's JSON text (``value``: already parsed)."""
        if value is None:
            value = json.loads(raw)
        if not isinstance(value, dict):
            raise EventBusError(f"the server sent something that is not an event: {raw[:120]!r}")
        try:
            return cls(
                id=int(value["id"]),
                issuer=str(value["issuer"]),
                context=str(value["context"]),
                channel=str(value["channel"]),
                timestamp=float(value["timestamp"]),
                payload=value["payload"],
                missed=missed,
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EventBusError(f"the server sent an event without {e}: {raw[:120]!r}") from None

    def with_missed(self, missed: int) -> Event:
        return replace(self, missed=missed)

    def to_dict(self) -> dict[str, Any]:
        """The event object, as the API renders it."""
        return {
            "id": self.id,
            "issuer": self.issuer,
            "context": self.context,
            "channel": self.channel,
            "timestamp": self.timestamp,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Delivery:
    """What a consumer's ``next`` answered: an event leased to this instance."""

    event: Event
    #: The lease's token, for ``ack``/``nack``.
    lease: str
    #: 1 on the first delivery of this event to the consumer.
    deliveries: int

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Delivery:
        missed = int(value.get("missed") or 0)
        return cls(Event.from_json("", value["event"], missed), str(value["lease"]), int(value["deliveries"]))


@dataclass(frozen=True)
class DeadEvent:
    """A dead-lettered event of a consumer, and how often it was delivered."""

    event: Event
    deliveries: int


def dead_event(value: dict[str, Any]) -> DeadEvent:
    return DeadEvent(Event.from_json("", value["event"]), int(value["deliveries"]))
