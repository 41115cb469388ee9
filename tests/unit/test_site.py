"""The request deadline and the connection budget on the real channel class,
driven byte by byte over an in-memory transport and a fake clock.

What the channel relies on in twisted.web is checked here too:
``allContentReceived`` runs when a request has arrived whole,
``requestDone`` when its answer is finished, and bytes that came while a
request was served (pipelining) reach ``dataReceived`` again afterwards.
"""
from __future__ import annotations

import re
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web import server
from twisted.web.resource import Resource

from eventbus.http.site import EventBusSite

DEADLINE_S = 5.0


class Held(Resource):
    """``/hold`` answers when the test says so; anything else at once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[server.Request] = []

    def render_GET(self, request: server.Request) -> Any:
        if request.path == b"/hold":
            self.held.append(request)
            return server.NOT_DONE_YET
        return b"ok"

    def render_POST(self, request: server.Request) -> bytes:
        return b"posted"


def site(max_connections: int = 10, max_body: int = 1000) -> tuple[EventBusSite, Held, Clock]:
    clock = Clock()
    resource = Held()
    s = EventBusSite(resource, max_body=max_body, access_log="off", request_timeout=DEADLINE_S,
                     max_connections=max_connections, reactor=clock)
    s.startFactory()
    return s, resource, clock


def connect(s: EventBusSite) -> tuple[Any, StringTransport]:
    channel = s.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def statuses(transport: StringTransport) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.value())


def test_a_trickled_head_gets_a_408_at_the_deadline_from_its_first_byte():
    s, _, clock = site()
    channel, transport = connect(s)
    clock.advance(DEADLINE_S * 3)  # idle before the request: not counted
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ":
        channel.dataReceived(bytes([byte]))
        clock.advance(DEADLINE_S / 100)
    assert statuses(transport) == []
    clock.advance(DEADLINE_S)
    assert statuses(transport) == [b"408"] and transport.disconnecting


def test_a_request_that_arrives_in_time_is_served_and_the_next_gets_its_own_deadline():
    s, _, clock = site()
    channel, transport = connect(s)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(DEADLINE_S * 2)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(transport) == [b"200", b"200"] and not transport.disconnecting


def test_a_held_answer_outlives_the_deadline_and_pipelined_bytes_count_after_it():
    s, resource, clock = site()
    channel, transport = connect(s)
    # A held request and, in the same packet, the start of the next one.
    channel.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n")
    clock.advance(DEADLINE_S * 3)
    channel.dataReceived(b"Host: x\r\n")  # more of it, while the first is held
    clock.advance(DEADLINE_S * 3)
    assert statuses(transport) == [] and not transport.disconnecting
    request = resource.held.pop()
    request.write(b"late")
    request.finish()
    # The pipelined bytes now start the next request's deadline.
    assert statuses(transport) == [b"200"]
    clock.advance(DEADLINE_S)
    assert statuses(transport) == [b"200", b"408"]


def test_a_slow_body_gets_a_408_but_a_refused_one_keeps_its_413():
    s, _, clock = site(max_body=10)
    channel, transport = connect(s)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    clock.advance(DEADLINE_S)
    assert statuses(transport) == [b"408"]
    channel, transport = connect(s)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nab")
    clock.advance(DEADLINE_S)
    assert statuses(transport) == [b"413"]


def test_at_the_connection_limit_the_longest_waiting_is_closed_and_a_served_one_never():
    s, resource, _ = site(max_connections=2)
    held, held_transport = connect(s)
    held.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    trickler, trickler_transport = connect(s)
    trickler.dataReceived(b"GET / HT")
    newcomer, newcomer_transport = connect(s)
    assert trickler_transport.disconnecting and not held_transport.disconnecting
    newcomer.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    # Both connections are serving a request: the next one is refused.
    refused, refused_transport = connect(s)
    assert statuses(refused_transport) == [b"503"] and refused_transport.disconnecting
    assert b'{"error":' in refused_transport.value()
    assert not held_transport.disconnecting and not newcomer_transport.disconnecting
    assert len(resource.held) == 2


def test_what_the_gate_keeps_on_a_request_stays_out_of_the_request_dict():
    """A held request keeps its gate, principal and hold outside ``__dict__``,
    so that its dict keeps sharing its key table with every other request's
    (1.5 KiB a held request otherwise: docs/benchmarks.md, issue 14)."""
    from eventbus.http import access, requestid, router

    s, resource, _ = site()
    channel, _ = connect(s)
    channel.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    [request] = resource.held
    for name in (access._GATE, access._PRINCIPAL, access._HOLD, requestid._ATTRIBUTE, requestid._ROUTE,
                 router._ROUTE):
        setattr(request, name, object())
        assert name not in request.__dict__, name
