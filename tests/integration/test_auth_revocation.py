"""Revocation across server processes: a token revoked through one process
stops working in another within seconds, and the requests it holds open
there (an SSE stream, a long-poll peek, a consumer's next) are cut."""
from __future__ import annotations

import json
import time
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.servers import ServerProcess
from tests.sse_client import open_stream, sleep, until
from tests.tokens import bearer, call, create_token

#: Generous: the promise is 2 s; a loaded machine must not fail the test.
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def pair(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    workdir = tmp_path_factory.mktemp("revocation")
    procs = [ServerProcess(["--dsn", dsn, "--auth", "required"], workdir) for _ in range(2)]
    for p in procs:
        p.start()
    yield procs
    for p in procs:
        p.stop()


@pytest_twisted.ensureDeferred
async def test_a_token_revoked_through_one_process_is_cut_everywhere_in_the_other(pair, dsn, channel_name):
    a, b = pair
    admin = await create_token(f"admin-{channel_name}", "admin", dsn=dsn)
    created = await call("POST", a.url("/tokens"), admin, json_body={
        "name": f"reader-{channel_name}", "scopes": ["read:rev/*", "consume:rev/*"]})
    assert created.code == 201
    token = created.json()["token"]
    path = f"/events/rev/{channel_name}"
    # Created through A, used at once through B.
    assert (await call("GET", b.url(path), token)).code == 200
    stream = await open_stream(b.port, f"{path}/stream", bearer(token))
    peek = defer.ensureDeferred(call("GET", b.url(f"{path}?peek=0&timeout=120"), token))
    nxt = defer.ensureDeferred(call("POST", b.url(f"/consumers/rev/{channel_name}/w/next?timeout=120"), token))
    other = await call("POST", a.url("/tokens"), admin, json_body={
        "name": f"other-{channel_name}", "scopes": ["read:rev/*"]})
    other_token = other.json()["token"]
    bystander = await open_stream(b.port, f"{path}/stream", bearer(other_token))
    try:
        await until(lambda: stream.status == 200 and bystander.status == 200, DEADLINE_S, "streams to open")
        await sleep(0.3)  # let the peek and the next reach B and be held
        assert not peek.called and not nxt.called
        assert (await call("DELETE", a.url(f"/tokens/reader-{channel_name}"), admin)).code == 204

        await until(lambda: stream.lost.called, DEADLINE_S, "B to end the revoked token's stream")
        [error] = [m for m in stream.messages if m.event == "error"]
        assert json.loads(error.data) == {"error": "token revoked"}
        for held in (peek, nxt):
            r = await held
            assert r.code == 401 and r.json() == {"error": "token revoked"}, r
        assert (await call("GET", b.url(path), token)).code == 401
        # The other token's stream is untouched and still delivers.
        assert not bystander.lost.called
        await call("POST", a.url(path), admin, json_body={"n": 1}, headers={"X-EVENT-ISSUER": "t"})
        await until(lambda: bystander.messages, DEADLINE_S, "the bystander's event")
        assert bystander.messages[0].event == "event"
    finally:
        await stream.close()
        await bystander.close()


@pytest_twisted.ensureDeferred
async def test_a_revoked_token_is_refused_by_every_process(pair, dsn, channel_name):
    a, b = pair
    admin = await create_token(f"admin2-{channel_name}", "admin", dsn=dsn)
    r = await call("POST", b.url("/tokens"), admin, json_body={"name": f"p-{channel_name}",
                                                              "scopes": ["publish:rev/*"]})
    token = r.json()["token"]
    url = f"/events/rev/{channel_name}"
    for p in pair:  # both processes know it (and cache it)
        assert (await call("POST", p.url(url), token, json_body={"a": 1},
                           headers={"X-EVENT-ISSUER": "t"})).code == 201
    assert (await call("DELETE", b.url(f"/tokens/p-{channel_name}"), admin)).code == 204
    for p in pair:
        deadline = time.monotonic() + DEADLINE_S
        while (await call("POST", p.url(url), token, json_body={"a": 1},
                          headers={"X-EVENT-ISSUER": "t"})).code != 401:
            assert time.monotonic() < deadline, f"process {p.port} still takes the token"
            await sleep(0.05)
