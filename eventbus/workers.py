"""``--workers N``: N full server processes behind each ``--listen`` endpoint.

The parent binds every endpoint, starts the embedded PostgreSQL (if any)
once, then starts N worker processes (``python -m eventbus.worker``, :mod:`eventbus.worker`) and
supervises them; it serves nothing itself.  Each worker is a whole server
(its own database pool, LISTEN connection, notifier, tail and token cache),
so every guarantee that holds for several server processes on one database
holds for the workers, and nothing is shared between them but the database
and the listening sockets.

Sockets: the parent binds, the workers adopt (``IReactorSocket.adoptStreamPort``).
A TCP endpoint (``tcp:``, ``tcp6:``, ``ssl:``) gets one socket per worker,
all bound to the same address with ``SO_REUSEPORT``, so the kernel spreads
new connections evenly over the workers (one shared socket lets whichever
worker wakes first accept a whole burst, and a client's keep-alive
connections stay where they landed).  The parent keeps every socket open for
its whole life: connections routed to a worker that died wait in its
socket's queue until its successor adopts it, and are never reset.  A
``unix:`` socket cannot be bound twice, so all workers share one.  A TLS
endpoint is a TCP socket to the parent; each worker wraps its connections in
TLS itself.

Supervision: a worker that exits while the parent runs is started again
after a backoff (0.5 s, doubling up to 30 s; back to 0.5 s once a worker
has run for :data:`STABLE_S`), every exit and restart logged.  ``SIGTERM``
to the parent sends ``SIGTERM`` to every worker (each answers its held
requests, hands its webhook leases over and closes its connections), waits
for them all, and only then does the parent's service tree stop the
embedded PostgreSQL.  A worker whose parent dies gets ``SIGTERM`` from the
kernel (``PR_SET_PDEATHSIG``).

The spec of a worker (its number, settings and inherited sockets) goes to
it on its standard input, so no connection string shows in ``ps``.  Each
answer of a worker carries ``X-Worker: <number>``; its log lines carry
``worker <number>`` and go to the parent's standard output.

Layer rule: wiring, like :mod:`eventbus.tap`: may import everything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventbus.config import Settings, endpoint_parts

log = Logger()

#: Delays before restarting a worker that exited: 0.5 s, 1 s, 2 s... 30 s.
RESTART_POLICY = backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=lambda: 0.0)
#: A worker that ran this long after it was ready restarts without delay growth.
STABLE_S = 10.0
#: How long a stopping parent waits for its workers before it kills them.
STOP_TIMEOUT_S = 30.0
#: Twisted's default listen backlog.
DEFAULT_BACKLOG = 50
#: The worker's end of the pipe on which it says it is ready.
STATUS_FD = 3
#: Inherited listening sockets start at this descriptor in a worker.
FIRST_SOCKET_FD = 4
READY = b"ready\n"


# -- binding (the parent) -----------------------------------------------------------
@dataclass
class Bound:
    """The sockets of one ``--listen`` endpoint: one per worker, or one shared."""

    endpoint: str
    family: int
    sockets: list[socket.socket]
    path: str | None = None

    def fileno(self, worker: int) -> int:
        """The socket worker ``worker`` (1..N) adopts."""
        return self.sockets[(worker - 1) % len(self.sockets)].fileno()

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


def _arguments(endpoint: str) -> tuple[str, list[str], dict[str, str]]:
    parts = [p.replace("\\:", ":").replace("\\\\", "\\") for p in endpoint_parts(endpoint)]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0].lower(), [p for p in parts[1:] if "=" not in p], named


def bind(endpoint: str, workers: int) -> Bound:
    """Bind a ``tcp:``, ``tcp6:``, ``ssl:`` or ``unix:`` endpoint for ``workers`` workers."""
    kind, positional, named = _arguments(endpoint)
    backlog = int(named.get("backlog", DEFAULT_BACKLOG))
    if kind == "unix":
        path = named.get("address") or positional[0]
        if os.path.exists(path) and not _in_use(path):
            os.unlink(path)  # left behind by a process that died
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, int(named.get("mode", "666"), 8))
        s.listen(backlog)
        s.setblocking(False)
        return Bound(endpoint, socket.AF_UNIX, [s], path)
    port = int(named.get("port") or positional[0])
    interface = named.get("interface", "::" if kind == "tcp6" else "")
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((interface, port))
            port = s.getsockname()[1]  # port 0: the others join the one given to the first
            s.listen(backlog)
            s.setblocking(False)
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return Bound(endpoint, family, sockets)


def _in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


# -- what a worker is told ------------------------------------------------------------
@dataclass(frozen=True)
class Inherited:
    """A listening socket a worker adopts: its descriptor there, and what it serves."""

    fd: int
    family: int
    endpoint: str


@dataclass(frozen=True)
class WorkerSpec:
    number: int
    settings: Settings
    ports: tuple[Inherited, ...]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "number": self.number,
                "settings": dataclasses.asdict(self.settings),
                "ports": [dataclasses.asdict(p) for p in self.ports],
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WorkerSpec:
        raw = json.loads(data)
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in raw["settings"].items()
        }
        return cls(raw["number"], Settings(**values), tuple(Inherited(**p) for p in raw["ports"]))


# -- supervising (the parent) -----------------------------------------------------------
class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, number: int, spec: bytes) -> None:
        self.supervisor = supervisor
        self.number = number
        self.spec = spec
        self.pid: int | None = None
        self.ready_at: float | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.pid = transport.pid
        transport.write(self.spec)
        transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == STATUS_FD and READY in data and self.ready_at is None:
            self.ready_at = self.supervisor.reactor.seconds()
            log.info("worker {n} (pid {pid}) ready", n=self.number, pid=self.pid)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor._ended(self, reason)

    def signal(self, name: str) -> None:
        transport: Any = self.transport
        with contextlib.suppress(Exception):  # already gone
            transport.signalProcess(name)


class WorkerSupervisor(service.Service):
    """Binds the endpoints, runs ``settings.workers`` workers, restarts the dead."""

    name = "workers"

    def __init__(self, reactor: Any, settings: Settings) -> None:
        self.reactor = reactor
        self.settings = settings
        #: The database every worker uses (set by the embedded PostgreSQL once up).
        self.dsn = settings.dsn or ""
        self.bound: list[Bound] = []
        self.workers: dict[int, _WorkerProtocol] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}

    async def _start(self) -> None:
        running: defer.Deferred[None] = defer.Deferred()
        self.reactor.callWhenRunning(running.callback, None)  # processes need a running reactor
        await running
        for endpoint in self.settings.listen:
            self.bound.append(bind(endpoint, self.settings.workers))
        log.info(
            "starting {n} workers on {endpoints}",
            n=self.settings.workers,
            endpoints=", ".join(self.settings.listen),
        )
        for number in range(1, self.settings.workers + 1):
            self._spawn(number)

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        return defer.ensureDeferred(self._start())

    def spec(self, number: int) -> WorkerSpec:
        settings = dataclasses.replace(self.settings, workers=1, dsn=self.dsn, listen=())
        ports = tuple(Inherited(FIRST_SOCKET_FD + i, b.family, b.endpoint) for i, b in enumerate(self.bound))
        return WorkerSpec(number, settings, ports)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, STATUS_FD: "r"}
        for i, b in enumerate(self.bound):
            child_fds[FIRST_SOCKET_FD + i] = b.fileno(number)
        proto = _WorkerProtocol(self, number, self.spec(number).to_json())
        self.reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-m", "eventbus.worker"],
            env=os.environ.copy(),
            path=os.getcwd(),
            childFDs=child_fds,
        )
        self.workers[number] = proto
        log.info("worker {n} started (pid {pid})", n=number, pid=proto.pid)

    def _ended(self, proto: _WorkerProtocol, reason: Failure) -> None:
        if self.workers.get(proto.number) is proto:
            del self.workers[proto.number]
        how = _exit_status(reason)
        if not self.running:
            log.info("worker {n} (pid {pid}) stopped: {how}", n=proto.number, pid=proto.pid, how=how)
            return
        now = self.reactor.seconds()
        if proto.ready_at is not None and now - proto.ready_at >= STABLE_S:
            self._failures[proto.number] = 0
        failures = self._failures.get(proto.number, 0)
        delay = RESTART_POLICY(failures)
        self._failures[proto.number] = failures + 1
        log.warn(
            "worker {n} (pid {pid}) {how}; restarting it in {delay:g} s",
            n=proto.number,
            pid=proto.pid,
            how=how,
            delay=delay,
        )
        self._restarts[proto.number] = self.reactor.callLater(delay, self._spawn, proto.number)

    async def _stop(self) -> None:
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        procs = list(self.workers.values())
        log.info("stopping {n} workers", n=len(procs))
        for proc in procs:
            proc.signal("TERM")
        everyone = defer.DeferredList([p.ended for p in procs])
        kill = self.reactor.callLater(STOP_TIMEOUT_S, self._kill, procs)
        await everyone
        if kill.active():
            kill.cancel()
        for b in self.bound:
            b.close()
        self.bound = []

    def _kill(self, procs: list[_WorkerProtocol]) -> None:
        for proc in procs:
            if not proc.ended.called:
                log.warn("worker {n} (pid {pid}) did not stop: killing it", n=proc.number, pid=proc.pid)
                proc.signal("KILL")

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())


def _exit_status(reason: Failure) -> str:
    code = getattr(reason.value, "exitCode", None)
    sig = getattr(reason.value, "signal", None)
    if sig is not None:
        return f"was killed by signal {sig}"
    return f"exited with status {code}"
