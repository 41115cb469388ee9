"""Baseline A: the stack's ceiling -- a bare Klein route under twistd.

Same interpreter, reactor, twistd logging (one access-log line per request
to twistd's log, as the event bus does) and the same ``EventBusSite``; the
publish route reads the body and answers ``201`` with a small fixed JSON
event, touching no database.  Anything the event bus does slower than this
is the cost of its own work.

Run as ``python bench/baseline_klein.py ENDPOINT``; it re-executes itself as
``twistd -n --pidfile= -y <this file>``, where it is loaded as a ``.tac``.
"""
from __future__ import annotations

import os
import sys

ENDPOINT_ENV = "EVENTBUS_BENCH_BASELINE_LISTEN"
BODY = (b'{"id":1,"issuer":"bench","context":"bench","channel":"c",'
        b'"timestamp":1764248745.123456,"payload":{"n":1}}')


def make_application() -> object:
    from klein import Klein
    from twisted.application import service, strports
    from twisted.web.iweb import IRequest

    from eventbus.config import DEFAULTS
    from eventbus.http.site import EventBusSite

    app = Klein()

    @app.route("/health", methods=["GET"])
    def health(request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"status": "ok"}'

    @app.route("/events/<context>/<channel>", methods=["POST"])
    async def publish(request: IRequest, context: str, channel: str) -> bytes:
        request.content.read()
        request.setResponseCode(201)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(BODY))
        return BODY

    application = service.Application("eventbus-bench-baseline")
    site = EventBusSite(app.resource(), max_body=DEFAULTS.max_body, access_log=DEFAULTS.access_log,
                        request_timeout=DEFAULTS.request_timeout)
    strports.service(os.environ[ENDPOINT_ENV], site).setServiceParent(application)
    return application


if __name__ == "__main__":
    from twisted.scripts import twistd

    os.environ[ENDPOINT_ENV] = sys.argv[1] if len(sys.argv) > 1 else "tcp:33090"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, repo)
    sys.argv = [sys.argv[0], "--nodaemon", "--pidfile=", "--python", os.path.abspath(__file__)]
    twistd.run()
else:
    # Loaded by twistd as a .tac file.
    application = make_application()
