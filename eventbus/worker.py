"""A worker of ``--workers``: ``python -m eventbus.worker``, started by the parent.

It reads its :class:`~eventbus.workers.WorkerSpec` (number, settings,
inherited sockets) from standard input, builds a whole server with
:func:`eventbus.tap.build` whose ports adopt the parent's listening sockets
(:class:`AdoptedPortService`), logs to standard output with ``worker N``
on every line (with ``--log-format json``: a ``worker`` field), says ``ready`` on its status pipe once it serves, and stops
on ``SIGTERM`` (from the parent, or from the kernel when the parent dies).

Layer rule: wiring, like :mod:`eventbus.tap`: may import everything.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory

from eventbus import logs
from eventbus.config import endpoint_parts
from eventbus.workers import READY, STATUS_FD, Inherited, WorkerSpec

#: Linux ``prctl`` option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class AdoptedPortService(service.Service):
    """Serves ``factory`` on a listening socket the parent bound (TLS if its endpoint is ``ssl:``)."""

    def __init__(self, reactor: Any, inherited: Inherited, factory: Any) -> None:
        self.reactor = reactor
        self.inherited = inherited
        if endpoint_parts(inherited.endpoint)[0].lower() == "ssl":
            factory = TLSMemoryBIOFactory(tls_context_factory(reactor, inherited.endpoint), False, factory)
        self.factory = factory
        self.port: IListeningPort | None = None

    async def _start(self) -> None:
        endpoint = endpoints.AdoptedStreamServerEndpoint(
            self.reactor, self.inherited.fd, self.inherited.family
        )
        self.port = await endpoint.listen(self.factory)

    def startService(self) -> defer.Deferred:
        service.Service.startService(self)
        return defer.ensureDeferred(self._start())

    def stopService(self) -> None:
        service.Service.stopService(self)
        # Stop accepting, and nothing more: the socket is the parent's (a
        # unix port's stopListening would even unlink the others' path);
        # this process's copy closes when it exits.
        if self.port is not None:
            self.port.stopReading()  # type: ignore[attr-defined]


def tls_context_factory(reactor: Any, endpoint: str) -> Any:
    """The TLS context an ``ssl:`` endpoint string describes (certificate, key...).

    Twisted parses the string into an ``SSL4ServerEndpoint`` but keeps the
    context in a private attribute (tests/unit/test_private_apis.py fails
    if that changes).
    """
    return endpoints.serverFromString(reactor, endpoint)._sslContextFactory


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned worker runs on until stopped
    if os.getppid() == 1:  # the parent died before we asked
        sys.exit(1)


def main() -> int:
    """A worker process: read its spec, serve until SIGTERM."""
    from twisted.internet import reactor as default_reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from eventbus import service as services
    from eventbus import tap

    reactor: Any = default_reactor
    _die_with_parent()
    spec = WorkerSpec.from_json(sys.stdin.buffer.read())
    label = f"worker {spec.number}"
    text: Any = textFileLogObserver(sys.stdout)
    if spec.settings.log_format == logs.JSON:
        text = logs.JsonLineObserver(sys.stdout)

    def observer(event: dict[str, Any]) -> None:
        system = event.get("log_system")
        text(
            {
                **event,
                "log_system": label if system in (None, "-") else f"{label} {system}",
                "worker": spec.number,
            }
        )

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observer)], redirectStandardIO=False)
    root = tap.build(spec.settings, reactor, worker=spec)

    stopping: list[bool] = []

    def stop_once() -> None:
        # SIGTERM from the parent and SIGINT/SIGTERM to the whole process
        # group (Ctrl-C) may both arrive: stop once.
        if not stopping and reactor.running:
            stopping.append(True)
            reactor.stop()

    def on_signal(signum: int, frame: object) -> None:
        reactor.callFromThread(stop_once)

    def started() -> None:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        root.startService()
        root.whenStarted().addCallback(lambda _: None if services.startup_failed else _ready())

    def _ready() -> None:
        os.write(STATUS_FD, READY)

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()
    return 1 if services.startup_failed else 0


if __name__ == "__main__":
    sys.exit(main())
