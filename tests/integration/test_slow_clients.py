"""Slow clients against real server processes: a request has
``--request-timeout`` to arrive, and trickling connections cannot shut
other clients out, even with more of them than the server has descriptors.

Everything here is blocking sockets and ``http.client`` (no reactor): the
point is bytes on the wire at a pace the test chooses.  Durations in these
tests are the *client's* pace (slower than the server's deadline); what is
asserted is what the server answered, never how fast.  Each wait has a
safety net so a server that never answers fails the test instead of
hanging it.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.servers import ServerProcess

#: The servers' --request-timeout, seconds.
DEADLINE_S = 2
#: Time between two trickled bytes: each one would reset an idle timeout.
TRICKLE_EVERY_S = 0.25
#: Safety net: a socket the server has not closed after this long fails the
#: test (many times the deadline; not a timing assertion).
SAFETY_S = 60.0
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def slow_server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn, "--request-timeout", str(DEADLINE_S)],
                         tmp_path_factory.mktemp("slow-server"))
    proc.start()
    yield proc
    proc.stop()


def trickle_until_closed(port: int, first: bytes, then: bytes) -> bytes:
    """Send ``first``, then ``then`` one byte at a time, for ever (cycling),
    until the server closes the connection; what the server sent."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=SAFETY_S) as sock:
        sock.sendall(first)
        deadline = time.monotonic() + SAFETY_S
        i = 0
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], TRICKLE_EVERY_S)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    return answer
                if not data:
                    return answer
                answer += data
                continue
            try:
                sock.send(then[i % len(then):i % len(then) + 1])
            except (BrokenPipeError, ConnectionResetError):
                return answer
            i += 1
    raise AssertionError(f"the server kept a trickling connection for {SAFETY_S} s; it sent {answer!r}")


def assert_408(answer: bytes) -> None:
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer
    head, _, body = rest.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, answer
    assert "did not arrive" in json.loads(body)["error"]


def test_a_request_head_trickled_byte_by_byte_gets_a_408_and_is_closed(slow_server):
    # Header bytes for ever: without a deadline on the whole head, each
    # byte would restart twisted.web's idle timeout.
    answer = trickle_until_closed(slow_server.port, HEAD, b"X-Slow: " + b"a" * 64 + b"\r\n")
    assert_408(answer)


def test_a_request_body_trickled_byte_by_byte_gets_a_408_and_is_closed(slow_server):
    head = (b"POST /events/slow/body HTTP/1.1\r\nHost: 127.0.0.1\r\nX-EVENT-ISSUER: t\r\n"
            b"Content-Length: 100000\r\n\r\n")
    answer = trickle_until_closed(slow_server.port, head, b'{"x": "' + b"a" * 64)
    assert_408(answer)
    conn = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=SAFETY_S)
    conn.request("GET", "/events/slow/body")
    assert json.loads(conn.getresponse().read()) == []  # nothing was stored


def _get(conn: http.client.HTTPConnection, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn.request(method, path)
    response = conn.getresponse()
    return response.status, response.read()


def test_each_request_of_a_keep_alive_connection_gets_its_own_deadline(slow_server):
    conn = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=SAFETY_S)
    assert _get(conn, "/health")[0] == 200
    time.sleep(DEADLINE_S * 1.5)  # idle between requests: not a slow request
    assert _get(conn, "/health")[0] == 200
    conn.close()


@pytest.mark.parametrize("method, path", [
    ("GET", f"/events/slow/held?peek=0&timeout={DEADLINE_S * 2}"),
    ("POST", f"/consumers/slow/held/c/next?timeout={DEADLINE_S * 2}"),
])
def test_held_answers_may_outlast_the_request_timeout(slow_server, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=SAFETY_S)
    status, body = _get(conn, path, method)
    assert status == 204, body  # held for its own timeout, then answered
    assert _get(conn, "/health")[0] == 200  # and the connection is still good
    conn.close()


def test_an_sse_stream_stays_open_past_the_request_timeout(slow_server):
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=SAFETY_S) as sock:
        sock.sendall(b"GET /events/slow/stream/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        opening = sock.recv(65536)
        assert opening.startswith(b"HTTP/1.1 200 OK"), opening
        time.sleep(DEADLINE_S * 1.5)
        conn = http.client.HTTPConnection("127.0.0.1", slow_server.port, timeout=SAFETY_S)
        conn.request("POST", "/events/slow/stream", body=b'{"after": "deadline"}',
                     headers={"X-EVENT-ISSUER": "t"})
        assert conn.getresponse().status == 201
        received = b""
        while b"deadline" not in received:
            data = sock.recv(65536)
            assert data, f"the stream was closed; it sent {opening + received!r}"
            received += data


# -- more trickling connections than descriptors ----------------------------------
#: The crowded server's ``ulimit -n``, and how many trickling connections
#: the test opens (more than the server can hold).
OPEN_FILES = 192
TRICKLERS = 260


class Tricklers:
    """Many connections that each trickle an endless request head, from one thread."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.open: list[socket.socket] = []
        self.answers: dict[int, bytes] = {}
        self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=SAFETY_S)
            sock.sendall(HEAD)
            sock.setblocking(False)
            self.open.append(sock)
        self._thread.start()

    def _run(self) -> None:
        while self.open and not self._stop.is_set():
            readable, _, _ = select.select(self.open, [], [], TRICKLE_EVERY_S)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if data:
                    self.answers[id(sock)] = self.answers.get(id(sock), b"") + data
                else:
                    self._close(sock)
            for sock in list(self.open):
                try:
                    sock.send(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    self._close(sock)
                except BlockingIOError:
                    pass

    def _close(self, sock: socket.socket) -> None:
        if sock in self.open:
            self.open.remove(sock)
            self.closed += 1
            sock.close()

    def done(self) -> bool:
        return not self.open

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(SAFETY_S)
        for sock in self.open:
            sock.close()


@pytest.fixture
def crowded_server(dsn: str, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn, "--request-timeout", str(DEADLINE_S), "--access-log", "off"],
                         tmp_path, open_files=OPEN_FILES)
    proc.start()
    yield proc
    proc.stop()


def health(port: int) -> Optional[int]:
    """One /health on a new connection; None if the connection failed."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SAFETY_S)
        conn.request("GET", "/health")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def test_health_answers_while_tricklers_outnumber_descriptors_and_they_are_closed(crowded_server):
    tricklers = Tricklers(crowded_server.port, TRICKLERS)
    tricklers.start()
    try:
        answers = []
        safety = time.monotonic() + SAFETY_S
        while not tricklers.done():
            assert time.monotonic() < safety, (
                f"{len(tricklers.open)} trickling connections still open after {SAFETY_S} s")
            answers.append(health(crowded_server.port))
            time.sleep(0.1)
        # Every /health got its 200 while the tricklers held on, and every
        # trickler was closed: the oldest to make room, the rest by the deadline.
        assert answers and set(answers) == {200}, answers
        assert tricklers.closed == TRICKLERS
        timed_out = [a for a in tricklers.answers.values() if a.startswith(b"HTTP/1.1 408")]
        assert timed_out, "no trickler got a 408"
        assert health(crowded_server.port) == 200
    finally:
        tricklers.stop()
