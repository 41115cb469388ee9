"""The input rules of issue 8, in memory: each bad request is a JSON 400 that
names what is wrong, and the store is never called.

Uses the recording fakes of :mod:`tests.unit.test_routing`.
"""
from __future__ import annotations

import json

import pytest

from tests.unit.test_routing import BASE, GOOD_BODY, ISSUER, Bus, assert_json_error

ROOT = "http://bus.test"


def error_of(code: int, headers, body: bytes, status: int = 400) -> str:
    assert_json_error(code, headers, body, status)
    return json.loads(body)["error"]


# -- query parameters: each route takes only what it declares ----------------------
@pytest.mark.parametrize("method, url, named", [
    ("GET", f"{BASE}?PEEK=1", "'PEEK'"),
    ("GET", f"{BASE}?timeout=5", "timeout applies only together with peek"),
    ("GET", f"{BASE}?peek=0&limit=1", "limit and peek"),
    ("GET", f"{BASE}?peek=0&start=0", "start and peek"),
    ("GET", f"{BASE}?after=1", "'after'"),
    ("GET", f"{BASE}?peek=0&timeout=0&x=1", "'x'"),
    ("GET", f"{BASE}?=1", "''"),
    ("GET", f"{BASE}/stream?peek=0", "'peek'"),
    ("GET", f"{BASE}/1?peek=0", "'peek'"),
    ("GET", f"{ROOT}/health?verbose=1", "'verbose'"),
    ("POST", f"{BASE}?sync=1", "'sync'"),
    ("POST", f"{BASE}?access_token=t", "'access_token'"),  # only GET routes take it
    ("POST", f"{ROOT}/consumers/ctx/ch/c/next?wait=5", "'wait'"),
    ("PUT", f"{ROOT}/consumers/ctx/ch/c?lease=5", "'lease'"),
    ("POST", f"{ROOT}/subscriptions?channel=x", "'channel'"),
])
def test_an_unknown_or_misplaced_query_parameter_is_a_400_naming_it(method, url, named):
    bus = Bus()
    message = error_of(*bus.call(method, url, headers=ISSUER, data=GOOD_BODY))
    assert named in message
    assert bus.store.calls == [] and bus.notifier.calls == []


@pytest.mark.parametrize("url", [
    f"{BASE}?access_token=t", f"{BASE}?peek=0&timeout=0&access_token=t",
    f"{BASE}?limit=1&start=0&access_token=t", f"{BASE}/1?access_token=t",
    f"{ROOT}/health?access_token=t",
])
def test_access_token_is_accepted_on_get_routes(url):
    code, _, body = Bus().call("GET", url)
    assert code in (200, 204, 404) and b"access_token" not in body, body


# -- names made only of dots ---------------------------------------------------------
@pytest.mark.parametrize("method, url", [
    ("POST", f"{ROOT}/events/ctx/%2E"),
    ("POST", f"{ROOT}/events/ctx/%2e%2e"),
    ("POST", f"{ROOT}/events/%2e%2e%2e/ch"),
    ("GET", f"{ROOT}/events/%2e%2e/ch/1"),
    ("GET", f"{ROOT}/consumers/ctx/ch/%2e%2e"),
    ("PUT", f"{ROOT}/consumers/ctx/%2E/c"),
])
def test_a_name_made_only_of_dots_is_refused(method, url):
    bus = Bus()
    assert "only of dots" in error_of(*bus.call(method, url, headers=ISSUER, data=GOOD_BODY))
    assert bus.store.calls == []


def test_names_with_dots_among_other_characters_are_fine():
    bus = Bus()
    assert bus.call("POST", f"{ROOT}/events/ctx/.a.", headers=ISSUER, data=GOOD_BODY)[0] == 201


# -- the issuer, given twice ----------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"X-EVENT-ISSUER": ["a", "b"]},
    {"X-EVENT-ISSUER": "a", "X-JISS-ISSUER": "b"},
    {"X-JISS-ISSUER": ["a", "A"]},
])
def test_an_issuer_given_twice_with_different_values_is_refused(headers):
    bus = Bus()
    assert "more than once" in error_of(*bus.call("POST", BASE, headers=headers, data=GOOD_BODY))
    assert bus.store.calls == []


def test_an_issuer_given_twice_with_the_same_value_is_that_issuer():
    bus = Bus()
    headers = {"X-EVENT-ISSUER": ["a", "a"], "X-JISS-ISSUER": "a"}
    assert bus.call("POST", BASE, headers=headers, data=GOOD_BODY)[0] == 201
    assert bus.store.calls == [("append", ("ctx", "ch", "a", ['{"a": 1}']))]


# -- payloads ------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    (b'{"a": 1, "a": 2}', "'a'"),
    (b'[{"a": 1}, {"b": {"c": 1, "c": 2}}]', "'c'"),
    (b'{"a":' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper than 100"),
    (b'[{"a":' + b"[" * 954 + b"]" * 954 + b"}]", "nested deeper than 100"),
    (b'[{"ok": 1}, {"a":' + b"[" * 100 + b"]" * 100 + b"}]", "nested deeper than 100"),
])
def test_duplicate_names_and_deep_nesting_are_refused_before_the_store(body, message):
    bus = Bus()
    assert message in error_of(*bus.call("POST", BASE, headers=ISSUER, data=body))
    assert bus.store.calls == []


def test_a_batch_at_the_nesting_limit_is_stored_as_sent():
    bus = Bus()
    event = '{"a":' + "[" * 99 + "]" * 99 + "}"
    bus.store.answers = {**bus.store.answers, "append": []}
    code, _, body = bus.call("POST", BASE, headers=ISSUER, data=f'[{event},\n {event}]'.encode())
    assert code == 201, body
    assert bus.store.calls == [("append", ("ctx", "ch", "unit", [event, event]))]


# -- consumers: the lease, and numbers as sent ----------------------------------------
CONSUMER = f"{ROOT}/consumers/ctx/ch/c"


@pytest.mark.parametrize("body, shown", [
    (b'{"lease": 1e-300}', "got 1e-300"),
    (b'{"lease": 0.999}', "got 0.999"),
    (b'{"lease": 100000000000000000000}', "got 100000000000000000000"),
    (b'{"lease": 1E+5}', "got 1E+5"),
    (b'{"max_deliveries": 100000000000000000000000}', "got 100000000000000000000000"),
    (b'{"start": 1.0e23}', "got 1.0e23"),
    (b'{"mode": "FIFO"}', 'got "FIFO"'),
])
def test_a_bad_consumer_setting_is_refused_quoting_what_was_sent(body, shown):
    bus = Bus()
    message = error_of(*bus.call("PUT", CONSUMER, data=body))
    assert message.endswith(shown), message
    assert bus.store.calls == []


def test_the_shortest_lease_is_one_second():
    message = error_of(*Bus().call("PUT", CONSUMER, data=b'{"lease": 0.5}'))
    assert "from 1 to 43200" in message
    bus = Bus()
    bus.call("PUT", CONSUMER, data=b'{"lease": 1}')
    assert bus.store.calls[0][0] == "configure"


def test_a_bad_nack_delay_is_quoted_as_sent():
    message = error_of(*Bus().call("POST", f"{CONSUMER}/nack",
                                   data=b'{"lease": "1.x", "delay": 1e5}'))
    assert message.endswith("got 1e5"), message


# -- HEAD never waits, and never reads a body nobody gets ---------------------------------
def test_head_of_a_peek_answers_at_once_whatever_its_timeout():
    bus = Bus()
    code, _, body = bus.call("HEAD", f"{BASE}?peek=3&timeout=300")
    assert code == 204 and body == b""
    assert ("next_event", ("ctx", "ch", 3, 300.0)) not in bus.notifier.calls
    assert bus.store.calls == [("first_after", ("ctx", "ch", 3))]


def test_head_of_a_history_reads_no_page():
    bus = Bus()
    bus.store.answers = {**bus.store.answers, "bounds": (1, 500)}
    code, headers, body = bus.call("HEAD", BASE)
    assert code == 200 and body == b""
    assert headers.getRawHeaders("Content-Type") == ["application/json"]
    assert headers.getRawHeaders("Events-First-Id") == ["1"]
    assert [name for name, _ in bus.store.calls] == ["bounds"]
