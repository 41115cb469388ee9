"""Channels as resources and retention, against a real server process and
PostgreSQL: what a channel stores, its settings, the pruner deleting what
the policy allows, and every reader behind what is stored being told
(peek, SSE, history, durable consumers, webhooks).

The server prunes every 0.2 s (``--retention-interval``); a test waits for a
prune by watching the channel's ``first_id`` move (a deadline, never a
timed assertion).  Each module gets a database of its own: a pruner applies
its own server's defaults to every channel of its database.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import psycopg2
import pytest
import pytest_twisted

from tests.client import get, publish, request
from tests.servers import ServerProcess
from tests.sse_client import open_stream, until
from tests.tokens import bearer, create_token
from tests.webhook_receiver import Receiver, until_async

CTX = "life"
INTERVAL = "0.2"


def database(postgres: Any, name: str) -> str:
    conn = psycopg2.connect(postgres.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return postgres.dsn(name)


@pytest.fixture(scope="module")
def dsn_own(postgres: Any) -> str:
    return database(postgres, "retention_main")


@pytest.fixture(scope="module")
def server(dsn_own: str, tmp_path_factory: Any) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn_own, "--retention-interval", INTERVAL, "--webhook-allow-private",
                          "--webhook-retry-scale", "0.05"], tmp_path_factory.mktemp("retention"))
    proc.start()
    yield proc
    proc.stop()


async def publish_n(server: ServerProcess, channel: str, n: int, context: str = CTX) -> list[int]:
    ids = []
    for i in range(n):
        r = await publish(server.base, context, channel, {"n": i})
        assert r.code == 201, r
        ids.append(r.json()["id"])
    return ids


async def channel_info(server: ServerProcess, channel: str, context: str = CTX) -> dict[str, Any]:
    r = await get(server.url(f"/channels/{context}/{channel}"))
    assert r.code == 200, r
    return r.json()


async def set_retention(server: ServerProcess, channel: str, context: str = CTX, **values: Any) -> dict:
    r = await request("PATCH", server.url(f"/channels/{context}/{channel}"), json_body={"retention": values})
    assert r.code == 200, r
    return r.json()


async def pruned_to(server: ServerProcess, channel: str, first_id: Any, context: str = CTX) -> dict:
    """Wait until the channel's ``first_id`` is ``first_id``; its object."""
    async def reached() -> Any:
        info = await channel_info(server, channel, context)
        return info if info["first_id"] == first_id else None
    return await until_async(reached, timeout=30.0, what=f"{channel} pruned to first_id {first_id}")


# -- channels as resources -------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_channel_shows_what_it_stores_and_the_policy_that_applies(server, channel_name):
    await publish_n(server, channel_name, 3)
    info = await channel_info(server, channel_name)
    assert info["first_timestamp"] <= info["last_timestamp"]
    assert {k: v for k, v in info.items() if not k.endswith("timestamp")} == {
        "context": CTX, "channel": channel_name, "first_id": 1, "last_id": 3, "count": 3,
        "retention": {"max_age": None, "max_events": None,
                      "source": {"max_age": "server", "max_events": "server"}}}
    info = await set_retention(server, channel_name, max_age=86400)
    assert info["retention"] == {"max_age": 86400, "max_events": None,
                                 "source": {"max_age": "channel", "max_events": "server"}}
    info = await set_retention(server, channel_name, max_events=1000)  # max_age is left as it was
    assert info["retention"]["max_age"] == 86400 and info["retention"]["max_events"] == 1000
    info = await set_retention(server, channel_name, max_age=None)  # back to the server's default
    assert info["retention"] == {"max_age": None, "max_events": 1000,
                                 "source": {"max_age": "server", "max_events": "channel"}}


@pytest_twisted.ensureDeferred
async def test_a_channel_that_never_had_an_event_nor_a_setting_is_a_404(server, channel_name):
    r = await get(server.url(f"/channels/{CTX}/{channel_name}"))
    assert r.code == 404 and "error" in r.json()
    info = await set_retention(server, channel_name, max_events=5)
    assert (info["first_id"], info["last_id"], info["count"], info["first_timestamp"],
            info["last_timestamp"]) == (None, 0, 0, None, None)
    r = await publish(server.base, CTX, channel_name, {"a": 1})
    assert r.json()["id"] == 1


@pytest_twisted.ensureDeferred
async def test_channels_are_listed_by_context_then_channel_in_pages_linked_to_the_next(server):
    names = ["b", "a", "c:1", "a.z", "B"]
    for context in ("listing-2", "listing-1"):
        for name in names:
            await publish_n(server, name, 1, context=context)
    r = await get(server.url("/channels?context=listing-1"))
    assert r.code == 200 and r.header("Link") is None
    assert [c["channel"] for c in r.json()] == sorted(names)  # byte order: B before a
    seen, url = [], "/channels?limit=2"
    while url:
        r = await get(server.url(url))
        assert r.code == 200 and len(r.json()) <= 2
        seen += [(c["context"], c["channel"]) for c in r.json()]
        link = r.header("Link")
        url = link[1:link.index(">")] if link else None
        if url:
            assert link.endswith('>; rel="next"')
    listing = [key for key in seen if key[0].startswith("listing-")]
    assert listing == sorted(listing) and len(listing) == 10
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    r = await get(server.url("/channels?context=listing-2&limit=3&after=listing-2/a.z"))
    assert [c["channel"] for c in r.json()] == ["b", "c:1"] and r.header("Link") is None


@pytest_twisted.ensureDeferred
async def test_a_token_lists_only_the_channels_it_may_read(server, dsn_own):
    for context, channel in (("seen", "A"), ("seen", "B"), ("hidden", "A"), ("other", "X")):
        await publish_n(server, channel, 1, context=context)
    token = await create_token("lister", "read:seen/*", "read:other/X", "publish:hidden/*", dsn=dsn_own)
    r = await get(server.url("/channels"), headers=bearer(token))
    assert r.code == 200
    assert [(c["context"], c["channel"]) for c in r.json()] == [("other", "X"), ("seen", "A"), ("seen", "B")]
    r = await get(server.url("/channels/hidden/A"), headers=bearer(token))
    assert r.code == 403
    r = await request("PATCH", server.url("/channels/seen/A"), headers=bearer(token),
                      json_body={"retention": {"max_events": 1}})
    assert r.code == 403 and "manage:seen/A" in r.json()["error"]


BAD_SETTINGS = [
    {"retention": {"max_age": 0}}, {"retention": {"max_age": -1}}, {"retention": {"max_age": 0.5}},
    {"retention": {"max_age": "60"}}, {"retention": {"max_age": True}},
    {"retention": {"max_events": 0}}, {"retention": {"max_events": 1.5}},
    {"retention": {"max_events": 2**63}}, {"retention": {"max_events": "5"}},
    {"retention": {"max_count": 5}}, {"retention": 5}, {"retention": None}, {}, {"max_age": 5},
    [], "x",
]


@pytest.mark.parametrize("body", BAD_SETTINGS, ids=json.dumps)
@pytest_twisted.ensureDeferred
async def test_bad_retention_settings_are_a_400_and_change_nothing(server, channel_name, body):
    await publish_n(server, channel_name, 1)
    r = await request("PATCH", server.url(f"/channels/{CTX}/{channel_name}"), json_body=body)
    assert r.code == 400 and r.json()["error"], r
    assert (await channel_info(server, channel_name))["retention"]["source"] == {
        "max_age": "server", "max_events": "server"}


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "after=nochannel", "after=a/b/c",
                                   "context=..", "context=a/b", "start=1", "after=a/", "on_expired=x"])
@pytest_twisted.ensureDeferred
async def test_bad_list_parameters_are_a_400(server, query):
    r = await get(server.url(f"/channels?{query}"))
    assert r.code == 400 and r.json()["error"], r


# -- retention --------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_max_events_deletes_the_oldest_events_and_ids_are_never_reused(server, channel_name):
    await publish_n(server, channel_name, 25)
    await set_retention(server, channel_name, max_events=10)
    info = await pruned_to(server, channel_name, 16)
    assert (info["last_id"], info["count"]) == (25, 10)
    assert (await get(server.url(f"/events/{CTX}/{channel_name}/15"))).code == 404
    assert (await get(server.url(f"/events/{CTX}/{channel_name}/16"))).code == 200
    r = await publish(server.base, CTX, channel_name, {"after": "prune"})
    assert r.json()["id"] == 26
    info = await pruned_to(server, channel_name, 17)
    assert info["count"] == 10


@pytest_twisted.ensureDeferred
async def test_max_age_deletes_everything_older_and_the_channel_keeps_counting(server, channel_name):
    await publish_n(server, channel_name, 5)
    await set_retention(server, channel_name, max_age=1)
    info = await pruned_to(server, channel_name, None)
    assert (info["last_id"], info["count"], info["first_timestamp"], info["last_timestamp"]) == (5, 0, None, None)
    r = await get(server.url(f"/events/{CTX}/{channel_name}"))
    assert r.json() == [] and r.header("Events-First-Id") == "6"
    assert (await publish(server.base, CTX, channel_name, {"a": 1})).json()["id"] == 6


@pytest_twisted.ensureDeferred
async def test_history_and_start_say_where_the_stored_events_begin(server, channel_name):
    await publish_n(server, channel_name, 8)
    r = await get(server.url(f"/events/{CTX}/{channel_name}"))
    assert r.header("Events-First-Id") == "1"
    await set_retention(server, channel_name, max_events=3)
    await pruned_to(server, channel_name, 6)
    r = await get(server.url(f"/events/{CTX}/{channel_name}"))
    assert [e["id"] for e in r.json()] == [6, 7, 8] and r.header("Events-First-Id") == "6"
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start=0&limit=2"))
    assert [e["id"] for e in r.json()] == [6, 7] and r.header("Events-First-Id") == "6"
    r = await request("HEAD", server.url(f"/events/{CTX}/{channel_name}"))
    assert r.header("Events-First-Id") == "6"


# -- expired cursors: peek ----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_peek_behind_the_first_stored_event_is_410_with_first_id_and_missed(server, channel_name):
    await publish_n(server, channel_name, 10)
    await set_retention(server, channel_name, max_events=4)
    await pruned_to(server, channel_name, 7)
    for query in ("peek=0", "peek=3&timeout=0", "peek=5&timeout=5"):
        r = await get(server.url(f"/events/{CTX}/{channel_name}?{query}"))
        cursor = int(query.split("&")[0].split("=")[1])
        assert r.code == 410, r
        assert r.json()["first_id"] == 7 and r.json()["missed"] == 6 - cursor
        assert "retention" in r.json()["error"]
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=6&timeout=0"))
    assert r.code == 200 and r.json()["id"] == 7 and r.header("Events-Missed") is None


@pytest_twisted.ensureDeferred
async def test_on_expired_earliest_answers_the_first_stored_event_and_how_many_were_missed(server, channel_name):
    await publish_n(server, channel_name, 10)
    await set_retention(server, channel_name, max_events=4)
    await pruned_to(server, channel_name, 7)
    for timeout in ("0", "5"):
        r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=2&on_expired=earliest&timeout={timeout}"))
        assert r.code == 200 and r.json()["id"] == 7
        assert r.header("Events-Missed") == "4"


@pytest_twisted.ensureDeferred
async def test_on_expired_earliest_waits_for_the_next_event_when_nothing_is_stored(server, channel_name):
    await publish_n(server, channel_name, 4)
    await set_retention(server, channel_name, max_age=1)
    await pruned_to(server, channel_name, None)
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=1&timeout=0"))
    assert r.code == 410 and r.json() | {"error": ""} == {"error": "", "first_id": 5, "missed": 3}
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=1&timeout=0&on_expired=earliest"))
    assert r.code == 204
    waiting = get(server.url(f"/events/{CTX}/{channel_name}?peek=1&timeout=20&on_expired=earliest"))
    await publish(server.base, CTX, channel_name, {"late": True})
    r = await waiting
    assert r.code == 200 and r.json()["id"] == 5 and r.header("Events-Missed") == "3"


# -- expired cursors: SSE -------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_an_sse_stream_behind_the_first_stored_event_opens_with_an_expired_message(server, channel_name):
    await publish_n(server, channel_name, 10)
    await set_retention(server, channel_name, max_events=3)
    await pruned_to(server, channel_name, 8)
    for path, headers in ((f"/events/{CTX}/{channel_name}/stream?after=0", None),
                          (f"/events/{CTX}/{channel_name}/stream", {"Last-Event-ID": "4"})):
        client = await open_stream(server.port, path, headers)
        try:
            await until(lambda: len(client.messages) >= 4, 10.0, "the expired message and 3 events")
            expired, *events = client.messages
            cursor = 0 if headers is None else 4
            assert expired.event == "expired" and expired.id == "7"
            assert json.loads(expired.data) == {"first_id": 8, "missed": 7 - cursor}
            assert [json.loads(m.data)["id"] for m in events] == [8, 9, 10]
            assert all(m.event == "event" for m in events)
        finally:
            await client.close()


@pytest_twisted.ensureDeferred
async def test_an_sse_stream_of_a_channel_with_nothing_stored_says_so_then_goes_on_live(server, channel_name):
    await publish_n(server, channel_name, 3)
    await set_retention(server, channel_name, max_age=1)
    await pruned_to(server, channel_name, None)
    client = await open_stream(server.port, f"/events/{CTX}/{channel_name}/stream?after=1")
    try:
        await until(lambda: len(client.messages) >= 1, 10.0, "the expired message")
        assert client.messages[0].event == "expired"
        assert json.loads(client.messages[0].data) == {"first_id": 4, "missed": 2}
        await publish(server.base, CTX, channel_name, {"live": 1})
        await until(lambda: len(client.messages) >= 2, 10.0, "the live event")
        assert json.loads(client.messages[1].data)["id"] == 4
    finally:
        await client.close()


# -- expired cursors: durable consumers -----------------------------------------------------------
async def consumer(server: ServerProcess, channel: str, name: str, **config: Any) -> str:
    path = f"/consumers/{CTX}/{channel}/{name}"
    r = await request("PUT", server.url(path), json_body=config)
    assert r.code in (200, 201), r
    return path


async def next_(server: ServerProcess, path: str) -> dict[str, Any]:
    r = await request("POST", server.url(f"{path}/next?timeout=5"))
    assert r.code == 200, r
    return r.json()


@pytest_twisted.ensureDeferred
async def test_a_consumer_skips_and_counts_what_retention_deleted_and_its_next_lease_says_so(server, channel_name):
    path = await consumer(server, channel_name, "billing")
    await publish_n(server, channel_name, 10)
    await set_retention(server, channel_name, max_events=3)
    await pruned_to(server, channel_name, 8)
    state = (await get(server.url(path))).json()
    assert (state["expired"], state["cursor"], state["lag"]) == (7, 7, 3)
    first = await next_(server, path)
    assert first["event"]["id"] == 8 and first["missed"] == 7
    await request("POST", server.url(f"{path}/ack"), json_body={"lease": first["lease"]})
    second = await next_(server, path)
    assert second["event"]["id"] == 9 and "missed" not in second
    # A consumer created now starts at the first stored event; an id below it counts.
    late = await consumer(server, channel_name, "late", start=2)
    assert (await get(server.url(late))).json()["expired"] == 6
    assert (await next_(server, late))["missed"] == 6
    earliest = await consumer(server, channel_name, "new")
    assert (await get(server.url(earliest))).json()["expired"] == 0
    assert (await next_(server, earliest))["event"]["id"] == 8


@pytest_twisted.ensureDeferred
async def test_retention_never_deletes_an_event_a_consumer_holds_leased(server, channel_name):
    path = await consumer(server, channel_name, "holder", lease=120)
    await publish_n(server, channel_name, 20)
    held = await next_(server, path)
    assert held["event"]["id"] == 1
    await set_retention(server, channel_name, max_events=5)
    # A second channel after this one in the pruner's order: once it is
    # pruned, a round has looked at ours since the setting.
    marker = channel_name + "z"  # sorts right after it
    await set_retention(server, marker, max_events=1)
    await publish_n(server, marker, 2)
    await pruned_to(server, marker, 2)
    assert (await channel_info(server, channel_name))["first_id"] == 1
    assert (await get(server.url(f"/events/{CTX}/{channel_name}/1"))).code == 200
    r = await request("POST", server.url(f"{path}/ack"), json_body={"lease": held["lease"]})
    assert r.code == 204
    await pruned_to(server, channel_name, 16)
    nxt = await next_(server, path)
    assert nxt["event"]["id"] == 16 and nxt["missed"] == 14  # 2..15 never delivered


@pytest_twisted.ensureDeferred
async def test_a_dead_letter_is_deleted_with_its_event_and_not_counted_as_expired(server, channel_name):
    path = await consumer(server, channel_name, "dlq", max_deliveries=1)
    await publish_n(server, channel_name, 10)
    for _ in range(2):  # events 1 and 2: nacked on their only delivery, so dead
        leased = await next_(server, path)
        r = await request("POST", server.url(f"{path}/nack"), json_body={"lease": leased["lease"]})
        assert r.code == 204
    state = (await get(server.url(path))).json()
    assert state["dead"] == 2
    await set_retention(server, channel_name, max_events=2)
    await pruned_to(server, channel_name, 9)
    state = (await get(server.url(path))).json()
    assert (state["dead"], state["expired"], state["cursor"]) == (0, 6, 8)  # 3..8, not 1 and 2
    assert (await get(server.url(f"{path}/dead"))).json() == []
    assert (await next_(server, path))["missed"] == 6


# -- expired cursors: webhooks ----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_webhook_subscription_skips_and_counts_what_retention_deleted(server, channel_name):
    receiver = Receiver().start()
    try:
        receiver.failing = True
        r = await request("POST", server.url("/subscriptions"), json_body={
            "context": CTX, "channel": channel_name, "url": receiver.url, "start": "earliest"})
        assert r.code == 201, r
        sid = r.json()["id"]
        await publish_n(server, channel_name, 10)
        await until_async(lambda: _ready(receiver.requests), what="a first failed attempt")
        await set_retention(server, channel_name, max_events=3)
        await pruned_to(server, channel_name, 8)
        failed = len(receiver.requests)
        receiver.failing = False
        await until_async(lambda: _ready(10 in receiver.ids()), timeout=30.0, what="event 10 delivered")
        delivered = receiver.requests[failed:]
        assert [d.event["id"] for d in delivered][-3:] == [8, 9, 10]
        first = next(d for d in delivered if d.event["id"] == 8)
        assert first.headers.get("events-missed") == "7"
        assert all("events-missed" not in d.headers for d in delivered if d.event["id"] > 8)
        status = (await get(server.url(f"/subscriptions/{sid}"))).json()
        assert status["channels"][channel_name]["expired"] == 7
        assert status["cursor"] == 10 and status["lag"] == 0
    finally:
        await receiver._listening.stopListening()


async def _ready(value: Any) -> Any:
    return value


def test_an_sse_stream_that_falls_behind_retention_says_what_it_skipped_mid_stream(server, channel_name):
    """A client that stops reading holds its stream at a page; retention
    deletes what it has not read; when it reads on, the stream tells it
    (``event: expired``) and carries on from the first stored event: no
    event is skipped without a word."""
    import http.client
    import socket
    import time

    from tests.sse_client import SSEClient

    def call(method: str, path: str, body: Any = None, headers: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, json.loads(data) if data else None

    big = "x" * 32_000
    for batch in range(10):  # 300 events of 32 kB: pages of 32 events, megabytes to buffer
        status, _ = call("POST", f"/events/{CTX}/{channel_name}", [{"n": batch * 30 + i, "pad": big}
                                                                   for i in range(30)],
                         {"X-EVENT-ISSUER": "tests"})
        assert status == 201
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /events/{CTX}/{channel_name}/stream?after=0 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        status, _ = call("PATCH", f"/channels/{CTX}/{channel_name}", {"retention": {"max_events": 20}})
        assert status == 200
        deadline = time.monotonic() + 30
        while call("GET", f"/channels/{CTX}/{channel_name}")[1]["first_id"] != 281:
            assert time.monotonic() < deadline, "not pruned in time"
            time.sleep(0.1)
        client = SSEClient(b"")
        while not any(m.id == "300" for m in client.messages):
            data = sock.recv(1 << 20)
            assert data, "the stream ended"
            client.dataReceived(data)
    finally:
        sock.close()
    events = [int(m.id) for m in client.messages if m.event == "event"]
    expired = [m for m in client.messages if m.event == "expired"]
    assert len(expired) == 1, "the client read on before retention deleted anything"
    told = json.loads(expired[0].data)
    before = [i for i in events if i < 281]
    assert before == list(range(1, len(before) + 1)) and len(before) < 280
    assert told == {"first_id": 281, "missed": 280 - len(before)}
    assert expired[0].id == "280"
    assert events[len(before):] == list(range(281, 301))
    position = client.messages.index(expired[0])
    assert [m.event for m in client.messages[position - 1:position + 2]] == ["event", "expired", "event"]
