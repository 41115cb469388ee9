"""One self-healing database connection, and how its loss is told: once per outage.

Invariant: losing the database is an expected event, not an error.  Each
connection carries txpostgres' dead-connection detector, which reconnects
with the backoff of :data:`eventbus.retry.RECONNECT`; every connection of a
process (the pool's and the LISTEN one) reports to one :class:`Outages`,
which logs one warning when the first of them is lost and one line when
the last is back, and never a traceback.

Where the tracebacks came from, and how they are avoided at the source:

* an idle connection watches its socket (for NOTIFY).  When the server
  goes away, psycopg2 raises from ``poll()`` with no query waiting to be
  told, and txpostgres let that exception out of ``doRead`` into the
  reactor, which logged it as "Unhandled Error" with its traceback (one
  per connection: nine per outage with the default pool) before calling
  ``connectionLost`` with it.  :class:`_Connection` returns it as a
  failure instead, as ``IReadDescriptor.doRead`` documents for an error
  that ends the descriptor: the same ``connectionLost``, the same
  reconnection, no log;
* a transaction under way when the connection dies fails, and its
  ``ROLLBACK`` cannot be sent: txpostgres logged that with ``log.err``
  before failing with ``RollbackFailed``.  :class:`_Connection` fails the
  same way without the log (a ROLLBACK that fails on a live connection is
  still a warning).

Layer rule: storage; imports only :mod:`eventbus.retry` of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from eventbus.retry import RECONNECT, delays

log = Logger()

CONNECT_TIMEOUT_S = 5
#: What ``pg_stat_activity`` shows for our connections.
APPLICATION_NAME = "eventbus"


def is_dead(f: Failure) -> bool:
    """Does this failure mean the connection itself is gone?

    txpostgres' default treats every ``OperationalError`` as a dead
    connection; deadlocks and cancellations are not.
    """
    if f.check(psycopg2.errors.TransactionRollbackError, psycopg2.errors.QueryCanceled):
        return False
    return bool(f.check(psycopg2.InterfaceError, psycopg2.OperationalError))


class Outages:
    """The connections of a process that are down; one warning per outage."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._down: set[object] = set()
        self._since: float | None = None
        #: Outages seen (a connection lost while all were up).
        self.count = 0

    @property
    def down(self) -> bool:
        """Is a connection of this process known to be lost?"""
        return bool(self._down)

    def lost(self, connection: object, reason: Failure) -> None:
        first = not self._down
        self._down.add(connection)
        if first:
            self.count += 1
            self._since = self.clock()
            log.warn(
                "database connection lost ({reason}); reconnecting, meanwhile requests get a 503",
                reason=_first_line(reason),
            )

    def recovered(self, connection: object) -> None:
        self._forget(connection, tell=True)

    def retired(self, connection: object) -> None:
        """Closed for good: not part of an outage any more."""
        self._forget(connection, tell=False)

    def _forget(self, connection: object, tell: bool) -> None:
        if connection not in self._down:
            return
        self._down.discard(connection)
        if not self._down and self._since is not None:
            if tell:
                log.info(
                    "database connections re-established after {seconds:.1f} s",
                    seconds=self.clock() - self._since,
                )
            self._since = None


def _first_line(reason: Failure) -> str:
    text = str(reason.value).strip() or type(reason.value).__name__
    return text.splitlines()[0].strip()


class _Detector(reconnection.DeadConnectionDetector):
    """txpostgres' detector, reporting to the process's :class:`Outages`."""

    def __init__(self, outages: Outages, reactor: IReactorTime) -> None:
        super().__init__(
            deathChecker=is_dead,
            # The first attempt at once, then the policy's delays.
            reconnectionIterator=lambda: chain([0.0], delays(RECONNECT)),
            reactor=reactor,
        )
        self.outages = outages

    def startReconnecting(self, f: Failure) -> None:  # noqa: N802 (txpostgres' hook)
        self.outages.lost(self, f)
        super().startReconnecting(f)

    def connectionRecovered(self) -> Any:  # noqa: N802 (txpostgres' hook)
        self.outages.recovered(self)
        return super().connectionRecovered()


class _Connection(txpostgres.Connection):
    """txpostgres' connection, whose loss is never logged as an error (see the module)."""

    def doRead(self) -> Failure | None:  # noqa: N802 (IReadDescriptor)
        try:
            super().doRead()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            return Failure()  # the reactor disconnects us with it: connectionLost, the detector
        return None

    def _runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        # txpostgres' own (BEGIN, the work, COMMIT; ROLLBACK on any failure,
        # RollbackFailed if that fails too), without its log.err.
        cursor = self.cursor()
        d = cursor.execute("begin")
        d.addCallback(interaction, *args, **kwargs)

        def commit(result: Any) -> Any:
            return cursor.execute("commit").addCallback(lambda _: result)

        def rollback(failure: Failure) -> Any:
            def failed(rollback_failure: Failure) -> Failure:
                if not is_dead(rollback_failure):
                    log.warn("ROLLBACK failed: {error}", error=rollback_failure.getErrorMessage())
                return Failure(txpostgres.RollbackFailed(self, failure))

            return defer.maybeDeferred(cursor.execute, "rollback").addCallbacks(lambda _: failure, failed)

        d.addCallback(commit)
        d.addErrback(rollback)
        return d


def make_connection(reactor: IReactorTime, outages: Outages) -> txpostgres.Connection:
    """A txpostgres connection that reconnects by itself with backoff."""
    return _Connection(reactor, detector=_Detector(outages, reactor))


def close_for_good(conn: txpostgres.Connection) -> None:
    """Close a self-reconnecting connection so it stays closed."""
    detector = conn.detector
    detector.deathChecker = lambda f: False
    detector.reconnect = lambda: defer.succeed(None)  # a retry under way ends
    for handler in detector.getRecoveryHandlers():
        detector.removeRecoveryHandler(handler)
    if isinstance(detector, _Detector):
        detector.outages.retired(detector)
    try:
        if conn.pollable() is not None:
            conn.close()
    except Exception:
        pass


def connect_kwargs(dsn: str) -> dict[str, Any]:
    return {
        "dsn": dsn,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "application_name": APPLICATION_NAME,
    }
