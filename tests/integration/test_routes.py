"""Every GET route of a real server: HEAD answers its headers and ends at
once, ``access_token`` is accepted, an unknown query parameter is a 400.

HEAD is written on a raw socket with ``Connection: close`` and read to the
end: a route that held the request (a peek's timeout, an SSE stream) would
never end it, and the socket's safety timeout fails the test instead.
"""
from __future__ import annotations

import http.client
import json
import socket
import uuid

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.client import get, request

CTX = "routes"
CH = f"ch-{uuid.uuid4().hex[:8]}"
#: Safety net for raw sockets (not a timing assertion).
SAFETY_S = 30.0

#: (path, status of GET) for every GET route; a consumer and a subscription
#: exist (made by the fixture below), event 1 exists.
GET_ROUTES = [
    ("/health", 200),
    (f"/events/{CTX}/{CH}", 200),
    (f"/events/{CTX}/{CH}?limit=1&start=0", 200),
    (f"/events/{CTX}/{CH}?peek=1&timeout=300", 204),  # nothing after 1: would wait 300 s
    (f"/events/{CTX}/{CH}?peek=0&timeout=300", 200),
    (f"/events/{CTX}/{CH}/stream", 200),  # would never end
    (f"/events/{CTX}/{CH}/stream?after=0", 200),
    (f"/events/{CTX}/{CH}/1", 200),
    (f"/events/{CTX}/{CH}/2", 404),
    (f"/consumers/{CTX}/{CH}", 200),
    (f"/consumers/{CTX}/{CH}/c", 200),
    (f"/consumers/{CTX}/{CH}/c/dead", 200),
    ("/subscriptions", 200),
    ("/subscriptions/999999999", 404),
    ("/channels", 200),
    (f"/channels?context={CTX}&limit=1&after={CTX}/a", 200),
    (f"/channels/{CTX}/{CH}", 200),
    (f"/channels/{CTX}/never-{CH}", 404),
]


@pytest.fixture(scope="module")
def routes_server(server):
    """The module's server with event 1 and consumer ``c`` on the channel."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=SAFETY_S)
    conn.request("POST", f"/events/{CTX}/{CH}", body=b'{"n": 1}', headers={"X-EVENT-ISSUER": "t"})
    assert conn.getresponse().read() and conn.sock is not None
    conn.request("PUT", f"/consumers/{CTX}/{CH}/c", body=b"{}")
    put = conn.getresponse()
    assert put.read() and put.status == 201
    # A token that may do everything (made from loopback, which `local` mode trusts).
    conn.request("POST", "/tokens", body=json.dumps({"name": f"routes-{CH}", "scopes": ["admin"]}).encode())
    created = conn.getresponse()
    assert created.status == 201
    server.admin_token = json.loads(created.read())["token"]
    conn.close()
    return server


def head(port: int, path: str) -> bytes:
    """A HEAD request, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=SAFETY_S) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("path, status", GET_ROUTES)
@pytest_twisted.ensureDeferred
async def test_head_answers_the_headers_and_ends_at_once(routes_server, path, status):
    answer = await threads.deferToThread(head, routes_server.port, path)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] == str(status).encode(), answer
    assert rest.endswith(b"\r\n\r\n"), answer  # the head and nothing after it


@pytest.mark.parametrize("path, status", [r for r in GET_ROUTES if "stream" not in r[0]])
@pytest_twisted.ensureDeferred
async def test_access_token_is_accepted_on_every_get_route(routes_server, path, status):
    path = path.replace("timeout=300", "timeout=0")
    token = routes_server.admin_token
    r = await get(routes_server.url(path + ("&" if "?" in path else "?") + f"access_token={token}"))
    assert r.code == status, r
    # ... and it is a token like any other: with it, an unknown parameter is still a 400.
    r = await get(routes_server.url(path + ("&" if "?" in path else "?") + f"access_token={token}&extra=1"))
    assert r.code == 400 and "'extra'" in r.json()["error"], r


@pytest.mark.parametrize("path", [p for p, _ in GET_ROUTES])
@pytest_twisted.ensureDeferred
async def test_an_unknown_query_parameter_is_refused_on_every_get_route(routes_server, path):
    r = await get(routes_server.url(path + ("&" if "?" in path else "?") + "Access_Token=t"))
    assert r.code == 400, r
    assert "'Access_Token'" in r.json()["error"]


@pytest_twisted.ensureDeferred
async def test_a_subscription_start_is_quoted_as_sent(routes_server):
    body = (b'{"context": "routes", "channel": "x", "url": "http://example.com/",'
            b' "start": 100000000000000000000000}')
    r = await request("POST", routes_server.url("/subscriptions"), data=body)
    assert r.code == 400, r
    assert json.loads(r.body)["error"].endswith("got 100000000000000000000000")
