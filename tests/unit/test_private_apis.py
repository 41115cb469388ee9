"""The private Twisted APIs we rely on still exist and mean what we assume.

Four places use them, each wrapped in one module: ``eventbus.__main__``
(twistd's ``_SomeApplicationRunner``, to exit 0 after a clean SIGTERM),
``eventbus.http.wire`` (a TCP transport's write buffer, to send SSE chunks
straight to the socket, and to free it when the connection is lost),
``eventbus.webhooks.pool`` (the pool interface Agent calls, and
``HTTP11ClientProtocol``'s quiescent callback and state) and
``eventbus.storage.connection`` (txpostgres' ``Connection._runInteraction``
and its detector's hooks, so that a lost connection logs no traceback).  A Twisted upgrade that changes them fails here,
not in production.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, tcp
from twisted.internet.testing import MemoryReactorClock
from twisted.scripts import twistd
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import Agent

from eventbus.http.wire import _unsent, drop_unsent


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


def test_a_lost_connections_unsent_bytes_are_freed_where_twisted_keeps_them():
    """Twisted keeps a lost connection's write buffer for as long as the
    transport object lives (after a disconnect, often until the garbage
    collector's next full pass): drop_unsent must find and empty it."""
    a, b = socket.socketpair()
    try:
        transport = tcp.Connection(a, protocol=None, reactor=_NoReactor())  # type: ignore[arg-type]
        transport.connected = True
        transport.write(b"x" * 4_000_000)
        transport.doWrite()  # sends what the socket takes, keeps the rest in dataBuffer
        transport.write(b"y" * 100_000)
        assert transport._tempDataBuffer and transport.dataBuffer
        drop_unsent(transport)
        assert transport.dataBuffer and transport._tempDataBuffer, "dropped while still connected"
        transport.connected = False
        drop_unsent(transport)
        assert transport.dataBuffer == b"" and transport.offset == 0
        assert transport._tempDataBuffer == [] and transport._tempDataLen == 0
    finally:
        a.close()
        b.close()


def test_what_a_partial_send_leaves_is_the_rest_of_the_pieces_in_order():
    pieces = (b"5\r\n", b"hello", b"\r\n")
    whole = b"".join(pieces)
    for sent in range(len(whole) + 1):
        assert b"".join(_unsent(pieces, sent)) == whole[sent:]
    assert _unsent(pieces, 0)[1] is pieces[1]  # nothing copied when nothing went out


def test_the_sites_channels_free_the_unsent_bytes_of_a_lost_connection():
    """Wired where every connection ends: a client that stopped reading and
    went away leaves nothing buffered behind."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionLost
    from twisted.internet.task import Clock
    from twisted.python.failure import Failure
    from twisted.web.resource import Resource

    from eventbus.http.site import EventBusSite

    site = EventBusSite(Resource(), max_body=1024, access_log="off", request_timeout=30, reactor=Clock())
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    channel.callLater = Clock().callLater  # its idle timeout, on a fake clock
    listener = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    try:
        transport = tcp.Connection(a, protocol=channel, reactor=_AnyReactor())  # type: ignore[arg-type]
        transport.connected = True
        channel.makeConnection(transport)
        transport.write(b"x" * 8_000_000)
        transport.doWrite()
        assert transport.dataBuffer
        transport.connected = False
        channel.connectionLost(Failure(ConnectionLost()))
        assert transport.dataBuffer == b"" and transport._tempDataBuffer == []
    finally:
        a.close()
        b.close()


class _AnyReactor(_NoReactor):
    def addReader(self, _: object) -> None:
        pass

    def removeReader(self, _: object) -> None:
        pass


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


def test_txpostgres_still_runs_a_transaction_through_the_method_our_connection_overrides():
    import inspect

    from txpostgres import reconnection, txpostgres

    assert "self._doit(self._runInteraction" in inspect.getsource(txpostgres.Connection.runInteraction)
    # Our copy of it: BEGIN, the work, COMMIT, ROLLBACK on failure, RollbackFailed.
    source = inspect.getsource(txpostgres.Connection._runInteraction)
    for step in ('execute("begin")', 'execute("commit")', '"rollback"', "RollbackFailed(self, f)"):
        assert step in source, step
    # The detector's hooks our Outages listen on: a new death starts
    # reconnecting (once), a reconnection ends in connectionRecovered.
    assert "self.startReconnecting(f)" in inspect.getsource(reconnection.DeadConnectionDetector.checkForDeadConnection)
    assert "self.connectionRecovered()" in inspect.getsource(reconnection.DeadConnectionDetector.startReconnecting)
    # The idle connection's read still goes through the polling mixin that raises.
    assert "_PollingMixin.doRead(self)" in inspect.getsource(txpostgres.Connection.doRead)


class _Gone:
    """A descriptor whose read finds the server gone, as our connection answers it."""

    def __init__(self) -> None:
        self.lost: list[object] = []

    def fileno(self) -> int:
        return 1_000_000

    def doRead(self) -> object:  # noqa: N802
        from twisted.python.failure import Failure

        return Failure(ConnectionResetError("server closed the connection"))

    def connectionLost(self, reason: object) -> None:  # noqa: N802
        self.lost.append(reason)


def test_the_reactor_disconnects_a_descriptor_whose_read_returns_a_failure_without_logging():
    from twisted.internet import pollreactor
    from twisted.logger import globalLogPublisher

    reactor = pollreactor.PollReactor()
    gone = _Gone()
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        reactor._doReadOrWrite(gone, gone.fileno(), pollreactor.POLLIN)  # type: ignore[attr-defined]
    finally:
        globalLogPublisher.removeObserver(logged.append)
        reactor.waker.connectionLost(None)  # type: ignore[attr-defined]  # its pipe
    assert len(gone.lost) == 1 and gone.lost[0].check(ConnectionResetError)  # type: ignore[attr-defined]
    assert not logged


def test_an_ssl_endpoint_string_still_keeps_its_tls_context_where_workers_look(tmp_path):
    """eventbus.worker wraps an adopted socket in the TLS an ``ssl:`` string describes."""
    from twisted.internet import reactor
    from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

    from eventbus.worker import tls_context_factory
    from tests.integration.test_tls import self_signed

    key, cert = self_signed(tmp_path)
    context = tls_context_factory(reactor, f"ssl:0:privateKey={key}:certKey={cert}")
    assert IOpenSSLServerConnectionCreator.providedBy(context)
