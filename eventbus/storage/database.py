"""The connection pool, reconnects and time limits: one way to run SQL.

Invariant: every database call either answers within its time limit or
fails with :class:`eventbus.errors.Unavailable`; an outage, a dead
connection or a slow server look the same to every caller above (a 503, a
retry), never a hang and never a driver exception.

Connections heal themselves (:mod:`.connection`): each one carries
txpostgres' dead-connection detector, which reconnects with the backoff of
:data:`eventbus.retry.RECONNECT`, and the pool hands out live connections
before dead ones.  An outage is logged once per process, when the first
connection is lost (:class:`~.connection.Outages`); the 503s it causes
meanwhile are not logged one by one.

Named transactions: :meth:`Database.query` and :meth:`Database.transaction`
are the only ways in; the storage modules (:mod:`.events`, :mod:`.consumers`,
:mod:`.webhooks`) build on them.  Rows become typed objects by column name:
:func:`select_list` writes a SELECT list in the field order of the type it
fills, so ``Type(*row)`` can never pair a value with the wrong field.

Layer rule: storage speaks SQL and nothing else; it imports only
:mod:`eventbus.model`, :mod:`eventbus.errors` and :mod:`eventbus.retry`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeAlias, TypeVar

import psycopg2
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres

from eventbus.errors import Unavailable
from eventbus.storage.connection import Outages, close_for_good, connect_kwargs, make_connection

log = Logger()

#: How long a request may wait for the database before it gets a 503.
QUERY_TIMEOUT_S = 5.0
#: How long a query's outage error waits for the lost connection to be
#: reported before it is logged on its own.
UNAVAILABLE_GRACE_S = 1.0

T = TypeVar("T")
Row = tuple[Any, ...]
#: txpostgres has no type information: its cursor, as the storage modules use it.
Cursor: TypeAlias = Any


def select_list(cls: Any, **columns: str) -> str:
    """A SELECT list giving one expression per field of ``cls`` (a NamedTuple
    or a dataclass), in the field order, so ``cls(*row)`` fills it by name.

    Every field without a default must be given, and nothing else: a field
    added to the type fails at import, not at run time.
    """
    if dataclasses.is_dataclass(cls):
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        required = {
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
    else:
        names = list(cls._fields)
        required = set(names) - set(cls._field_defaults)
    unknown, missing = set(columns) - set(names), required - set(columns)
    if unknown or missing:
        raise TypeError(
            f"select_list({cls.__name__}): unknown fields {sorted(unknown)}, missing fields {sorted(missing)}"
        )
    given = [name for name in names if name in columns]
    if given != names[: len(given)]:
        raise TypeError(f"select_list({cls.__name__}): only trailing fields may be left out")
    return ", ".join(f"{columns[name]} AS {name}" for name in given)


def is_outage(e: BaseException) -> bool:
    """Is this error the database being away (rather than a bad statement)?"""
    return isinstance(
        e,
        (
            psycopg2.OperationalError,
            psycopg2.InterfaceError,
            reconnection.ConnectionDead,
            txpostgres.RollbackFailed,
            Unavailable,
        ),
    )


class _Pool(txpostgres.ConnectionPool):
    """txpostgres' pool, with self-healing connections that are skipped while dead."""

    def __init__(self, reactor: IReactorTime, dsn: str, size: int, outages: Outages) -> None:
        self.reactor = reactor
        self.outages = outages
        self.min = size
        #: every connection, idle or checked out (txpostgres keeps only the idle)
        self._all: list[txpostgres.Connection] = []
        super().__init__(None, **connect_kwargs(dsn))

    def connectionFactory(self, reactor: Any, cooperator: Any) -> txpostgres.Connection:
        conn = make_connection(reactor, self.outages)
        self._all.append(conn)
        return conn

    def shutdown(self) -> None:
        """Close every connection, idle or busy, for good: txpostgres' own
        ``close`` skips the busy ones, which then see the server go away
        and start reconnecting to a database that is shutting down."""
        for conn in self._all:
            close_for_good(conn)

    def busy_and_idle(self) -> tuple[int, int]:
        idle = len(self.connections)
        return len(self._all) - idle, idle

    def backend_pids(self) -> frozenset[int]:
        # Not cached: a dead connection's pid may be reused by another
        # process's backend, whose notifications must not be skipped.
        pids = set()
        for conn in self._all:
            raw = conn.pollable()
            if raw is not None and not raw.closed and not conn.detector.connectionIsDead:
                pids.add(raw.get_backend_pid())
        return frozenset(pids)

    def _take(self) -> txpostgres.Connection:
        for c in self.connections:
            if not c.detector.connectionIsDead:
                self.connections.remove(c)
                return c
        return self.connections.pop()

    def _runQuery(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        c = self._take()
        return c.runQuery(*args, **kwargs).addBoth(self._putBackAndPassthrough, c)

    def _runOperation(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        c = self._take()
        return c.runOperation(*args, **kwargs).addBoth(self._putBackAndPassthrough, c)

    def _runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        c = self._take()
        d = c.runInteraction(interaction, *args, **kwargs)
        return d.addBoth(self._putBackAndPassthrough, c)


class Database:
    """A pool of self-healing connections with a time limit on every call."""

    def __init__(
        self,
        reactor: IReactorTime,
        dsn: str,
        pool_size: int,
        timeout: float = QUERY_TIMEOUT_S,
    ) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.pool_size = pool_size
        self.timeout = timeout
        #: This process's lost connections (the LISTEN one reports here too).
        self.outages = Outages(reactor.seconds)
        self._pool: _Pool | None = None

    # -- life cycle ---------------------------------------------------------
    async def open(self) -> None:
        pool = _Pool(self.reactor, self.dsn, self.pool_size, self.outages)
        try:
            await pool.start()
        except BaseException:
            for c in pool.connections:
                with contextlib.suppress(Exception):
                    c.close()
            raise
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def connections(self) -> tuple[int, int]:
        """The pool's connections: (busy, idle)."""
        return self._pool.busy_and_idle() if self._pool is not None else (0, 0)

    def backend_pids(self) -> frozenset[int]:
        """Server process ids of the pool's live connections, so the notifier
        can skip the echoes of notifications it already acted on at commit."""
        return self._pool.backend_pids() if self._pool is not None else frozenset()

    # -- running SQL ----------------------------------------------------------
    async def ping(self) -> None:
        await self.query("SELECT 1", timeout=min(self.timeout, 3.0))

    async def query(self, sql: str, params: Any = None, timeout: float | None = None) -> list[Row]:
        """Run one statement (its own transaction) and fetch its rows."""
        return await self.call(self.pool().runQuery(sql, params), timeout)

    async def transaction(
        self, work: Callable[[Cursor], Coroutine[Any, Any, T]], timeout: float | None = None
    ) -> T:
        """Run ``async work(cursor)`` inside BEGIN/COMMIT (ROLLBACK on error)."""

        def run(cur: Cursor) -> defer.Deferred[T]:
            return defer.ensureDeferred(work(cur))

        result: T = await self.call(self.pool().runInteraction(run), timeout)
        return result

    def pool(self) -> _Pool:
        if self._pool is None:
            raise Unavailable("database is not connected")
        return self._pool

    async def call(self, d: defer.Deferred[Any], timeout: float | None = None) -> Any:
        """Await a database Deferred, mapping outages and slowness to Unavailable.

        On timeout the query is left to finish on its own (cancelling needs a
        blocking round trip in psycopg2); the caller just stops waiting.
        """
        try:
            return await within(self.reactor, d, timeout or self.timeout)
        except Unavailable:
            raise
        except Exception as e:
            if not is_outage(e):
                raise
            raise self.unavailable(e) from None

    def unavailable(self, error: BaseException) -> Unavailable:
        """The error to raise for an outage ``error``; logged unless it is
        part of an outage that is logged as one (a lost connection).

        A query's failure can reach us a moment before txpostgres' detector
        reports its connection lost, so the warning waits
        ``UNAVAILABLE_GRACE_S`` and is dropped if an outage began meanwhile.
        """
        if not self.outages.down:
            seen = self.outages.count

            def warn() -> None:
                if self.outages.count == seen and not self.outages.down:
                    log.warn("database unavailable: {error!r}", error=error)

            self.reactor.callLater(UNAVAILABLE_GRACE_S, warn)
        return Unavailable("database unavailable")


def within(reactor: IReactorTime, d: defer.Deferred[T], seconds: float) -> defer.Deferred[T]:
    """A Deferred firing like ``d``, or failing with Unavailable after ``seconds``.

    ``d`` itself is not cancelled.
    """
    result: defer.Deferred[T] = defer.Deferred()

    def expire() -> None:
        if not result.called:
            result.errback(Unavailable(f"database did not answer within {seconds:g} s"))

    call = reactor.callLater(seconds, expire)

    def done(value: Any) -> None:
        if call.active():
            call.cancel()
        if result.called:
            return  # already answered 503; drop the late result or error
        if isinstance(value, Failure):
            result.errback(value)
        else:
            result.callback(value)
        return

    d.addBoth(done)
    return result


class Failable(Protocol):
    """A queued request of a group commit: told its failure."""

    def fail(self, error: BaseException) -> None: ...


F = TypeVar("F", bound=Failable)


async def settle_failed_group(
    database: Database,
    error: BaseException,
    group: list[F],
    queue: deque[F],
    retry_one: Callable[[list[F]], Awaitable[None]],
) -> None:
    """A group commit's statement failed with ``error``: settle its requests.

    One bad request must not fail its neighbours, so a group that did not
    fail for an outage is written again one request at a time. An outage
    fails the group and whatever queued behind it (it would only wait for
    the same outage: answered now rather than one timeout later).
    """
    if len(group) > 1 and not is_outage(error):
        for item in group:
            await retry_one([item])
        return
    if is_outage(error):
        if not isinstance(error, Unavailable):
            error = database.unavailable(error)
        group = group + list(queue)
        queue.clear()
    for item in group:
        item.fail(error)
