"""A server's parts running inside the test process, for tests that look at
what the server holds (waiters, streams, groups) while real clients talk to it.

The parts are built by :func:`eventbus.tap.assemble`, exactly as a server
process builds them; only the service tree is left out (the webhook service
is not started) and the port is an ephemeral loopback one.
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from twisted.internet import reactor

from eventbus.config import Settings
from eventbus.http.params import batch
from eventbus.model import Event
from eventbus.storage.database import Database
from eventbus.storage.events import EventStore
from eventbus.storage.migrate import migrate
from eventbus.tap import Parts, assemble


@dataclasses.dataclass
class InProcessBus:
    parts: Parts
    port: Any

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)


@asynccontextmanager
async def in_process_bus(dsn: str, **settings: Any) -> AsyncIterator[InProcessBus]:
    """Open the database, migrate, listen, serve on 127.0.0.1; undo it all after."""
    parts = assemble(Settings(dsn=dsn, **settings), reactor)
    await parts.database.open()
    port = None
    try:
        await migrate(parts.database)
        await parts.listener.start()
        port = reactor.listenTCP(0, parts.site, interface="127.0.0.1")
        yield InProcessBus(parts, port)
    finally:
        if port is not None:
            await port.stopListening()
        parts.listener.stop()
        parts.database.close()


class Publisher:
    """Appends through a real event store of the test's own (its NOTIFY reaches
    servers as a publish through another server process would)."""

    def __init__(self, dsn: str) -> None:
        self.database = Database(reactor, dsn, pool_size=1, timeout=60)
        self.events = EventStore(self.database)

    async def open(self) -> "Publisher":
        await self.database.open()
        return self

    def close(self) -> None:
        self.database.close()

    async def append(self, context: str, channel: str, issuer: str, array: str) -> list[Event]:
        """Append the elements of a JSON array text, as a batch publish would."""
        return await self.events.append(context, channel, issuer, batch(array))
