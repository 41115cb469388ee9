"""What the client raises: one small hierarchy, mapped from the server's statuses.

Invariant: every failure of a call surfaces as an :class:`EventBusError`
subclass carrying the server's own message (its JSON ``{"error": ...}``)
and status; an HTTP library's exception never leaks to the caller.  A
connection that could not be made or broke before an answer is
:class:`Unreachable`, a kind of :class:`Unavailable`: both are the
*retryable* ones (:attr:`EventBusError.retryable`).

Layer rule: the client library; the standard library only (it never imports
the server's modules).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class EventBusError(Exception):
    """A call the event bus refused, or could not answer."""

    #: Whether the same call may succeed if sent again later.
    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, body: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The HTTP status (None: no answer came).
        self.status = status
        #: The server's JSON error object, with any extra fields it carries.
        self.body: Mapping[str, Any] = body or {}

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.status} {self.message}"


class BadRequest(EventBusError):
    """400: the server refused what was sent; the message says why."""


class Unprocessable(BadRequest):
    """422: an ``Idempotency-Key`` reused with a different body."""


class Unauthorized(EventBusError):
    """401: no token where one is needed, or an unknown, expired or revoked one."""


class Forbidden(EventBusError):
    """403: a valid token without the scope (or issuer) the call needs."""


class NotFound(EventBusError):
    """404: no such event, consumer, subscription, token or channel."""


class Conflict(EventBusError):
    """409: a stale lease, a name in use, a failed ``Expected-Last-Id`` (then
    :attr:`last_id` is the channel's last id), a restore into a channel that
    is not where the restore expected it."""

    @property
    def last_id(self) -> int | None:
        value = self.body.get("last_id")
        return value if isinstance(value, int) else None


class Expired(EventBusError):
    """410: events after the cursor were deleted by retention.

    :attr:`first_id` is the first event still stored (or the next to come),
    :attr:`missed` how many were deleted between the cursor and it."""

    def __init__(self, message: str, *, first_id: int, missed: int, status: int | None = 410) -> None:
        super().__init__(
            message, status=status, body={"error": message, "first_id": first_id, "missed": missed}
        )
        self.first_id = first_id
        self.missed = missed


class TooLarge(EventBusError):
    """413: a body over ``--max-body``, or a batch over ``--max-batch``."""


class TooManyRequests(EventBusError):
    """429: the client holds too many requests open already."""

    retryable = True


class Unavailable(EventBusError):
    """503: the server's database does not answer (retryable)."""

    retryable = True


class Unreachable(Unavailable):
    """No answer at all: the connection failed, broke or timed out."""


class ServerError(EventBusError):
    """Any other status (a 500 is a bug of the server)."""


#: The error class of each status; others are :class:`ServerError`.
BY_STATUS: dict[int, type[EventBusError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Unprocessable,
    429: TooManyRequests,
    503: Unavailable,
}


def error_for(status: int, body: bytes) -> EventBusError:
    """The exception for an answer that is not a success."""
    fields: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        fields = parsed
    message = fields.get("error")
    if not isinstance(message, str):
        text = body[:200].decode("utf-8", "replace").strip()
        message = text or f"HTTP {status}"
    if status == 410:
        return Expired(
            message,
            first_id=int(fields.get("first_id") or 0),
            missed=int(fields.get("missed") or 0),
        )
    return BY_STATUS.get(status, ServerError)(message, status=status, body=fields)
