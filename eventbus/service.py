"""The twistd service tree: embedded PostgreSQL, database, listener, ports.

Order matters and is enforced by :class:`SequentialService`: the database is
reachable and migrated, and the LISTEN connection is up, before any port
listens; on shutdown the ports stop first and PostgreSQL last.

Layer rule: may import everything; builds nothing (:mod:`eventbus.tap` does).
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger

from eventbus.consumers import Consumers
from eventbus.notifier import Notifier
from eventbus.retry import retrying, sleep
from eventbus.storage.database import Database
from eventbus.storage.embedded import EmbeddedPostgres
from eventbus.storage.migrate import migrate
from eventbus.storage.notify import Listener
from eventbus.tokens import TokenCache

log = Logger()

#: How long start-up keeps retrying an unreachable database before giving up.
STARTUP_DB_WAIT_S = 30.0

#: Longest a stopping process waits for its held requests to be answered.
DRAIN_TIMEOUT_S = 5.0
#: Pause between looks at what is still held, and after the last answer (so
#: the reactor writes the answers before it closes the connections).
DRAIN_STEP_S = 0.05

#: Set when start-up failed, so ``python -m eventbus`` can exit non-zero.
startup_failed = False


class SequentialService(service.MultiService):
    """Starts children one at a time, awaiting each; stops them in reverse.

    ``privilegedStartService`` is deliberately not forwarded: port services
    would otherwise bind before the database is ready.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self._starting: defer.Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        service.Service.startService(self)
        self._starting = defer.ensureDeferred(self._start_all())

    async def _start_all(self) -> None:
        global startup_failed
        tune_malloc()
        for child in list(self):
            try:
                await defer.maybeDeferred(child.startService)
            except Exception as e:
                startup_failed = True
                log.failure("start-up failed in {service}: {error}", service=child.name or child, error=e)
                self.reactor.stop()
                return
        tune_gc()

    def whenStarted(self) -> defer.Deferred[None]:
        """Fires once every child has started (or start-up failed)."""
        return defer.ensureDeferred(self._started())

    async def _started(self) -> None:
        if self._starting is not None:
            await self._starting

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop_all())

    async def _stop_all(self) -> None:
        if self._starting is not None:
            await self._starting
        for child in reversed(list(self)):
            if child.running:
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("error stopping {service}", service=child.name or child)


#: Young-generation threshold of the cyclic garbage collector (CPython's
#: default is 700).  Every request allocates hundreds of short-lived objects,
#: and each collection of the old generation walks every live object: with
#: 10,000 long polls held open that is about a million objects and several
#: hundred milliseconds per pass, stalling every connection.  Collecting
#: less often trades a little memory for far fewer such stalls.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Called once the server is up: what start-up loaded (modules, classes)
    lives forever, so move it out of the collector's sight, and collect the
    young generations less often (see GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


#: glibc's ``mallopt`` parameter number of the mmap threshold.
M_MMAP_THRESHOLD = -3
#: Blocks of at least this size get a mapping of their own from glibc's
#: malloc, given back to the system as soon as they are freed.  This is
#: glibc's initial value, but glibc raises it (up to 32 MiB) every time such
#: a block is freed, after which large buffers (a page of events, a large
#: payload, a write buffer) are carved out of the heap, and the heap gives
#: freed memory back only from its top: after one round of clients reading
#: large events the process kept over a gigabyte it no longer used.  Setting
#: it fixes it (and the trim threshold) where it is.  What the large blocks
#: cost instead is a map and an unmap each: nothing next to filling them.
MMAP_THRESHOLD = 128 * 1024


def tune_malloc() -> None:
    """Fix glibc's mmap threshold (see MMAP_THRESHOLD); elsewhere, nothing."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc (macOS has no mallopt; musl ignores the setting)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class EmbeddedPostgresService(service.Service):
    """Runs the private PostgreSQL when no ``--dsn`` is given."""

    name = "embedded-postgres"

    def __init__(self, data_dir: str, on_ready: Callable[[str], None]) -> None:
        self.postgres = EmbeddedPostgres(data_dir)
        self.on_ready = on_ready

    async def _start(self) -> None:
        log.info("starting embedded PostgreSQL in {path}", path=str(self.postgres.data_dir))
        dsn = await threads.deferToThread(self.postgres.start)
        log.info("embedded PostgreSQL is ready")
        self.on_ready(dsn)

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        return defer.ensureDeferred(self._start())

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        d = threads.deferToThread(self.postgres.stop)
        d.addCallback(
            lambda stopped: log.info(
                "embedded PostgreSQL {what}",
                what="stopped" if stopped else "left running for other processes",
            )
        )
        return d


class DatabaseService(service.Service):
    """Opens the pool (waiting a while for the database) and migrates the schema."""

    name = "database"

    def __init__(self, database: Database, reactor: Any) -> None:
        self.database = database
        self.reactor = reactor

    async def _start(self) -> None:
        await retrying(
            self.reactor,
            self.database.open,
            what="start-up",
            retry_on=(Exception,),
            give_up_after=STARTUP_DB_WAIT_S,
        )
        version = await migrate(self.database)
        log.info("database ready, schema version {version}", version=version)

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        return defer.ensureDeferred(self._start())

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.database.close()


class ListenerService(service.Service):
    """The LISTEN connection that wakes long-polling requests."""

    name = "listener"

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        return defer.ensureDeferred(self.listener.start())

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.listener.stop()


class TokenCacheService(service.Service):
    """Loads every access token before the ports open; stops its expiry timers."""

    name = "tokens"

    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        return defer.ensureDeferred(self.cache.load())

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.cache.stop()


class HeldRequestsService(service.Service):
    """On stop (right after the ports): answer every held long poll and
    consumer ``next`` (a 204, or an event a last leasing round finds) before
    the database closes, instead of dropping their connections."""

    name = "held-requests"

    def __init__(self, reactor: Any, notifier: Notifier, consumers: Consumers) -> None:
        self.reactor = reactor
        self.notifier = notifier
        self.consumers = consumers

    async def _drain(self) -> None:
        self.notifier.close()
        self.consumers.close()
        deadline = self.reactor.seconds() + DRAIN_TIMEOUT_S
        while self.notifier.waiting() or self.consumers.waiting():
            if self.reactor.seconds() >= deadline:
                log.warn(
                    "stopping with {n} held requests unanswered",
                    n=self.notifier.waiting() + self.consumers.waiting(),
                )
                return
            await sleep(self.reactor, DRAIN_STEP_S)
        await sleep(self.reactor, DRAIN_STEP_S)

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._drain())
