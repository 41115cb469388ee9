"""The private Twisted APIs we rely on still exist and mean what we assume.

Two places use them, each wrapped in one module: ``eventbus.__main__``
(twistd's ``_SomeApplicationRunner``, to exit 0 after a clean SIGTERM) and
``eventbus.http.wire`` (a TCP transport's write buffer, to send SSE chunks
straight to the socket).  A Twisted upgrade that changes them fails here,
not in production.
"""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.scripts import twistd


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
