"""Shared fixtures: one embedded PostgreSQL per session, real server processes.

Every ``async def`` test must be wrapped by ``pytest_twisted.ensureDeferred``
(see the collection hook below), so none can silently pass without running.
"""
from __future__ import annotations

import inspect
import itertools
import os
import signal
from pathlib import Path
from typing import Iterator

import pytest

from eventbus.embedded import EmbeddedPostgres
from tests.servers import ServerProcess

_names = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        marked = getattr(fn, "_pytest_twisted_mark", None) == "async_test"
        if fn is not None and inspect.iscoroutinefunction(fn) and not marked:
            raise pytest.UsageError(
                f"{item.nodeid} is a bare coroutine: decorate it with "
                "@pytest_twisted.ensureDeferred so it really runs"
            )


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One embedded PostgreSQL for the whole suite (never a system one)."""
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("session-pg"))
    pg.start()
    yield pg
    pg.stop(force=True)


@pytest.fixture(scope="module")
def private_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of a module's own, for tests that stop or freeze it."""
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("private-pg"))
    pg.start()
    yield pg
    pg.stop(force=True)


@pytest.fixture
def db_up(private_pg: EmbeddedPostgres, servers: list) -> Iterator[EmbeddedPostgres]:
    """For modules that stop or freeze their database and define ``servers``:
    every test starts and ends with it running and the servers thawed."""
    yield private_pg
    for proc in servers:
        if proc.proc is not None:
            os.kill(proc.proc.pid, signal.SIGCONT)
    if not private_pg.is_running():
        private_pg.restart_after_outage()


@pytest.fixture(scope="session")
def dsn(postgres: EmbeddedPostgres) -> str:
    return postgres.dsn()


@pytest.fixture(scope="module")
def server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real event bus process on loopback, shared by a module's tests."""
    proc = ServerProcess(["--dsn", dsn], tmp_path_factory.mktemp("server"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def channel_name(request: pytest.FixtureRequest) -> str:
    """A channel name no other test uses (tests share one database)."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
    return f"{base}-{next(_names)}"


def pytest_report_header() -> str:
    return f"eventbus tests; repository at {Path(__file__).parent.parent}"
