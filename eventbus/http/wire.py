"""Writing a long response's body straight to its socket when it can.

twisted.web buffers every ``request.write``: the transport appends the bytes,
registers with the reactor for writability and sends on the reactor's next
turn, then unregisters (two ``epoll_ctl`` calls and a dispatch per write).
For one response that is nothing; for an event written to a thousand SSE
streams it was most of the server's work.  :class:`BodyWriter` sends the
HTTP chunk at once when the transport has nothing buffered (so the order of
bytes is kept) and hands whatever the socket does not take to the transport,
whose buffer then fills and pauses the response's producer as usual: flow
control is unchanged.  Anything it does not know (TLS, a transport that is
not a plain TCP socket, a response that is not chunked) goes the usual way.

:func:`drop_unsent` lets go of what a lost connection still had buffered:
Twisted keeps it until the transport object itself is freed, which after a
disconnect is often only at the garbage collector's next full pass (the
transport is referenced from the traceback of the cancellation, which
refers back to itself), so a client that stopped reading would strand its
last page in memory for as long.

Layer rule: the HTTP layer.  This module reads and resets Twisted transport
internals (``dataBuffer``, ``offset``, ``_tempDataBuffer``, ``_tempDataLen``),
the one place that does; tests/unit/test_private_apis.py fails if they
change.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet import tcp
from twisted.web.server import Request


class BodyWriter:
    """Writes a response body (after its first write) for one request."""

    __slots__ = ("request", "socket", "transport")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.transport: Any = getattr(request.channel, "transport", None)
        sock = getattr(self.transport, "socket", None)
        # Only a plain TCP transport with the buffer attributes we check.  A
        # TLS connection's transport is a protocol wrapper that forwards
        # unknown attributes (``socket`` included) to the TCP connection
        # beneath it, so it is recognised by its class, not its attributes:
        # writing to that socket would bypass the encryption.
        if (
            not isinstance(self.transport, tcp.Connection)
            or getattr(self.transport, "TLS", True)
            or not all(hasattr(self.transport, a) for a in ("dataBuffer", "offset", "_tempDataLen"))
        ):
            sock = None
        self.socket: Any = sock

    def no_delay(self) -> None:
        """Turn off Nagle's algorithm: a stream of small writes the client never
        answers gets its ACKs delayed (40 ms on Linux), and Nagle would hold
        each write until the ACK of the previous one."""
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            with contextlib.suppress(OSError):
                set_no_delay(True)

    def write(self, data: bytes) -> None:
        request, transport = self.request, self.transport
        if (
            self.socket is None
            or not request.chunked
            or request.finished
            or not transport.connected
            or transport.disconnecting
            or transport._tempDataLen
            or transport.offset != len(transport.dataBuffer)
        ):
            request.write(data)
            return
        # The chunk's framing and the data go out in one sendmsg, so the data
        # is never copied (a broadcast writes the same bytes to every member).
        head = b"%x\r\n" % len(data)
        try:
            sent = self.socket.sendmsg((head, data, b"\r\n"))
        except OSError:
            sent = 0  # EAGAIN; a real error is met again by the transport
        request.sentLength += len(data)
        if sent < len(head) + len(data) + 2:
            transport.writeSequence(_unsent((head, data, b"\r\n"), sent))


def _unsent(pieces: tuple[bytes, ...], sent: int) -> list[bytes]:
    """What is left of ``pieces`` after their first ``sent`` bytes went out."""
    rest = []
    for piece in pieces:
        if sent >= len(piece):
            sent -= len(piece)
            continue
        rest.append(piece[sent:] if sent else piece)
        sent = 0
    return rest


def drop_unsent(transport: Any) -> None:
    """The connection is lost: free the bytes still waiting in its write buffer."""
    if transport is None or transport.connected:
        return
    if all(hasattr(transport, a) for a in ("dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen")):
        transport.dataBuffer = b""
        transport.offset = 0
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
