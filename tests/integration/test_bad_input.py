"""Bad input of every kind, against a real server: a JSON 4xx, never a 500.

Each table row is one request and the status it must get.  Every bad publish
aims at one channel, ``TARGET``, and the last test proves it holds nothing:
bad input never stores an event (and, ids being gap-free, never uses one up).

Requests that treq will not send (raw bytes in the request line or a header,
broken framing) are written byte for byte on a socket in a thread.
"""
from __future__ import annotations

import http.client
import json
import socket
import uuid
from typing import Any, Iterator, Optional, Sequence

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.web.http_headers import Headers

from tests.client import Response, get, publish, request
from tests.servers import ServerProcess

CTX = "badinput"
#: The one channel every bad publish below aims at (unique per run: the
#: database is shared by the whole session).
TARGET = f"target-{uuid.uuid4().hex[:12]}"
BASE = f"/events/{CTX}/{TARGET}"
GOOD_BODY = b'{"good": true}'
ISSUER = {"X-EVENT-ISSUER": "bad-input-tests"}
#: The --max-body of the second server.
SMALL_MAX_BODY = 1000
#: Safety net for raw sockets: a refusal that never comes fails the test
#: instead of hanging it.  Not a timing assertion.
RAW_IO_TIMEOUT_S = 30.0


# -- helpers -------------------------------------------------------------------
def assert_json_error(r: Response, status: int) -> str:
    """The response is the given error status with a JSON ``{"error": "..."}``."""
    assert r.code != 500, r
    assert r.code == status, r
    content_type = r.header("Content-Type") or ""
    assert content_type.split(";")[0].strip() == "application/json", r
    body = json.loads(r.body)
    assert isinstance(body, dict), r
    assert isinstance(body.get("error"), str) and body["error"].strip(), r
    return body["error"]


def raw_request(method: bytes, target: bytes, headers: Sequence[bytes] = (),
                body: bytes = b"") -> bytes:
    """A request exactly as written; framing headers are the caller's."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1",
             b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def length(body: bytes) -> bytes:
    return b"Content-Length: %d" % len(body)


def _exchange(port: int, data: bytes) -> Response:
    """Write ``data`` on a fresh connection and parse the answer (blocking)."""
    with socket.create_connection(("127.0.0.1", port), timeout=RAW_IO_TIMEOUT_S) as sock:
        sock.sendall(data)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
    headers = Headers()
    for name, value in answer.getheaders():
        headers.addRawHeader(name, value)
    return Response(answer.status, headers, body)


async def raw(server: ServerProcess, data: bytes) -> Response:
    return await threads.deferToThread(_exchange, server.port, data)


def _case(id: str, method: str, path: str, status: int, *,
          headers: Optional[dict[str, Any]] = None, body: Optional[bytes] = None) -> Any:
    return pytest.param(method, path, headers, body, status, id=id)


# -- the table -------------------------------------------------------------------
def _body_cases() -> Iterator[Any]:
    """POST BASE with a valid issuer and a bad body: 400."""
    bodies = {
        "empty": b"",
        "whitespace only": b" \r\n\t ",
        "not json": b"not json",
        "truncated object": b'{"a": 1',
        "trailing comma": b'{"a": 1,}',
        "single quotes": b"{'a': 1}",
        "two documents": b'{"a": 1} {"b": 2}',
        "trailing garbage": b'{"a": 1}x',
        "trailing NUL": b'{"a": 1}\x00',
        "NaN": b"NaN",
        "Infinity": b"Infinity",
        "-Infinity": b"-Infinity",
        "NaN in object": b'{"x": NaN}',
        "Infinity in object": b'{"x": Infinity}',
        "-Infinity in object": b'{"x": -Infinity}',
        "1e400": b'{"x": 1e400}',
        "-1e400": b'{"x": -1e400}',
        "1e400 alone": b"1e400",
        "400-digit integer": b'{"x": ' + b"9" * 400 + b"}",
        "array of numbers": b"[1, 2]",
        "array with a non-object": b'[{"a": 1}, "x"]',
        "array of arrays": b'[[{"a": 1}]]',
        "empty array": b"[]",
        "array with NaN inside": b'[{"a": NaN}]',
        "string": b'"a string"',
        "number": b"42",
        "fraction": b"1.5",
        "null": b"null",
        "true": b"true",
        "false": b"false",
        "invalid UTF-8 in a string": b'{"a": "\xff"}',
        "invalid UTF-8 before the object": b'\xff\xfe{"a": 1}',
        "overlong UTF-8": b'{"a": "\xc0\xaf"}',
        "UTF-8 encoded surrogate": b'{"a": "\xed\xa0\x80"}',
        "truncated UTF-8 sequence": b'{"a": "\xe2\x82"}',
        "UTF-16": '{"a": 1}'.encode("utf-16"),
        "UTF-8 BOM": b'\xef\xbb\xbf{"a": 1}',
        "lone high surrogate escape": b'{"a": "\\ud800"}',
        "lone low surrogate escape": b'{"a": "\\udc00"}',
        "raw NUL in a string": b'{"a": "\x00"}',
        "raw control character in a string": b'{"a": "\x01"}',
        "nesting deeper than the parser allows": b'{"a":' * 2000 + b"1" + b"}" * 2000,
        "nesting one level over the limit": b'{"a":' + b"[" * 100 + b"]" * 100 + b"}",
        "batch nested 954 deep (was a 500)": b'[{"a":' + b"[" * 954 + b"]" * 954 + b"}]",
        "batch with an event one level over the limit":
            b'[{"ok": 1}, {"a":' + b"[" * 100 + b"]" * 100 + b"}]",
        "batch nested deeper than the parser allows": b"[" + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"]",
        "a member name twice": b'{"a": 1, "a": 2}',
        "a member name twice, once escaped": b'{"a": 1, "\\u0061": 2}',
        "a member name twice in a nested object": b'{"x": {"b": 1, "b": 1}}',
        "a member name twice behind an escaped colon": b'{"s": "\\u003a", "b": 1, "b": 2}',
        "a member name twice in one event of a batch": b'[{"a": 1}, {"c": 1, "c": 2}]',
        "form data": b"a=1&b=2",
    }
    for name, body in bodies.items():
        yield _case(f"body: {name}", "POST", BASE, 400, headers=ISSUER, body=body)
    yield _case("body: none at all", "POST", BASE, 400, headers=ISSUER)
    yield _case("body: form data with a form content type", "POST", BASE, 400,
                headers={**ISSUER, "Content-Type": "application/x-www-form-urlencoded"},
                body=b"a=1&b=2")


def _issuer_cases() -> Iterator[Any]:
    """POST BASE with a good body and a bad issuer: 400."""
    issuers: dict[str, dict[str, Any]] = {
        "missing": {},
        "empty": {"X-EVENT-ISSUER": ""},
        "whitespace only": {"X-EVENT-ISSUER": "   "},
        "129 characters": {"X-EVENT-ISSUER": "i" * 129},
        "129 non-ASCII characters": {"X-EVENT-ISSUER": ("\u00e9" * 129).encode()},
        "invalid UTF-8": {"X-EVENT-ISSUER": b"\xff\xfe"},
        "truncated UTF-8": {"X-EVENT-ISSUER": b"abc\xe2\x82"},
        "control character": {"X-EVENT-ISSUER": "a\x01b"},
        "DEL character": {"X-EVENT-ISSUER": "a\x7fb"},
        "escape sequence": {"X-EVENT-ISSUER": "a\x1b[31mb"},
        "legacy header empty": {"X-JISS-ISSUER": ""},
        "legacy header 129 characters": {"X-JISS-ISSUER": "i" * 129},
        "legacy header invalid UTF-8": {"X-JISS-ISSUER": b"\xff"},
        "empty with a good legacy header": {"X-EVENT-ISSUER": "", "X-JISS-ISSUER": "ok"},
        "given twice, different values": {"X-EVENT-ISSUER": ["a", "b"]},
        "and its alias, different values": {"X-EVENT-ISSUER": "a", "X-JISS-ISSUER": "b"},
        "alias given twice, different values": {"X-JISS-ISSUER": ["a", "b"]},
    }
    for name, headers in issuers.items():
        yield _case(f"issuer: {name}", "POST", BASE, 400, headers=headers, body=GOOD_BODY)


#: Names (as they appear, percent-encoded, in the URL) that must be refused.
BAD_NAMES = {
    "129 characters": "n" * 129,
    "space": "a%20b",
    "plus": "a+b",
    "asterisk": "a*b",
    "percent": "a%25b",
    "double quote": "a%22b",
    "apostrophe": "a'b",
    "comma": "a,b",
    "semicolon": "a;b",
    "equals": "a=b",
    "at sign": "a@b",
    "tilde": "a~b",
    "non-ASCII letter": "caf%C3%A9",
    "non-ASCII digit": "%D9%A1",
    "NUL": "a%00b",
    "tab": "a%09b",
    "trailing newline": "ab%0A",
    "encoded slash": "a%2Fb",
    "encoded backslash": "a%5Cb",
    "invalid UTF-8": "%FF",
    "overlong UTF-8": "%C0%AF",
    "UTF-8 encoded surrogate": "%ED%A0%80",
    # Only dots: a client that normalises URLs resolves "." and ".." away
    # (the raw forms are in RAW_BAD_REQUESTS: treq would normalise them).
    "encoded dot": "%2E",
    "encoded dot dot": "%2e%2e",
    "three dots": "...",
    "half-encoded dot dot": ".%2E",
}


def _name_cases() -> Iterator[Any]:
    for name, bad in BAD_NAMES.items():
        yield _case(f"publish context: {name}", "POST", f"/events/{bad}/{TARGET}", 400,
                    headers=ISSUER, body=GOOD_BODY)
        yield _case(f"publish channel: {name}", "POST", f"/events/{CTX}/{bad}", 400,
                    headers=ISSUER, body=GOOD_BODY)
        yield _case(f"history channel: {name}", "GET", f"/events/{CTX}/{bad}", 400)
        yield _case(f"peek channel: {name}", "GET",
                    f"/events/{CTX}/{bad}?peek=0&timeout=0", 400)
        yield _case(f"single event context: {name}", "GET", f"/events/{bad}/{TARGET}/1", 400)


def _query_cases() -> Iterator[Any]:
    """GET BASE with bad query parameters: 400."""
    queries = [
        *(f"peek={v}" for v in ["-1", "abc", "", "1.5", "%2B1", "%201", "1e3", "0x10",
                                "99999999999999999999", "9223372036854775807",
                                "%D9%A1", "%FF"]),
        "peek",
        "peek=0;timeout=0",
        *(f"peek=0&timeout={v}" for v in ["301", "-1", "abc", "", "nan", "inf", "1e3",
                                          "300.000000001", "0x1", "%FF"]),
        *(f"timeout={v}" for v in ["abc", "301", "-1"]),
        *(f"limit={v}" for v in ["0", "-5", "abc", "", "1.5", "99999999999999999999",
                                 "9223372036854775808", "%FF"]),
        "limit=0&peek=0&timeout=0",
        # (an instant before 1970 selects everything: not an error since issue 11)
        *(f"start={v}" for v in ["abc", "-1", "", "1e12", "nan", "inf",
                                 "253402300800", "2024-13-01", "2024-01-01T25:00:00",
                                 "%FF"]),
        "start=0&peek=0",
        "peek=0&start=2024-01-01T00:00:00Z",
        "peek=0&peek=1",
        "limit=1&limit=1",
        "start=0&start=0",
        "peek=0&timeout=1&timeout=1",
        "%FF=1",
        "peek=0&timeout=0&%FF",
        # Every parameter must be one this route takes, in this mode.
        "PEEK=1", "Peek=0", "peek=0&Timeout=5", "timeout=5", "limit=1&peek=0&timeout=0",
        "after=1", "peek=0&timeout=0&after=0", "x=1", "=1", "=", "limit=1&nope",
        # What a peek does behind retention: "error" or "earliest", with peek only.
        "peek=0&on_expired=latest", "peek=0&on_expired=", "peek=0&on_expired=EARLIEST",
        "on_expired=earliest", "limit=1&on_expired=earliest", "peek=0&on_expired=error&on_expired=error",
    ]
    for query in queries:
        yield _case(f"query: {query}", "GET", f"{BASE}?{query}", 400)
    # Other routes, with a parameter that belongs elsewhere or nowhere.
    for method, path in [("GET", f"{BASE}/stream?peek=0"), ("GET", f"{BASE}/stream?after=0&x=1"),
                         ("GET", f"{BASE}/1?limit=1"), ("GET", "/health?full=1"),
                         ("POST", f"{BASE}?wait=1"), ("POST", f"{BASE}?access_token=t"),
                         ("GET", f"/consumers/{CTX}/{TARGET}?mode=shared"),
                         ("POST", f"/consumers/{CTX}/{TARGET}/c/next?timeout=0&peek=0"),
                         ("GET", "/subscriptions?channel=x"),
                         ("GET", f"{BASE}/stream?on_expired=earliest"),
                         ("GET", f"/channels/{CTX}/{TARGET}?limit=1"),
                         ("PATCH", f"/channels/{CTX}/{TARGET}?max_age=1")]:
        yield _case(f"query: {method} {path}", method, path, 400, headers=ISSUER, body=GOOD_BODY)


def _not_found_cases() -> Iterator[Any]:
    for path in ["/", "/events", "/events/", f"/events/{CTX}", f"/events/{CTX}/",
                 f"{BASE}/", f"{BASE}/1/", f"{BASE}/1/extra", "/health/", "/healthz",
                 "/nope", f"/EVENTS/{CTX}/{TARGET}", f"/events//{TARGET}",
                 f"/events/{CTX}//1"]:
        yield _case(f"unknown path: GET {path}", "GET", path, 404)
    for path in ["/", "/nope", "/events", f"{BASE}/", f"/events//{TARGET}"]:
        yield _case(f"unknown path: POST {path}", "POST", path, 404,
                    headers=ISSUER, body=GOOD_BODY)
    for event_id in ["1", "abc", "0", "-1", "99999999999999999999", "1.0", "%201", "1e0"]:
        yield _case(f"no such event: {event_id}", "GET", f"{BASE}/{event_id}", 404)


BAD_REQUESTS = [*_body_cases(), *_issuer_cases(), *_name_cases(), *_query_cases(),
                *_not_found_cases()]


@pytest.mark.parametrize("method, path, headers, body, status", BAD_REQUESTS)
@pytest_twisted.ensureDeferred
async def test_bad_request_gets_a_json_error_never_a_500(server, method, path, headers,
                                                         body, status):
    r = await request(method, server.url(path), headers=headers, data=body)
    assert_json_error(r, status)


ALL_ALLOWED = {"GET", "POST"}
EVENT_ALLOWED = {"GET"}
HEALTH_ALLOWED = {"GET"}


@pytest.mark.parametrize("method, path, allowed", [
    *((m, BASE, ALL_ALLOWED) for m in ["PUT", "DELETE", "PATCH", "OPTIONS", "BREW"]),
    *((m, f"{BASE}/1", EVENT_ALLOWED) for m in ["POST", "PUT", "DELETE", "PATCH"]),
    *((m, "/health", HEALTH_ALLOWED) for m in ["POST", "PUT", "DELETE"]),
])
@pytest_twisted.ensureDeferred
async def test_wrong_method_gets_405_with_allow_header(server, method, path, allowed):
    # With a publishable body and issuer, so nothing but the method is wrong.
    r = await request(method, server.url(path), headers=ISSUER, data=GOOD_BODY)
    assert_json_error(r, 405)
    allow = {m.strip() for m in (r.header("Allow") or "").split(",")}
    assert allowed <= allow, r.header("Allow")
    assert method not in allow


#: Requests treq will not write; each must still get a JSON 400.
RAW_BAD_REQUESTS = [
    pytest.param(raw_request(b"GET", b"/events/" + CTX.encode() + b"/\xff"),
                 id="raw byte 0xFF in the path"),
    pytest.param(raw_request(b"GET", b"/events/" + CTX.encode() + b"/caf\xc3\xa9"),
                 id="raw non-ASCII UTF-8 in the path"),
    pytest.param(raw_request(b"GET", BASE.encode() + b"?peek=\xff"),
                 id="raw byte 0xFF in the query"),
    pytest.param(raw_request(b"GET", b"/events/" + CTX.encode() + b"/a b"),
                 id="space in the path"),
    pytest.param(raw_request(b"POST", b"/events/" + CTX.encode() + b"/..",
                             [b"X-EVENT-ISSUER: t", length(GOOD_BODY)], GOOD_BODY),
                 id="channel .. (unnormalised)"),
    pytest.param(raw_request(b"POST", b"/events/./" + TARGET.encode(),
                             [b"X-EVENT-ISSUER: t", length(GOOD_BODY)], GOOD_BODY),
                 id="context . (unnormalised)"),
    pytest.param(raw_request(b"PUT", b"/consumers/" + CTX.encode() + b"/" + TARGET.encode() + b"/..",
                             [length(b"{}")], b"{}"),
                 id="consumer name .. (unnormalised)"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: a", b"X-EVENT-ISSUER: b", length(GOOD_BODY)],
                             GOOD_BODY),
                 id="two issuer headers with different values"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: \xff\xfe", length(GOOD_BODY)], GOOD_BODY),
                 id="raw invalid UTF-8 issuer"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: a\x00b", length(GOOD_BODY)], GOOD_BODY),
                 id="NUL in the issuer"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: " + b"i" * 20000, length(GOOD_BODY)],
                             GOOD_BODY),
                 id="issuer of 20 KB"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: t", b"no colon here", length(GOOD_BODY)],
                             GOOD_BODY),
                 id="header line without a colon"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: t", b"Content-Length: abc"], GOOD_BODY),
                 id="non-numeric Content-Length"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: t", b"Content-Length: -1"], GOOD_BODY),
                 id="negative Content-Length"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: t", length(GOOD_BODY),
                              b"Content-Length: 3"], GOOD_BODY),
                 id="two different Content-Lengths"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: t", b"Transfer-Encoding: chunked"],
                             b"zz\r\n" + GOOD_BODY + b"\r\n0\r\n\r\n"),
                 id="bad chunk size"),
    pytest.param(raw_request(b"POST", BASE.encode(),
                             [b"X-EVENT-ISSUER: t", b"Transfer-Encoding: gzip"], GOOD_BODY),
                 id="unsupported Transfer-Encoding"),
]


@pytest.mark.parametrize("data", RAW_BAD_REQUESTS)
@pytest_twisted.ensureDeferred
async def test_malformed_raw_request_gets_a_json_400(server, data):
    assert_json_error(await raw(server, data), 400)


# -- --max-body -----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_server(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A second server on the same database with a tiny --max-body."""
    proc = ServerProcess(["--dsn", dsn, "--max-body", str(SMALL_MAX_BODY)],
                         tmp_path_factory.mktemp("small-server"))
    proc.start()
    yield proc
    proc.stop()


def object_of_size(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    body = b'{"x": "' + b"x" * (size - 9) + b'"}'
    assert len(body) == size
    return body


def chunked(*chunks: bytes, last: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return body + (b"0\r\n\r\n" if last else b"")


@pytest_twisted.ensureDeferred
async def test_content_length_body_over_max_body_is_refused_with_413(small_server):
    r = await request("POST", small_server.url(BASE), headers=ISSUER,
                      data=object_of_size(SMALL_MAX_BODY + 1), persistent=False)
    assert_json_error(r, 413)


@pytest_twisted.ensureDeferred
async def test_oversized_content_length_is_refused_before_the_body_arrives(small_server):
    # Announces 10 GB and sends a few bytes: the answer can only come if the
    # server refuses on the header instead of waiting for the body.
    head = [b"X-EVENT-ISSUER: t", b"Content-Length: 10000000000"]
    r = await raw(small_server, raw_request(b"POST", BASE.encode(), head, b'{"x": "'))
    assert_json_error(r, 413)


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_max_body_is_refused_with_413(small_server):
    head = [b"X-EVENT-ISSUER: t", b"Transfer-Encoding: chunked"]
    body = object_of_size(SMALL_MAX_BODY + 200)
    complete = chunked(body[:600], body[600:])
    r = await raw(small_server, raw_request(b"POST", BASE.encode(), head, complete))
    assert_json_error(r, 413)


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_max_body_is_refused_before_it_ends(small_server):
    # Never sends the last chunk: the 413 must come from the running total.
    head = [b"X-EVENT-ISSUER: t", b"Transfer-Encoding: chunked"]
    unfinished = chunked(*[b"x" * 100] * 15, last=False)
    r = await raw(small_server, raw_request(b"POST", BASE.encode(), head, unfinished))
    assert_json_error(r, 413)


@pytest_twisted.ensureDeferred
async def test_server_stays_healthy_after_413s_and_accepts_a_body_at_the_limit(
        small_server, channel_name):
    for _ in range(3):
        r = await request("POST", small_server.url(BASE), headers=ISSUER,
                          data=object_of_size(SMALL_MAX_BODY * 5), persistent=False)
        assert_json_error(r, 413)
    health = await get(small_server.url("/health"))
    assert health.code == 200 and health.json() == {"status": "ok"}
    at_limit = object_of_size(SMALL_MAX_BODY)
    r = await request("POST", small_server.url(f"/events/{CTX}/{channel_name}"),
                      headers=ISSUER, data=at_limit)
    assert r.code == 201, r
    assert r.json()["payload"] == json.loads(at_limit)
    chunked_at_limit = chunked(at_limit[:500], at_limit[500:])
    r = await raw(small_server, raw_request(
        b"POST", f"/events/{CTX}/{channel_name}".encode(),
        [b"X-EVENT-ISSUER: t", b"Transfer-Encoding: chunked"], chunked_at_limit))
    assert r.code == 201, r
    assert r.json()["id"] == 2


# -- nothing was stored ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_bad_input_stored_nothing_and_a_good_publish_still_works(server):
    """Runs last in this module: every bad publish above aimed at TARGET."""
    history = await get(server.url(BASE))
    assert history.code == 200 and history.json() == [], history
    assert (await get(server.url(f"{BASE}/1"))).code == 404
    assert (await get(server.url(f"{BASE}?peek=0&timeout=0"))).code == 204
    r = await publish(server.base, CTX, TARGET, {"good": True})
    assert r.code == 201, r
    # Ids are gap-free and a failed publish gives its id back: 1 proves no
    # bad request got as far as the database.
    assert r.json()["id"] == 1
    assert r.json()["payload"] == {"good": True}
    longest = ("n" * 128)[: 128 - len(TARGET)] + TARGET
    r = await publish(server.base, "c" * 128, longest, {"good": True}, issuer="i" * 128)
    assert r.code == 201, r
    assert r.json()["channel"] == longest and r.json()["issuer"] == "i" * 128
