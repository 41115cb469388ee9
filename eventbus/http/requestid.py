"""``X-Request-Id``: one id per request, on its answer and on every log line about it.

Invariant: every response carries ``X-Request-Id``: the client's own if it
sent exactly one valid value (1 to 128 of ``A-Z a-z 0-9 . _ : - + / = @``,
enough for UUIDs, W3C trace ids and base64), else 32 random hex digits.
The id is fixed the first time it is asked for (:func:`of`) and then never
changes; the site asks as soon as the request's headers are in.

Layer rule: the HTTP layer; pure functions of the request, no I/O.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

HEADER = b"X-Request-Id"
VALID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,128}\Z")
_ATTRIBUTE = "_eventbus_request_id"
_ROUTE = "_eventbus_route_pattern"  # not router._ROUTE (the metrics label, in Klein form)


def new() -> str:
    return secrets.token_hex(16)


def of(request: Any) -> str:
    """The request's id (the client's valid one, else a new one), set on
    its answer the first time it is asked for."""
    found: str | None = getattr(request, _ATTRIBUTE, None)
    if found is not None:
        return found
    sent = request.requestHeaders.getRawHeaders(HEADER) or []
    chosen = sent[0].decode("ascii") if len(sent) == 1 and VALID.match(sent[0]) else new()
    setattr(request, _ATTRIBUTE, chosen)
    request.setHeader(HEADER, chosen.encode("ascii"))
    return chosen


def set_route(request: Any, route: str) -> None:
    """The route pattern that serves the request (``/events/{context}/{channel}``)."""
    setattr(request, _ROUTE, route)


def route_of(request: Any) -> str | None:
    """The route pattern that served the request; None if none did (a 404, a refusal before routing)."""
    route: str | None = getattr(request, _ROUTE, None)
    return route
