"""Losing the database is an expected event: one warning per outage, never a traceback.

The connection class is driven over fakes of psycopg2's connection and
cursor and of the reactor; the reactor's side of the bargain (a failure
returned by ``doRead`` disconnects without a log) is checked on the real
epoll reactor's code in ``test_private_apis.py``.
"""
from __future__ import annotations

from typing import Any

import psycopg2
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from txpostgres import txpostgres

from eventbus.storage.connection import Outages, _Connection, close_for_good, make_connection


class Logged:
    """Every log event emitted while in use."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> "Logged":
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: Any) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def at(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") == level]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """What ``log.err`` or an unhandled error would log: a failure with its traceback."""
        return [e for e in self.events if "log_failure" in e or e.get("isError")]


class ServerGone:
    """psycopg2's connection once the server went away: ``poll`` raises."""

    closed = 0
    notifies: list[Any] = []

    def poll(self) -> int:
        self.closed = 2
        raise psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably means...")

    def fileno(self) -> int:
        return 99


def test_an_idle_connection_that_loses_its_server_returns_the_error_instead_of_raising_it():
    reactor = MemoryReactorClock()
    conn = _Connection(reactor)
    conn._connection = ServerGone()  # type: ignore[assignment]
    with Logged() as logged:
        why = conn.doRead()
    assert isinstance(why, Failure) and why.check(psycopg2.OperationalError)
    assert not logged.failures


def test_the_first_lost_connection_warns_once_and_the_last_recovered_says_so():
    clock = Clock()
    outages = Outages(clock.seconds)
    a, b = object(), object()
    reason = Failure(psycopg2.OperationalError("server closed the connection unexpectedly\n\tmore"))
    with Logged() as logged:
        outages.lost(a, reason)
        outages.lost(b, reason)
        clock.advance(12)
        outages.recovered(a)
        assert outages.down and not logged.at(LogLevel.info)
        outages.recovered(b)
    warnings = logged.at(LogLevel.warn)
    assert len(warnings) == 1 and warnings[0]["reason"] == "server closed the connection unexpectedly"
    [info] = logged.at(LogLevel.info)
    assert info["seconds"] == 12 and not outages.down
    assert outages.count == 1
    with Logged() as logged:  # the next outage is told again
        outages.lost(a, reason)
    assert len(logged.at(LogLevel.warn)) == 1 and outages.count == 2


def test_a_connection_closed_for_good_during_an_outage_leaves_it_without_a_recovery_line():
    clock = Clock()
    outages = Outages(clock.seconds)
    conn = make_connection(clock, outages)
    with Logged() as logged:
        conn.detector.checkForDeadConnection(Failure(psycopg2.OperationalError("gone")))
        assert outages.down
        close_for_good(conn)
        assert not outages.down
    assert len(logged.at(LogLevel.warn)) == 1 and not logged.at(LogLevel.info)
    for call in clock.getDelayedCalls():  # the reconnection attempt it had scheduled
        call.cancel()


class Cursor:
    """A txpostgres cursor whose connection died under the transaction."""

    def __init__(self, rollback: BaseException | None) -> None:
        self.rollback = rollback
        self.executed: list[str] = []

    def execute(self, sql: str) -> defer.Deferred[None]:
        self.executed.append(sql)
        if sql == "rollback" and self.rollback is not None:
            raise self.rollback
        return defer.succeed(None)


def _transaction(cursor: Cursor) -> Failure:
    conn = _Connection(MemoryReactorClock())
    conn.cursor = lambda: cursor  # type: ignore[method-assign]

    def work(_: Any) -> None:
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    failures: list[Failure] = []
    conn._runInteraction(work).addErrback(failures.append)
    return failures[0]


def test_a_transaction_whose_rollback_cannot_be_sent_fails_without_a_traceback_in_the_log():
    with Logged() as logged:
        failure = _transaction(Cursor(rollback=psycopg2.InterfaceError("cursor already closed")))
    assert failure.check(txpostgres.RollbackFailed)
    assert not logged.failures and not logged.at(LogLevel.warn)


def test_a_rollback_that_fails_on_a_live_connection_is_a_warning():
    with Logged() as logged:
        failure = _transaction(Cursor(rollback=psycopg2.ProgrammingError("odd")))
    assert failure.check(txpostgres.RollbackFailed)
    assert not logged.failures and len(logged.at(LogLevel.warn)) == 1


def test_a_failed_transaction_is_rolled_back_and_fails_with_its_own_error():
    cursor = Cursor(rollback=None)
    with Logged() as logged:
        failure = _transaction(cursor)
    assert failure.check(psycopg2.OperationalError)
    assert cursor.executed == ["begin", "rollback"] and not logged.events


def _database() -> tuple[Clock, Any]:
    from eventbus.storage.database import Database

    clock = Clock()
    return clock, Database(clock, "dbname=unused", pool_size=1)


def test_a_query_failing_just_before_its_connection_is_reported_lost_logs_only_the_outage():
    clock, database = _database()
    with Logged() as logged:
        database.unavailable(psycopg2.OperationalError("server closed the connection"))
        clock.advance(0.1)
        database.outages.lost(object(), Failure(psycopg2.OperationalError("gone")))
        clock.advance(5)
    [warning] = logged.at(LogLevel.warn)
    assert "connection lost" in warning["log_format"]


def test_a_query_failing_with_every_connection_up_is_a_warning_of_its_own():
    clock, database = _database()
    with Logged() as logged:
        database.unavailable(psycopg2.OperationalError("could not serialize"))
        assert not logged.at(LogLevel.warn)  # not before the lost connection had its chance
        clock.advance(5)
    [warning] = logged.at(LogLevel.warn)
    assert "database unavailable" in warning["log_format"]


def test_a_query_failing_during_a_reported_outage_adds_no_line():
    clock, database = _database()
    database.outages.lost(object(), Failure(psycopg2.OperationalError("gone")))
    with Logged() as logged:
        database.unavailable(psycopg2.OperationalError("server closed the connection"))
        clock.advance(5)
    assert not logged.at(LogLevel.warn)
