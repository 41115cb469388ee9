"""Each endpoint over real HTTP against a real server process and database."""
from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.client import get, publish, request

CTX = "ctx"


@pytest_twisted.ensureDeferred
async def test_publish_returns_201_with_stored_event_and_location(server, channel_name):
    before = time.time()
    r = await publish(server.base, CTX, channel_name, {"x": 1, "y": "test"}, issuer="JERPi")
    assert r.code == 201, r
    event = r.json()
    assert event["id"] == 1
    assert event["issuer"] == "JERPi"
    assert event["context"] == CTX and event["channel"] == channel_name
    assert event["payload"] == {"x": 1, "y": "test"}
    assert before - 1 <= event["timestamp"] <= time.time() + 1
    assert r.header("Location") == f"/events/{CTX}/{channel_name}/1"
    again = await get(server.url(r.header("Location")))
    assert again.code == 200 and again.json() == event


@pytest_twisted.ensureDeferred
async def test_legacy_issuer_header_and_form_content_type_are_accepted(server, channel_name):
    r = await request("POST", server.url(f"/events/{CTX}/{channel_name}"),
                      data=b'{"x": 1, "y": "test"}',
                      headers={"X-JISS-ISSUER": "TEST",
                               "Content-Type": "application/x-www-form-urlencoded"})
    assert r.code == 201, r
    assert r.json()["issuer"] == "TEST"
    assert r.json()["payload"] == {"x": 1, "y": "test"}


@pytest_twisted.ensureDeferred
async def test_payload_text_is_kept_exactly(server, channel_name):
    body = b'{"big": 123456789012345678901234567890, "z": 1, "a": [1.50, "\\u00e9"]}'
    r = await request("POST", server.url(f"/events/{CTX}/{channel_name}"), data=body,
                      headers={"X-EVENT-ISSUER": "t"})
    assert r.code == 201
    stored = await get(server.url(f"/events/{CTX}/{channel_name}/1"))
    assert body in stored.body


@pytest_twisted.ensureDeferred
async def test_history_lists_all_events_in_id_order_and_honours_limit(server, channel_name):
    for i in range(5):
        assert (await publish(server.base, CTX, channel_name, {"i": i})).code == 201
    r = await get(server.url(f"/events/{CTX}/{channel_name}"))
    assert r.code == 200
    assert [e["id"] for e in r.json()] == [1, 2, 3, 4, 5]
    assert [e["payload"]["i"] for e in r.json()] == [0, 1, 2, 3, 4]
    r = await get(server.url(f"/events/{CTX}/{channel_name}?limit=2"))
    assert [e["id"] for e in r.json()] == [1, 2]
    empty = await get(server.url(f"/events/{CTX}/never-written-{channel_name}"))
    assert empty.code == 200 and empty.json() == []


@pytest_twisted.ensureDeferred
async def test_start_selects_events_from_a_timestamp_numeric_or_iso(server, channel_name):
    first = (await publish(server.base, CTX, channel_name, {"i": 0})).json()
    await task.deferLater(reactor, 0.05, lambda: None)
    second = (await publish(server.base, CTX, channel_name, {"i": 1})).json()
    ts = second["timestamp"]
    assert ts > first["timestamp"]
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start={ts!r}"))
    assert [e["id"] for e in r.json()] == [2]
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start={int(first['timestamp'])}"))
    assert [e["id"] for e in r.json()] == [1, 2]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first["timestamp"] - 10))
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start={iso}"))
    assert [e["id"] for e in r.json()] == [1, 2]
    # An offset with an unencoded "+" (decoded as a space) still means +hh:mm.
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts + 3600 + 1))
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start={local}+01:00"))
    assert r.code == 200 and r.json() == []
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first["timestamp"] + 3600 - 5))
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start={local}+01:00"))
    assert [e["id"] for e in r.json()] == [1, 2]
    r = await get(server.url(f"/events/{CTX}/{channel_name}?start={int(ts) + 3600}"))
    assert r.code == 200 and r.json() == []


@pytest_twisted.ensureDeferred
async def test_peek_returns_next_event_and_zero_timeout_answers_204_at_once(server, channel_name):
    await publish(server.base, CTX, channel_name, {"i": 0})
    await publish(server.base, CTX, channel_name, {"i": 1})
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=0"))
    assert r.code == 200 and r.json()["id"] == 1
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=1"))
    assert r.code == 200 and r.json()["id"] == 2
    started = time.monotonic()
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=2&timeout=0"))
    assert r.code == 204 and r.body == b""
    # Not a speed target: it must not wait out the default 25 s timeout.
    assert time.monotonic() - started < 20


@pytest_twisted.ensureDeferred
async def test_long_poll_is_woken_by_a_publish(server, channel_name):
    waiting = defer.ensureDeferred(get(server.url(f"/events/{CTX}/{channel_name}?peek=0&timeout=30")))
    await task.deferLater(reactor, 0.3, lambda: None)
    assert not waiting.called
    published = await publish(server.base, CTX, channel_name, {"wake": True})
    r = await waiting
    assert r.code == 200
    assert r.json() == published.json()


@pytest_twisted.ensureDeferred
async def test_long_poll_times_out_with_204(server, channel_name):
    started = time.monotonic()
    r = await get(server.url(f"/events/{CTX}/{channel_name}?peek=0&timeout=0.5"))
    assert r.code == 204
    # Held open until the timeout (a lower bound, so load cannot flake it).
    assert time.monotonic() - started >= 0.45


@pytest_twisted.ensureDeferred
async def test_single_event_404_when_missing(server, channel_name):
    await publish(server.base, CTX, channel_name, {"i": 0})
    assert (await get(server.url(f"/events/{CTX}/{channel_name}/2"))).code == 404
    assert (await get(server.url(f"/events/{CTX}/nothing-{channel_name}/1"))).code == 404
    r = await get(server.url(f"/events/{CTX}/{channel_name}/abc"))
    assert r.code == 404 and "error" in r.json()


@pytest_twisted.ensureDeferred
async def test_health_reports_ok(server):
    r = await get(server.url("/health"))
    assert r.code == 200 and r.json() == {"status": "ok"}
