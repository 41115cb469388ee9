"""``eventbus.client``: the event bus from Python programs.

Two flavours with the same methods and names:

* :class:`Client` (:mod:`.sync`, on httpx): blocking, for scripts and workers;
* :class:`TxClient` (:mod:`.tx`, on treq): for Twisted programs; its
  methods return Deferreds (``await`` them under ``ensureDeferred``), its
  iterators are async (``async for``).

Both take ``url``, ``token`` and ``issuer`` (defaults: ``EVENTBUS_URL``,
``EVENTBUS_TOKEN``, ``EVENTBUS_ISSUER``, else ``http://127.0.0.1:33002``),
return :class:`Event` objects and raise the errors of :mod:`.errors`.

Invariant: nothing here imports the server's modules (``eventbus.http``,
``eventbus.storage``, ...): a program using the client loads only the
standard library, httpx (or treq) and this package.

Layer rule: the client library; imports only its own modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.client.errors import (
    BadRequest,
    Conflict,
    EventBusError,
    Expired,
    Forbidden,
    NotFound,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    Unreachable,
)
from eventbus.client.model import DeadEvent, Delivery, Event
from eventbus.client.sync import Client
from eventbus.client.sync_parts import Consumer, Lease

if TYPE_CHECKING:
    from eventbus.client.tx import TxClient

__all__ = [
    "BadRequest",
    "Client",
    "Conflict",
    "Consumer",
    "DeadEvent",
    "Delivery",
    "Event",
    "EventBusError",
    "Expired",
    "Forbidden",
    "Lease",
    "NotFound",
    "ServerError",
    "TooLarge",
    "TooManyRequests",
    "TxClient",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "Unreachable",
]


def __getattr__(name: str) -> Any:
    # Twisted and treq are loaded only by programs that use TxClient.
    if name == "TxClient":
        from eventbus.client.tx import TxClient

        return TxClient
    raise AttributeError(name)
