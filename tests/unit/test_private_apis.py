"""The private Twisted APIs we rely on still exist and mean what we assume.

Three places use them, each wrapped in one module: ``eventbus.__main__``
(twistd's ``_SomeApplicationRunner``, to exit 0 after a clean SIGTERM),
``eventbus.http.wire`` (a TCP transport's write buffer, to send SSE chunks
straight to the socket) and ``eventbus.webhooks.pool`` (the pool interface
Agent calls, and ``HTTP11ClientProtocol``'s quiescent callback and state).  A Twisted upgrade that changes them fails here,
not in production.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.scripts import twistd
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import Agent


def test_twistd_still_has_the_application_runner_python_m_eventbus_uses():
    runner = twistd._SomeApplicationRunner  # type: ignore[attr-defined]
    assert callable(getattr(runner, "run", None))
    assert hasattr(twistd, "ServerOptions")


class _NoReactor:
    def addWriter(self, _: object) -> None:
        pass

    def removeWriter(self, _: object) -> None:
        pass


def test_a_tcp_transport_still_keeps_its_write_buffer_where_bodywriter_looks():
    a, b = socket.socketpair()
    try:
        transport = tcp.Connection(a, protocol=None, reactor=_NoReactor())  # type: ignore[arg-type]
        transport.connected = True
        # What BodyWriter reads to know that nothing is buffered.
        assert transport.dataBuffer == b""
        assert transport.offset == 0
        assert transport._tempDataLen == 0
        assert transport.TLS is False
        transport.write(b"x" * 10)
        # Written data waits in one of the two buffers until the reactor says
        # the socket is writable: both are what BodyWriter checks.
        assert transport._tempDataLen == 10 or len(transport.dataBuffer) - transport.offset == 10
        assert transport.socket is a
    finally:
        a.close()
        b.close()


class _RecordingPool:
    persistent = True

    def __init__(self) -> None:
        self.asked: list[object] = []

    def getConnection(self, key: object, endpoint: object) -> defer.Deferred:
        self.asked.append(key)
        return defer.Deferred()


class _Endpoints:
    def endpointForURI(self, uri: object) -> object:
        return object()


def test_agent_still_asks_its_pool_for_a_connection_per_scheme_host_and_port():
    pool = _RecordingPool()
    agent = Agent.usingEndpointFactory(MemoryReactorClock(), _Endpoints(), pool=pool)  # type: ignore[arg-type]
    agent.request(b"POST", b"http://receiver.test:8080/hook")
    assert pool.asked == [(b"http", b"receiver.test", 8080)]


def test_an_http11_client_protocol_still_starts_quiescent_and_takes_its_callback():
    returned: list[object] = []
    protocol = HTTP11ClientProtocol(returned.append)
    assert protocol.state == "QUIESCENT"
    assert protocol._quiescentCallback == returned.append  # what it calls once a response is read
