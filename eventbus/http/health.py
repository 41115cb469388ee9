"""``/health``: whether this process can reach its database.

Invariant: ``200 {"status": "ok"}`` only after a query answered; an outage
is the router's JSON ``503``.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from twisted.web.server import Request

from eventbus.http import render
from eventbus.http.router import PUBLIC, Router
from eventbus.storage.database import Database


class HealthResource:
    router = Router()

    def __init__(self, database: Database) -> None:
        self.database = database

    @router.route("/health", methods=["GET"], need=PUBLIC)
    async def health(self, request: Request) -> bytes:
        await self.database.ping()
        return render.json(request, {"status": "ok"})
