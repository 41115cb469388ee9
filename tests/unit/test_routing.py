"""Routing and validation in memory: bad requests never reach the store.

``StubTreq`` drives the Klein resource directly, with a fake store and
notifier that only record what they were asked; no server, no database.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from eventbus.config import DEFAULTS
from eventbus.consumers import Consumers
from eventbus.errors import Unavailable
from eventbus.http.api import make_root
from eventbus.http.params import DEFAULT_TIMEOUT_S
from eventbus.http.streams import EventStreams
from eventbus.model import Event

BASE = "http://bus.test/events/ctx/ch"
ISSUER = {"X-EVENT-ISSUER": "unit"}
GOOD_BODY = b'{"a": 1}'


class RecordingStore:
    """Records every call; answers like an empty database (append gives id 1)."""

    answers: dict[str, Any] = {"append": [Event(1, 1700000000.0, "unit", '{"a": 1}')],
                               "head": 0, "bounds": (1, 0)}

    def __init__(self, fail_with: Optional[Exception] = None) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.fail_with = fail_with

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any) -> Any:
            self.calls.append((name, args))
            if self.fail_with is not None:
                raise self.fail_with
            return self.answers.get(name)
        return record


class RecordingNotifier:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def notify(self, *args: Any) -> None:
        self.calls.append(("notify", args))

    def published(self, *args: Any) -> None:
        self.calls.append(("published", args))

    def recent(self, *args: Any) -> list:
        self.calls.append(("recent", args))
        return []

    async def next_event(self, *args: Any) -> None:
        self.calls.append(("next_event", args))
        return None


class Bus:
    """One API over fakes, and a synchronous way to call it."""

    def __init__(self, store: Optional[RecordingStore] = None, conditional: Any = None,
                 max_wait: float = DEFAULTS.max_wait) -> None:
        self.store = store or RecordingStore()
        self.notifier = RecordingNotifier()
        clock = Clock()
        store: Any = self.store
        notifier: Any = self.notifier
        root = make_root(
            database=store, events=store, notifier=notifier,
            streams=EventStreams(store, notifier, clock, DEFAULTS.heartbeat),
            consumers=Consumers(clock, store, store, notifier), webhooks=None,
            max_batch=DEFAULTS.max_batch, max_wait=max_wait, conditional=conditional or store,
        )
        self.treq = StubTreq(root)

    def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        d = self.treq.request(method, url, **kwargs)
        self.treq.flush()
        response = _result(d)
        body = self.treq.content(response)
        self.treq.flush()
        return response.code, response.headers, _result(body)


def _result(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the request did not complete in memory"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def assert_json_error(code: int, headers: Any, body: bytes, status: int) -> None:
    assert code == status, (code, body)
    assert headers.getRawHeaders("Content-Type") == ["application/json"]
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error


@pytest.mark.parametrize("method, url", [
    ("POST", "http://bus.test/events/a%20b/ch"),
    ("POST", "http://bus.test/events/ctx/" + "n" * 129),
    ("POST", "http://bus.test/events/ctx/caf%C3%A9"),
    ("POST", "http://bus.test/events/ctx/%FF"),
    ("POST", "http://bus.test/events/ctx/a%2Fb"),
    ("GET", "http://bus.test/events/ctx/a*b"),
    ("GET", "http://bus.test/events/ctx/a%00b?peek=0"),
    ("GET", "http://bus.test/events/" + "n" * 129 + "/ch/1"),
])
def test_bad_names_are_refused_before_the_store_is_called(method, url):
    bus = Bus()
    assert_json_error(*bus.call(method, url, headers=ISSUER, data=GOOD_BODY), 400)
    assert bus.store.calls == [] and bus.notifier.calls == []


@pytest.mark.parametrize("query", [
    "peek=-1", "peek=abc", "peek=99999999999999999999", "peek=0&timeout=301",
    "peek=0&timeout=-1", "peek=0&timeout=abc", "timeout=abc", "limit=0", "limit=-5",
    "limit=0&peek=0", "start=abc", "start=-1", "start=0&peek=0", "peek=0&peek=1",
    "peek=%FF",
])
def test_bad_query_parameters_are_refused_before_the_store_is_called(query):
    bus = Bus()
    assert_json_error(*bus.call("GET", f"{BASE}?{query}"), 400)
    assert bus.store.calls == [] and bus.notifier.calls == []


@pytest.mark.parametrize("headers, body", [
    ({}, GOOD_BODY),
    ({"X-EVENT-ISSUER": " "}, GOOD_BODY),
    ({"X-EVENT-ISSUER": "i" * 129}, GOOD_BODY),
    ({"X-EVENT-ISSUER": b"\xff"}, GOOD_BODY),
    (ISSUER, b""),
    (ISSUER, b'{"x": NaN}'),
    (ISSUER, b'{"x": 1e400}'),
    (ISSUER, b'{"x": "\xff"}'),
    (ISSUER, b"[1, 2]"),
    (ISSUER, b"null"),
])
def test_bad_publishes_are_refused_before_the_store_is_called(headers, body):
    bus = Bus()
    assert_json_error(*bus.call("POST", BASE, headers=headers, data=body), 400)
    assert bus.store.calls == [] and bus.notifier.calls == []


@pytest.mark.parametrize("method, url, allowed", [
    ("PUT", BASE, "GET, HEAD, POST"),
    ("DELETE", f"{BASE}/1", "GET, HEAD"),
    ("POST", "http://bus.test/health", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow_and_no_store_call(method, url, allowed):
    bus = Bus()
    code, headers, body = bus.call(method, url, headers=ISSUER, data=GOOD_BODY)
    assert_json_error(code, headers, body, 405)
    assert headers.getRawHeaders("Allow") == [allowed]
    assert bus.store.calls == []


@pytest.mark.parametrize("url", [
    "http://bus.test/", f"{BASE}/", f"{BASE}/1/x", "http://bus.test/events/ctx//1",
])
def test_unknown_path_is_404_and_no_store_call(url):
    bus = Bus()
    assert_json_error(*bus.call("GET", url), 404)
    assert bus.store.calls == []


def test_event_id_out_of_range_is_404_without_a_store_call():
    bus = Bus()
    assert_json_error(*bus.call("GET", f"{BASE}/99999999999999999999"), 404)
    assert bus.store.calls == []


# Positive controls: the same fakes do see valid requests, so "not called"
# above means "refused first".
def test_valid_publish_reaches_the_store():
    bus = Bus()
    code, headers, body = bus.call("POST", BASE, headers=ISSUER, data=b' {"a": 1} ')
    assert code == 201, body
    # The payload text as sent (trimmed); the store announces the commit to
    # the notifier itself (Store.on_append).
    assert bus.store.calls == [("append", ("ctx", "ch", "unit", ['{"a": 1}']))]
    assert headers.getRawHeaders("Location") == ["/events/ctx/ch/1"]


def test_valid_peeks_reach_the_store_or_the_notifier():
    bus = Bus()
    assert bus.call("GET", f"{BASE}?peek=3&timeout=0")[0] == 204
    assert bus.store.calls == [("first_after", ("ctx", "ch", 3))]
    # timeout=0 first looks for the event in the notifier's memory.
    assert bus.notifier.calls == [("recent", ("ctx", "ch", 3, 1))]
    bus.notifier.calls.clear()
    assert bus.call("GET", f"{BASE}?peek=3")[0] == 204
    assert bus.notifier.calls == [("next_event", ("ctx", "ch", 3, DEFAULT_TIMEOUT_S))]


def test_max_wait_caps_every_long_poll_and_lowers_the_default_timeout():
    bus = Bus(max_wait=2)
    assert bus.call("GET", f"{BASE}?peek=3&timeout=2")[0] == 204
    assert bus.call("GET", f"{BASE}?peek=3")[0] == 204  # the default 25 s, capped
    assert bus.notifier.calls == [("next_event", ("ctx", "ch", 3, 2.0))] * 2
    for url in (f"{BASE}?peek=3&timeout=2.001", "http://bus.test/consumers/ctx/ch/c/next?timeout=3"):
        code, headers, body = bus.call("POST" if "next" in url else "GET", url)
        assert_json_error(code, headers, body, 400)
        assert "from 0 to 2," in json.loads(body)["error"]
    assert bus.store.calls == []


def test_store_outage_is_a_json_503():
    bus = Bus(RecordingStore(fail_with=Unavailable("database unavailable")))
    assert_json_error(*bus.call("POST", BASE, headers=ISSUER, data=GOOD_BODY), 503)
    assert_json_error(*bus.call("GET", "http://bus.test/health"), 503)
