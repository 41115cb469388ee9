"""Access control against real server processes: modes, the ways to present a
token, scopes and issuers, the token command line while a server runs, the
per-client cap, expiry of open streams, CORS, and no secret in any log."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer

from eventbus import auth
from tests.client import get, publish, request
from tests.servers import ServerProcess
from tests.sse_client import open_stream, sleep, until
from tests.tokens import bearer, call, create_token, token_cli_async

#: Generous deadlines for what must happen "within 2 s" (a loaded machine).
DEADLINE_S = 15.0
ORIGIN = "https://app.example.com"
CAP = 3


@pytest.fixture(scope="module")
def secure(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with --auth required, a cap of 3 held requests, one CORS origin
    and its access log in a file."""
    workdir = tmp_path_factory.mktemp("auth")
    proc = ServerProcess(["--dsn", dsn, "--auth", "required", "--max-held-per-client", str(CAP),
                          "--cors-origin", ORIGIN, "--access-log", str(workdir / "access.log")],
                         workdir)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(secure: ServerProcess, dsn: str) -> str:
    return pytest_twisted.blockon(defer.ensureDeferred(
        create_token(f"admin-{secure.port}", "admin", dsn=dsn)))


async def api_token(server: ServerProcess, admin: str, name: str, scopes: list[str], **more) -> str:
    r = await call("POST", server.url("/tokens"), admin, json_body={"name": name, "scopes": scopes, **more})
    assert r.code == 201, r
    return r.json()["token"]


@pytest_twisted.ensureDeferred
async def test_required_mode_asks_loopback_for_a_token_but_not_for_health(secure, channel_name):
    r = await publish(secure.base, "auth", channel_name, {"a": 1})
    assert r.code == 401 and "token" in r.json()["error"]
    assert r.header("WWW-Authenticate") == 'Bearer realm="eventbus"'
    r = await call("GET", secure.url(f"/events/auth/{channel_name}"), auth.new_token())
    assert r.code == 401
    assert r.header("WWW-Authenticate") == 'Bearer realm="eventbus", error="invalid_token"'
    assert (await get(secure.url("/health"))).code == 200


@pytest_twisted.ensureDeferred
async def test_scopes_and_issuers_over_http(secure, admin, channel_name):
    token = await api_token(secure, admin, f"pub-{channel_name}",
                            [f"publish:auth/{channel_name}", "read:auth/*"], issuers=["JERPi"])
    url = secure.url(f"/events/auth/{channel_name}")
    r = await call("POST", url, token, json_body={"a": 1})
    assert r.code == 201 and r.json()["issuer"] == "JERPi"
    r = await call("POST", url, token, json_body={"a": 1}, headers={"X-EVENT-ISSUER": "Mallory"})
    assert r.code == 403 and "Mallory" in r.json()["error"]
    r = await call("POST", secure.url("/events/auth/elsewhere"), token, json_body={"a": 1})
    assert r.code == 403 and r.json()["error"].endswith("publish:auth/elsewhere")
    r = await call("PUT", secure.url(f"/consumers/auth/{channel_name}/c"), token, json_body={})
    assert r.code == 403 and "manage:auth/" + channel_name in r.json()["error"]
    r = await call("GET", url, token)
    assert r.code == 200 and len(r.json()) == 1
    assert r.header("Cache-Control") == "private, no-store"


@pytest_twisted.ensureDeferred
async def test_each_way_of_presenting_a_token(secure, admin, channel_name):
    reader = await api_token(secure, admin, f"r-{channel_name}", [f"read:auth/{channel_name}"])
    url = secure.url(f"/events/auth/{channel_name}")
    assert (await request("GET", url, headers=bearer(reader))).code == 200
    assert (await request("GET", url, headers={"Cookie": f"eventbus_token={reader}"})).code == 200
    assert (await request("GET", f"{url}?access_token={reader}")).code == 200
    r = await request("POST", f"{url}?access_token={reader}", json_body={"a": 1},
                      headers={"X-EVENT-ISSUER": "t"})
    assert r.code == 400
    # EventSource can only use the query parameter (or the cookie)
    stream = await open_stream(secure.port, f"/events/auth/{channel_name}/stream?access_token={reader}")
    try:
        await until(lambda: stream.status is not None, DEADLINE_S, "the stream's answer")
        assert stream.status == 200
        assert stream.headers["cache-control"] == "private, no-store"
    finally:
        await stream.close()


@pytest_twisted.ensureDeferred
async def test_the_token_command_line_round_trip_while_a_server_runs(secure, dsn, channel_name):
    name = f"cli-{channel_name}"
    token = await create_token(name, f"publish:auth/{channel_name}", dsn=dsn, extra=("--issuer", "CI"))
    url = secure.url(f"/events/auth/{channel_name}")
    # usable at once: the server has not necessarily heard the notification yet
    r = await call("POST", url, token, json_body={"n": 1})
    assert r.code == 201 and r.json()["issuer"] == "CI"
    listed = await token_cli_async("list", "--json", dsn=dsn)
    [mine] = [t for t in json.loads(listed.stdout) if t["name"] == name]
    assert mine["scopes"] == [f"publish:auth/{channel_name}"] and mine["issuers"] == ["CI"]
    assert token not in listed.stdout and auth.digest(token) not in listed.stdout
    table = (await token_cli_async("list", dsn=dsn)).stdout
    assert name in table and "LAST USED" in table
    revoked = await token_cli_async("revoke", name, dsn=dsn)
    assert revoked.stdout == "" and name in revoked.stderr
    deadline = time.monotonic() + DEADLINE_S
    while (await call("POST", url, token, json_body={"n": 2})).code != 401:
        assert time.monotonic() < deadline, "the revoked token still works"
        await sleep(0.05)
    again = await token_cli_async("revoke", name, dsn=dsn, check=False)
    assert again.returncode != 0 and "no token" in again.stderr
    dup = await token_cli_async("create", "x y", "--scope", "read:a/b", dsn=dsn, check=False)
    assert dup.returncode != 0 and dup.stdout == ""


@pytest_twisted.ensureDeferred
async def test_a_client_over_its_cap_of_held_requests_gets_429_with_retry_after(secure, admin, channel_name):
    reader = await api_token(secure, admin, f"cap-{channel_name}", ["read:auth/*"])
    other = await api_token(secure, admin, f"cap2-{channel_name}", ["read:auth/*"])
    path = f"/events/auth/{channel_name}"
    streams = [await open_stream(secure.port, f"{path}/stream", bearer(reader)) for _ in range(CAP)]
    try:
        for s in streams:
            await until(lambda s=s: s.status == 200, DEADLINE_S, "a stream to open")
        r = await call("GET", secure.url(f"{path}?peek=0&timeout=1"), reader)
        assert r.code == 429 and r.header("Retry-After") is not None and int(r.header("Retry-After")) > 0
        assert "error" in r.json()
        extra = await open_stream(secure.port, f"{path}/stream", bearer(reader))
        await until(lambda: extra.status is not None, DEADLINE_S, "the refusal")
        assert extra.status == 429
        await extra.close()
        # another token is another client; non-held requests are not counted
        assert (await call("GET", secure.url(f"{path}?peek=0&timeout=0.1"), other)).code == 204
        assert (await call("GET", secure.url(path), reader)).code == 200
        await streams.pop().close()
        deadline = time.monotonic() + DEADLINE_S
        while (await call("GET", secure.url(f"{path}?peek=0&timeout=0.1"), reader)).code != 204:
            assert time.monotonic() < deadline, "the cap was not given back"
            await sleep(0.05)
    finally:
        for s in streams:
            await s.close()


@pytest_twisted.ensureDeferred
async def test_an_expiring_token_ends_its_stream_and_its_held_peek(secure, dsn, channel_name):
    token = await create_token(f"exp-{channel_name}", "read:auth/*", dsn=dsn, extra=("--expires", "3"))
    path = f"/events/auth/{channel_name}"
    stream = await open_stream(secure.port, f"{path}/stream", bearer(token))
    peek = defer.ensureDeferred(call("GET", secure.url(f"{path}?peek=0&timeout=120"), token))
    try:
        await until(lambda: stream.status == 200, DEADLINE_S, "the stream to open")
        await until(lambda: stream.lost.called, DEADLINE_S + 3, "the stream to end at expiry")
        [message] = [m for m in stream.messages if m.event == "error"]
        assert json.loads(message.data) == {"error": "token expired"}
        r = await peek
        assert r.code == 401 and r.json() == {"error": "token expired"}
        assert r.header("WWW-Authenticate") == 'Bearer realm="eventbus", error="invalid_token"'
        assert (await call("GET", secure.url(path), token)).code == 401
    finally:
        await stream.close()


@pytest_twisted.ensureDeferred
async def test_a_real_cors_preflight_and_the_headers_on_answers(secure, admin, channel_name):
    url = secure.url(f"/events/auth/{channel_name}")
    r = await request("OPTIONS", url, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-event-issuer"})
    assert r.code == 204
    assert r.header("Access-Control-Allow-Origin") == ORIGIN
    assert r.header("Access-Control-Allow-Credentials") == "true"
    allowed = r.header("Access-Control-Allow-Headers").lower()
    for name in ("authorization", "content-type", "x-event-issuer", "last-event-id", "idempotency-key"):
        assert name in allowed
    assert "POST" in r.header("Access-Control-Allow-Methods")
    token = await api_token(secure, admin, f"cors-{channel_name}", [f"publish:auth/{channel_name}"])
    r = await call("POST", url, token, json_body={"a": 1}, headers={"Origin": ORIGIN, "X-EVENT-ISSUER": "w"})
    assert r.code == 201 and r.header("Access-Control-Allow-Origin") == ORIGIN
    assert "Location" in r.header("Access-Control-Expose-Headers")
    r = await call("GET", url, None, headers={"Origin": ORIGIN})  # errors too, so the app can read them
    assert r.code == 401 and r.header("Access-Control-Allow-Origin") == ORIGIN
    for other in ("https://evil.example", "null"):
        r = await request("OPTIONS", url, headers={"Origin": other, "Access-Control-Request-Method": "POST"})
        assert r.header("Access-Control-Allow-Origin") is None
        r = await call("POST", url, token, json_body={"a": 1}, headers={"Origin": other, "X-EVENT-ISSUER": "w"})
        assert r.code == 201 and r.header("Access-Control-Allow-Origin") is None


@pytest_twisted.ensureDeferred
async def test_local_mode_serves_loopback_without_a_token_unless_proxied(server, channel_name):
    url = server.url(f"/events/auth/{channel_name}")
    assert (await publish(server.base, "auth", channel_name, {"a": 1})).code == 201
    for header in ("Forwarded", "X-Forwarded-For", "X-Real-IP"):
        r = await request("GET", url, headers={header: "for=203.0.113.9"})
        assert r.code == 401, header
    assert (await call("GET", url, auth.new_token())).code == 401
    assert (await get(server.url("/health"), headers={"X-Forwarded-For": "203.0.113.9"})).code == 200


@pytest_twisted.ensureDeferred
async def test_no_token_nor_its_digest_in_any_log_line(secure, admin, dsn, channel_name):
    """Every way a token reaches the server, then the logs are searched (runs
    after the others in this module, so their tokens are searched for too)."""
    token = await create_token(f"log-{channel_name}", "read:auth/*", "publish:auth/*", dsn=dsn)
    path = f"/events/auth/{channel_name}"
    await call("POST", secure.url(path), token, json_body={"a": 1}, headers={"X-EVENT-ISSUER": "l"})
    await request("GET", secure.url(f"{path}?access_token={token}&limit=5"),
                  headers={"Referer": f"https://app/?access_token={token}"})
    await request("GET", secure.url(path), headers={"Cookie": f"eventbus_token={token}"})
    await request("GET", secure.url(f"/tokens/{token}"), headers=bearer(admin))
    await request("GET", secure.url(f"/events/{token}/x"), headers=bearer(token))
    await call("GET", secure.url(path), token + "x")
    stream = await open_stream(secure.port, f"{path}/stream?after=0&access_token={token}")
    await until(lambda: stream.messages, DEADLINE_S, "the stream's first event")
    await stream.close()
    await call("DELETE", secure.url(f"/tokens/log-{channel_name}"), admin)
    await call("GET", secure.url(f"{path}?access_token={token}"))
    access_log = Path(secure.workdir) / "access.log"
    marker = "limit=5"
    await until(lambda: access_log.exists() and marker in access_log.read_text(), DEADLINE_S,
                "the access log to be written")
    await sleep(0.5)  # the batched access log writes every 0.2 s
    logs = access_log.read_text() + secure.log_path.read_text()
    assert "access_token=[redacted]" in logs
    assert "Traceback" not in secure.log_path.read_text()  # nothing above failed inside the server
    for secret in (token, admin):
        assert secret not in logs
        assert auth.digest(secret) not in logs
        assert secret[4:20] not in logs


@pytest_twisted.ensureDeferred
async def test_the_command_line_shares_the_embedded_database_of_a_running_server(tmp_path, channel_name):
    data_dir = tmp_path / "data"
    server = ServerProcess(["--data-dir", str(data_dir), "--auth", "required"], tmp_path).start()
    try:
        token = await create_token("embedded", "publish:*/*", data_dir=str(data_dir))
        r = await call("POST", server.url(f"/events/auth/{channel_name}"), token, json_body={"a": 1},
                       headers={"X-EVENT-ISSUER": "e"})
        assert r.code == 201, r
        await token_cli_async("revoke", "embedded", data_dir=str(data_dir))
        # the command's exit left the server's PostgreSQL running
        assert (await get(server.url("/health"))).code == 200
        deadline = time.monotonic() + DEADLINE_S
        while (await call("GET", server.url(f"/events/auth/{channel_name}"), token)).code != 401:
            assert time.monotonic() < deadline, "the revoked token still works"
            await sleep(0.05)
    finally:
        assert server.stop() == 0
