"""What a subscriber of the notifier sees: the wake-up types and its interface.

:mod:`eventbus.notifier` keeps the subscriptions and wakes them; these are
the types its subscribers (a long poll, an SSE broadcast group, a durable
consumer's ``next``, a webhook delivery) implement or receive, and what the
notifier reads through (:class:`EventReader`).  A subscriber is told of new
events, of changes, of lost notifications, and of the events retention
deleted under its cursor (:meth:`Subscriber.pruned`): it is never left
waiting for an event that will not come.

Layer rule: a domain module; types only (no SQL, no HTTP, no I/O).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from eventbus.model import Event, Pruned
from eventbus.storage.pages import Page


class EventReader(Protocol):
    """What the notifier reads (the event store, or a fake in tests)."""

    async def first_after(self, context: str, channel: str, cursor: int) -> Event | Pruned | None: ...

    async def events_by_id(
        self, context: str, channel: str, ids: set[int], ahead: Iterable[int]
    ) -> dict[int, Event]: ...

    async def page(self, context: str, channel: str, after: int, upto: int, limit: int) -> Page: ...


class WakeKind(enum.Enum):
    #: Events up to ``Wake.head`` exist in the channel.
    PUBLISHED = "published"
    #: No new event, but the channel's consumer state changed (a nack, a
    #: retry, an ordered ack or a PUT made an event leasable).
    CHANGED = "changed"
    #: Notifications may have been lost (the LISTEN connection was down):
    #: anything may have changed; read again.
    RESYNC = "resync"


@dataclass(frozen=True)
class Wake:
    kind: WakeKind
    #: The channel concerned; None for a RESYNC of a whole context.
    channel: str | None
    #: With PUBLISHED: the newest id announced.  0 otherwise.
    head: int = 0


class Subscriber:
    """What a subscription tells; subclasses override what they need."""

    #: None: wake-ups only.  An id: the events after it are wanted (the
    #: notifier moves it along for a follower).
    cursor: int | None = None
    #: With a cursor: every event from now on (True) or only the next (False).
    follows: bool = False

    def woken(self, wake: Wake) -> None:
        """A wake-up (subscribers without a cursor).  Must not raise."""

    def deliver(self, events: list[Event]) -> None:
        """The events right after ``cursor`` (subscribers with one; a waiter's
        one event may lie past a gap retention made).  Must not raise."""

    def pruned(self, first_id: int) -> None:
        """Retention deleted the events after ``cursor``; ``first_id`` is
        the first stored (a follower's next page starts there) or to come.
        Must not raise."""
