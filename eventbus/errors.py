"""Domain errors: what went wrong, in the event bus' own words.

Any layer raises these (storage, the domain modules, the HTTP handlers); the
HTTP layer alone decides what a client sees, mapping each class to a status
and a JSON body in one place (:mod:`eventbus.http.router`).

Layer rule: the bottom tier; no HTTP here (no statuses, no header names),
and it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping


class EventBusError(Exception):
    """An error a client should be told about, with a message for a person,
    and optionally facts a program can act on (``details``: JSON values the
    answer carries beside ``error``, e.g. ``{"last_id": 41}``)."""

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: Mapping[str, object] = details or {}


class InvalidInput(EventBusError):
    """The request names or carries something the bus cannot accept."""


class NotFound(EventBusError):
    """The thing asked for does not exist (an event, a consumer, a subscription)."""


class Conflict(EventBusError):
    """The request contradicts the current state (an unknown or expired lease,
    an ``Expected-Last-Id`` that is not the channel's last id)."""


class Unprocessable(EventBusError):
    """The request is well-formed but cannot be what it claims to be (an
    idempotency key reused for a different request)."""


class TooLarge(EventBusError):
    """The request is over a configured size limit (a batch, a body)."""


class Unavailable(EventBusError):
    """The database cannot be reached, or did not answer in time."""


class Unauthorized(EventBusError):
    """No valid token: none was presented where one is needed, or the one
    presented is unknown, expired or revoked."""

    def __init__(self, message: str, *, token_sent: bool) -> None:
        super().__init__(message)
        #: Whether the request carried a token (the answer then says it was invalid).
        self.token_sent = token_sent


class Forbidden(EventBusError):
    """A valid token that does not allow this request."""

    def __init__(self, message: str, *, scope: str | None = None) -> None:
        super().__init__(message)
        #: The scope that would have allowed it (e.g. ``publish:mkp/INVOICE``).
        self.scope = scope


class TooManyRequests(EventBusError):
    """A client holds as many open requests as it may; it should retry later."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        #: Seconds after which a retry may succeed.
        self.retry_after = retry_after


class Gone(EventBusError):
    """What was asked for was deleted by retention: the events after a
    cursor, up to ``first_id`` - 1 (``missed`` of them)."""

    def __init__(self, message: str, *, first_id: int, missed: int) -> None:
        super().__init__(message, details={"first_id": first_id, "missed": missed})
        #: The first event still stored (or, if none is, the next to come).
        self.first_id = first_id
        self.missed = missed
