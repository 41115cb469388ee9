"""``/metrics``: this process's metrics, in Prometheus' text format.

Invariant: the answer is prometheus-client's exposition of this process's
registry (:class:`~eventbus.metrics.exposition.Exposition`), for a
``metrics`` or ``admin`` token (or a request that needs none: ``local``
mode on loopback, ``off``); it says nothing of other processes.  A ``HEAD``
never waits: it does not read the database's gauges.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from twisted.web.server import Request

from eventbus.auth import Action, require_metrics
from eventbus.http import access, render
from eventbus.http.router import Router
from eventbus.metrics.exposition import Exposition


class MetricsResource:
    router = Router()

    def __init__(self, exposition: Exposition) -> None:
        self.exposition = exposition

    @router.route("/metrics", methods=["GET"], need=(Action.METRICS,))
    async def metrics(self, request: Request) -> bytes:
        require_metrics(access.principal_of(request))
        accept = request.getHeader(b"Accept")
        data, content_type = await self.exposition.scrape(
            None if accept is None else accept.decode("latin-1"), fresh=request.method != b"HEAD"
        )
        return render.body(request, data, content_type=content_type.encode("latin-1"))
