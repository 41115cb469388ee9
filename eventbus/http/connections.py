"""Which client connections the server keeps when file descriptors run short.

Invariant: the process never holds more client connections than its
open-files limit less a reserve (:func:`connection_limit`), so accepting a
client never takes the descriptors the database pool, the webhook
deliveries and the log need; and a connection that is serving a request
(a held peek, an SSE stream, a consumer's ``next``) is never closed to
make room.

At the limit, a new connection closes the one that has been *waiting*
longest: idle between requests, or still sending its request (every
request has ``--request-timeout`` to arrive; a client trickling its
headers is such a connection, and the oldest of them is the first to go).
So slow or idle clients cannot shut others out: ``/health`` and every
quick request still get in.  Only when every connection is serving a
request does a new one get a 503 and is closed.

Twisted's own last resort stays underneath: if ``accept`` still hits the
limit (descriptors taken elsewhere), the listening port closes a spare
descriptor, accepts and closes the pending connections, and reopens it
(``twisted.internet.tcp._accept``), so the port never spins.

Layer rule: the HTTP layer; twisted.web plumbing only, no routes.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from typing import Protocol

#: Descriptors kept for everything but client connections, at most a
#: quarter of the limit: the database pool and its LISTEN connection,
#: webhook deliveries, log files, the listening sockets, DNS lookups.
FD_RESERVE = 128


def connection_limit(soft_limit: int | None = None) -> int | None:
    """How many client connections to hold at most (None: no limit)."""
    if soft_limit is None:
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return None
    return max(1, soft_limit - min(FD_RESERVE, soft_limit // 4))


class Connection(Protocol):
    def evict(self) -> None:
        """Close at once: its descriptor is needed for a newer client."""


class ConnectionBudget:
    """The open client connections of one site, and which may be closed first."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: set[Connection] = set()
        #: Connections not serving a request, the longest waiting first.
        self._waiting: OrderedDict[Connection, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, connection: Connection) -> bool:
        """A new connection: whether to serve it (else answer 503 and close)."""
        if self.limit is not None and len(self._open) >= self.limit:
            if not self._waiting:
                self.refused += 1
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self._open.discard(oldest)
            self.evicted += 1
            oldest.evict()
        self._open.add(connection)
        self._waiting[connection] = None
        return True

    def serving(self, connection: Connection) -> None:
        """Its request has arrived whole: never closed to make room now."""
        self._waiting.pop(connection, None)

    def waiting(self, connection: Connection) -> None:
        """Its request is answered; it waits for the next one."""
        if connection in self._open:
            self._waiting[connection] = None
            self._waiting.move_to_end(connection)

    def closed(self, connection: Connection) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)
