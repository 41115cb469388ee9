"""The processes a benchmark run starts on loopback, and what we read from /proc.

Everything is started by the runner itself: one embedded PostgreSQL in the
run's temporary directory, event bus servers (``python -m eventbus``, this
checkout's source), the bare-Klein baseline, and nginx with Nchan when the
machine has it.  Every server gets the open-files limit raised to its hard
limit so it can hold thousands of long-poll connections.
"""
from __future__ import annotations

import http.client
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psycopg2

from eventbus.storage.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
#: Debian's Nchan package drops its ``load_module`` line here.
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
#: Listen backlog of every server (Twisted's default is 50): thousands of
#: long-poll clients connecting at once would otherwise overflow it and wait
#: out SYN retransmits, which measures the kernel's back-off, not the server.
BACKLOG = 4096
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise this process's open-files limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child_setup() -> None:
    """``preexec_fn`` of every server: ``ulimit -n <hard>``, own process group."""
    raise_nofile()
    os.setpgrp()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_quiet(pid: int, quiet_s: float = 0.3, timeout: float = 60.0,
               busy_fraction: float = 0.05) -> bool:
    """Wait until a process stops using CPU (it has handled what was sent).

    Used after opening thousands of long-poll requests, which give no answer
    that would say the server has registered them.
    """
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = cpu_seconds(pid)
        if now - before <= quiet_s * busy_fraction:
            return True
        before = now
    return False


class Postgres:
    """One embedded PostgreSQL for the whole run, with one database per purpose."""

    def __init__(self, workdir: Path) -> None:
        self.pg = EmbeddedPostgres(workdir / "pg")

    def start(self) -> "Postgres":
        self.pg.start()
        return self

    def stop(self) -> None:
        self.pg.stop(force=True)

    def database(self, name: str) -> str:
        """Create (or re-create empty) a database; return its DSN."""
        conn = psycopg2.connect(self.pg.dsn("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.pg.dsn(name)


class ServerProcess:
    """A child HTTP server on a loopback port; knows its pid, log and health."""

    name = "server"

    def __init__(self, workdir: Path, port: Optional[int] = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = workdir / f"{self.name}-{self.port}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    health_path = "/health"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "ServerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                preexec_fn=_child_setup,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if self.status("GET", self.health_path) == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def status(self, method: str, path: str) -> Optional[int]:
        """The status code of one request, or None when the server does not answer."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request(method, path)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp.status
        except OSError:
            return None

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class EventBus(ServerProcess):
    """``python -m eventbus`` from this checkout, against a given database."""

    name = "eventbus"

    def __init__(self, workdir: Path, dsn: str, extra: Optional[list[str]] = None,
                 nofile: Optional[int] = None) -> None:
        super().__init__(workdir)
        self.dsn = dsn
        self.extra = extra or []
        #: An open-files limit of its own (``ulimit -n``) instead of the hard limit.
        self.nofile = nofile

    def command(self) -> list[str]:
        # No cap on held requests: the waiter scenarios hold thousands of
        # long polls from one loopback client.
        command = [sys.executable, "-m", "eventbus", "--dsn", self.dsn,
                   "--listen", f"tcp:{self.port}:interface=127.0.0.1:backlog={BACKLOG}",
                   "--max-held-per-client", "0", *self.extra]
        if self.nofile is None:
            return command
        return ["sh", "-c", f'ulimit -n {self.nofile} && exec "$0" "$@"', *command]

    def create_token(self, name: str, *scopes: str) -> str:
        """A token made with ``eventbus token create`` against this server's database."""
        out = subprocess.run(
            [sys.executable, "-m", "eventbus", "token", "create", name, "--dsn", self.dsn,
             *(a for s in scopes for a in ("--scope", s))],
            cwd=str(REPO), capture_output=True, text=True, check=True, timeout=120)
        return out.stdout.strip()


class BaselineKlein(ServerProcess):
    """Baseline A: a bare Klein route under twistd, same Site and logging."""

    name = "baseline-klein"

    def command(self) -> list[str]:
        return [sys.executable, str(REPO / "bench" / "baseline_klein.py"),
                f"tcp:{self.port}:interface=127.0.0.1:backlog={BACKLOG}"]


def nchan_missing() -> Optional[str]:
    """Why Nchan cannot run here (with the install hint), or None when it can."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        return "not installed (apt-get install -y nginx libnginx-mod-nchan)"
    if not NCHAN_MODULE.exists():
        return "not installed (apt-get install -y libnginx-mod-nchan)"
    return None


NGINX_CONF = """\
load_module {module};
daemon off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {workdir}/nginx-body;
    nchan_max_reserved_memory 512M;
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        location = /health {{ return 200 '{{"status": "ok"}}'; }}
        location ~ ^/pub/([A-Za-z0-9_.:-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/([A-Za-z0-9_.:-]+)$ {{
            nchan_subscriber longpoll;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
            nchan_subscriber_timeout 300s;
        }}
        location ~ ^/sse/([A-Za-z0-9_.:-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}
    }}
}}
"""


class Nchan(ServerProcess):
    """Reference C: nginx + Nchan, one worker process, messages in memory.

    ``/pub/<ch>`` publishes (POST), ``/sub/<ch>`` long-polls for the next
    message, ``/sse/<ch>`` is an EventSource stream.
    """

    name = "nchan"

    def command(self) -> list[str]:
        conf = self.workdir / f"nginx-{self.port}.conf"
        nofile = raise_nofile()
        conf.write_text(NGINX_CONF.format(
            module=NCHAN_MODULE, workdir=self.workdir, port=self.port, backlog=BACKLOG,
            nofile=nofile, connections=max(1024, nofile - 100)))
        (self.workdir / "nginx-body").mkdir(exist_ok=True)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-c", str(conf), "-p", str(self.workdir), "-e",
                str(self.workdir / "nginx-error.log")]

    @property
    def worker_pid(self) -> int:
        """The one worker (it holds the connections; the master only watches)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        if not children:
            raise RuntimeError("nginx has no worker process")
        return int(children[0])

    def rss_kb(self) -> int:
        return rss_kb(self.worker_pid)
