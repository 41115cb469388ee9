"""Where the servers of the core integration modules keep their data.

The core modules (ordering, consumers, webhooks) run once per deployment
they list in ``DEPLOYMENTS`` (see ``tests/integration/conftest.py``):

* ``embedded``: the session's embedded PostgreSQL (the wheel's, 18);
* ``pgbouncer``: the same PostgreSQL behind a real PgBouncer in transaction
  mode on a loopback port: ``--dsn`` goes through PgBouncer, ``--listen-dsn``
  straight to PostgreSQL;
* ``pg15``: a private cluster of Debian's ``postgresql-15``, the oldest
  version we support;
* ``workers``: the embedded PostgreSQL, each server with ``--workers 2``.

PgBouncer and PostgreSQL 15 come from Debian's packages (``.ci/run``
installs them).  Missing, their tests fail in CI (``CI=true``) and are
skipped elsewhere, with the command that installs them.
"""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from eventbus.storage.embedded import DATABASE, SOCKET_PORT, SYSTEM_USER, EmbeddedPostgres
from tests.servers import free_port

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
INSTALL = "apt-get install -y pgbouncer postgresql-15"
READY_TIMEOUT_S = 30.0


def require(path: Path, what: str) -> None:
    """Fail in CI, skip elsewhere, when a Debian package's program is missing."""
    if path.exists():
        return
    message = f"{what} is not installed ({path} missing): {INSTALL}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class PgBouncer:
    """A PgBouncer in transaction mode on a loopback port, in front of ``upstream``."""

    def __init__(self, workdir: Path, upstream: EmbeddedPostgres) -> None:
        self.workdir = Path(workdir)
        self.upstream = upstream
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "pgbouncer.log"

    def start(self) -> "PgBouncer":
        require(PGBOUNCER, "PgBouncer")
        self.workdir.mkdir(parents=True, exist_ok=True)
        ini = self.workdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            # Any database name, as the same user: the tests create databases.
            f"* = host={self.upstream.socket_dir} port={SOCKET_PORT} user=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            "default_pool_size = 40\n"
            f"logfile = {self.log_path}\n"
            f"pidfile = {self.workdir / 'pgbouncer.pid'}\n"
        )
        command = [str(PGBOUNCER), str(ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
            command[1:1] = ["-u", SYSTEM_USER]
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "pgbouncer.stderr", "ab"))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pgbouncer not listening after {READY_TIMEOUT_S} s: {self.log_tail()}")

    def dsn(self, database: str = DATABASE) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def postgres15(workdir: Path) -> EmbeddedPostgres:
    """A private cluster of Debian's PostgreSQL 15 (unix socket only; as an
    unprivileged user when we are root), started."""
    require(PG15_BIN / "postgres", "PostgreSQL 15")
    pg = EmbeddedPostgres(workdir, bin_dir=PG15_BIN)
    pg.start()
    return pg


@dataclass
class Deployment:
    """What the core modules' servers run against, and how tests look at it."""

    name: str
    #: The PostgreSQL itself (tests read and create databases through it).
    postgres: EmbeddedPostgres
    bouncer: Optional[PgBouncer] = None
    extra: list[str] = field(default_factory=list)

    def dsn(self, database: str = DATABASE) -> str:
        """A direct connection string (for the tests' own checks)."""
        return self.postgres.dsn(database)

    def server_args(self, database: str = DATABASE) -> list[str]:
        if self.bouncer is not None:
            args = ["--dsn", self.bouncer.dsn(database), "--listen-dsn", self.postgres.dsn(database)]
        else:
            args = ["--dsn", self.postgres.dsn(database)]
        return [*args, *self.extra]
