"""Conditional publish in memory: the headers, the answers, and the group
commit of :class:`~eventbus.storage.conditional.ConditionalAppends` on a
fake pool (what it sends, how it groups, what each row becomes)."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import psycopg2
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage

from eventbus.config import DEFAULTS, Options
from eventbus.errors import Conflict, EventBusError, Unavailable, Unprocessable
from eventbus.http.render import error_body
from eventbus.model import Appended, Event, PublishCondition
from eventbus.storage.conditional import CHECKED_SQL, ConditionalAppends
from eventbus.storage.database import QUERY_TIMEOUT_S, Database
from eventbus.storage.events import APPEND_SQL, EventStore
from tests.unit.test_routing import BASE, ISSUER, Bus, assert_json_error

TS = 1700000000.5


# -- the headers -------------------------------------------------------------------------
@pytest.mark.parametrize("headers, named", [
    ({"Idempotency-Key": b""}, "Idempotency-Key header is empty"),
    ({"Idempotency-Key": b"   "}, "Idempotency-Key header is empty"),
    ({"Idempotency-Key": b"k" * 256}, "longer than 255"),
    ({"Idempotency-Key": "caf\u00e9".encode()}, "visible ASCII"),
    ({"Idempotency-Key": b"a b"}, "visible ASCII"),
    ({"Idempotency-Key": b"a\x01b"}, "visible ASCII"),
    ({"Idempotency-Key": b"a\x7f"}, "visible ASCII"),
    ({"Idempotency-Key": [b"a", b"b"]}, "given more than once"),
    ({"Idempotency-Key": [b"a", b"a"]}, "given more than once"),
    ({"Expected-Last-Id": b"-1"}, "Expected-Last-Id must be an integer"),
    ({"Expected-Last-Id": b"x"}, "Expected-Last-Id must be an integer"),
    ({"Expected-Last-Id": b""}, "Expected-Last-Id must be an integer"),
    ({"Expected-Last-Id": b"1e3"}, "Expected-Last-Id must be an integer"),
    ({"Expected-Last-Id": b"9223372036854775807"}, "Expected-Last-Id must be an integer"),
    ({"Expected-Last-Id": [b"1", b"2"]}, "given more than once"),
])
def test_bad_condition_headers_are_400s_and_reach_no_store(headers, named):
    bus = Bus()
    code, response_headers, body = bus.call("POST", BASE, headers={**ISSUER, **headers}, data=b'{"a": 1}')
    assert_json_error(code, response_headers, body, 400)
    assert named in json.loads(body)["error"]
    assert bus.store.calls == []


class FakeConditional:
    """Answers every conditional append with ``answer`` (or raises it)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple] = []

    async def append(self, *args: Any) -> Appended:
        self.calls.append(args)
        if isinstance(self.answer, EventBusError):
            raise self.answer
        return self.answer


def conditional_bus(answer: Any) -> tuple[Bus, FakeConditional]:
    fake = FakeConditional(answer)
    return Bus(conditional=fake), fake


@pytest.mark.parametrize("headers, condition", [
    ({"Idempotency-Key": b"order-1"}, ("order-1", True, None)),
    ({"Idempotency-Key": b"  order-1 "}, ("order-1", True, None)),
    ({"Expected-Last-Id": b"0"}, (None, False, 0)),
    ({"Expected-Last-Id": b" 41 "}, (None, False, 41)),
    ({"Idempotency-Key": b"!~\"'", "Expected-Last-Id": b"7"}, ("!~\"'", True, 7)),
    ({"Idempotency-Key": b"k" * 255}, ("k" * 255, True, None)),
])
def test_a_condition_takes_the_conditional_path_with_the_bodys_exact_digest(headers, condition):
    body = b' {"a": 1, "b": [1.0, 2]}\n'
    bus, fake = conditional_bus(Appended([Event(3, TS, "unit", body.decode().strip())], replayed=False))
    code, _, _ = bus.call("POST", BASE, headers={**ISSUER, **headers}, data=body)
    assert code == 201
    assert bus.store.calls == []  # the plain path was not taken
    [(context, channel, issuer, payloads, sent)] = fake.calls
    key, with_digest, expected = condition
    assert (context, channel, issuer, payloads) == ("ctx", "ch", "unit", ['{"a": 1, "b": [1.0, 2]}'])
    assert sent == PublishCondition(key, hashlib.sha256(body).hexdigest() if with_digest else None, expected)


def test_a_plain_publish_takes_the_plain_path():
    bus, fake = conditional_bus(None)
    code, headers, _ = bus.call("POST", BASE, headers=ISSUER, data=b'{"a": 1}')
    assert code == 201 and fake.calls == []
    assert [name for name, _ in bus.store.calls] == ["append"]
    assert headers.getRawHeaders("Idempotent-Replayed") is None


@pytest.mark.parametrize("replayed", [False, True])
def test_a_replay_is_the_first_answer_with_idempotent_replayed(replayed):
    event = Event(7, TS, "unit", '{"a": 1}')
    bus, _ = conditional_bus(Appended([event], replayed=replayed))
    code, headers, body = bus.call("POST", BASE, headers={**ISSUER, "Idempotency-Key": "k"}, data=b'{"a": 1}')
    assert code == 201
    assert json.loads(body) == {"id": 7, "issuer": "unit", "context": "ctx", "channel": "ch",
                                "timestamp": TS, "payload": {"a": 1}}
    assert headers.getRawHeaders("Location") == ["/events/ctx/ch/7"]
    assert headers.getRawHeaders("Idempotent-Replayed") == (["true"] if replayed else None)


def test_a_failed_expectation_is_a_409_carrying_the_last_id():
    bus, _ = conditional_bus(Conflict("Expected-Last-Id is 3, but ...", details={"last_id": 5}))
    code, headers, body = bus.call("POST", BASE, headers={**ISSUER, "Expected-Last-Id": "3"}, data=b"{}")
    assert_json_error(code, headers, body, 409)
    assert json.loads(body) == {"error": "Expected-Last-Id is 3, but ...", "last_id": 5}


def test_a_reused_key_is_a_422():
    bus, _ = conditional_bus(Unprocessable("Idempotency-Key 'k' was used ..."))
    code, headers, body = bus.call("POST", BASE, headers={**ISSUER, "Idempotency-Key": "k"}, data=b"{}")
    assert_json_error(code, headers, body, 422)


def test_error_details_come_after_the_message_and_never_replace_it():
    assert error_body("m") == b'{"error":"m"}'
    assert error_body("m", last_id=4, error="x") == b'{"error":"m","last_id":4}'


# -- the option ------------------------------------------------------------------------------------
def test_the_idempotency_window_defaults_to_a_day_and_must_be_positive():
    options = Options()
    options.parseOptions([])
    assert options.settings().idempotency_window == DEFAULTS.idempotency_window == 86400.0
    options = Options()
    options.parseOptions(["--idempotency-window", "60"])
    assert options.settings().idempotency_window == 60.0
    for bad in ("0", "-5", "0.5", "1e10", "nan"):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(["--idempotency-window", bad])


# -- the group commit -------------------------------------------------------------------------------
class FakePool:
    """Records each statement; the test answers (or fails) it."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, dict, defer.Deferred]] = []

    def runQuery(self, sql: str, params: dict) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.queries.append((sql, params, d))
        return d

    def backend_pids(self) -> frozenset[int]:
        return frozenset()


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.database = Database(self.clock, "", pool_size=1, timeout=QUERY_TIMEOUT_S)
        self.pool = FakePool()
        self.database._pool = self.pool  # type: ignore[assignment]
        self.announced: list[tuple[str, str, list[int]]] = []
        self.appends = ConditionalAppends(
            self.database, lambda c, ch, events: self.announced.append((c, ch, [e.id for e in events])), 60.0)

    def append(self, channel: str, payloads: list[str], key: Optional[str] = None,
               expected: Optional[int] = None, issuer: str = "unit") -> list:
        digest = None if key is None else hashlib.sha256("".join(payloads).encode()).hexdigest()
        d = defer.ensureDeferred(self.appends.append(
            "ctx", channel, issuer, payloads, PublishCondition(key, digest, expected)))
        outcome: list = []
        d.addBoth(outcome.append)
        return outcome


def test_a_group_holds_one_request_per_key_and_is_sorted_by_channel_in_one_statement():
    h = Harness()
    first = h.append("b", ['{"n": 1}'], key="k")       # flush 1 (alone: nothing queued yet)
    second = h.append("b", ['{"n": 2}'], key="x")      # flush 2 (two may be in flight)
    queued = [h.append("b", ['{"n": 1}'], key="k"),    # queued behind both ...
              h.append("a", ['{"i": 0}', '{"i": 1}'], expected=0),
              h.append("b", ['{"n": 1}'], key="k")]
    assert len(h.pool.queries) == 2
    h.pool.queries[0][2].callback([(1, "stored", 1, TS, None)])
    # ... and then written together, but for the second use of "k" in them.
    sql, params, _ = h.pool.queries[2]
    assert sql == CHECKED_SQL
    assert (params["ch"], params["key"], params["expected"], params["n"]) == (
        ["a", "b"], [None, "k"], [0, None], [2, 1])
    assert params["e_req"] == "{1,1,2}" and params["e_pos"] == "{1,2,1}"
    assert json.loads(params["payloads"]) == [{"i": 0}, {"i": 1}, {"n": 1}]
    assert params["hash"][0] is None and params["window"] == 60.0
    h.pool.queries[1][2].callback([(1, "stored", 2, TS, None)])
    h.pool.queries[2][2].callback([(1, "stored", 1, TS + 1, None), (2, "replay", 1, TS, None)])
    sql, params, _ = h.pool.queries[3]
    assert params["key"] == ["k"]
    h.pool.queries[3][2].callback([(1, "replay", 1, TS, None)])
    assert first == [Appended([Event(1, TS, "unit", '{"n": 1}')], replayed=False)]
    assert second[0].events[0].id == 2
    assert queued[0] == queued[2] == [Appended([Event(1, TS, "unit", '{"n": 1}')], replayed=True)]
    assert queued[1] == [Appended([Event(1, TS + 1, "unit", '{"i": 0}'), Event(2, TS + 1, "unit", '{"i": 1}')],
                                  replayed=False)]
    # Only what was stored is announced; replays were announced by their first.
    assert h.announced == [("ctx", "b", [1]), ("ctx", "b", [2]), ("ctx", "a", [1, 2])]


def test_each_request_gets_its_own_outcome_from_the_rows():
    h = Harness()
    h.append("c", ['{"n": 0}'])  # in flight alone
    h.append("c", ['{"n": 0}'])
    stored, conflict, mismatch = (h.append("c", ['{"s": 1}'], expected=4),
                                  h.append("c", ['{"c": 1}'], expected=4),
                                  h.append("c", ['{"m": 1}'], key="used"))
    for _, _, d in h.pool.queries[:2]:
        d.callback([(1, "stored", 1, TS, None)])
    h.pool.queries[2][2].callback([(1, "stored", 5, TS, None), (2, "conflict", None, None, 5),
                                   (3, "mismatch", None, None, None)])
    assert stored[0].events == [Event(5, TS, "unit", '{"s": 1}')]
    assert conflict[0].check(Conflict) and conflict[0].value.details == {"last_id": 5}
    assert "Expected-Last-Id is 4" in conflict[0].value.message
    assert mismatch[0].check(Unprocessable) and "'used'" in mismatch[0].value.message


def test_a_group_that_fails_is_retried_one_request_at_a_time():
    h = Harness()
    h.append("c", ['{"n": 0}'])
    h.append("c", ['{"n": 0}'])
    rest = [h.append("c", ['{"n": 1}'], expected=1), h.append("d", ['{"n": 2}'], key="k")]
    for _, _, d in h.pool.queries[:2]:
        d.callback([(1, "stored", 1, TS, None)])
    h.pool.queries[2][2].errback(psycopg2.errors.UniqueViolation("duplicate key"))
    assert [q[1]["ch"] for q in h.pool.queries[3:]] == [["c"]]
    h.pool.queries[3][2].callback([(1, "conflict", None, None, 2)])
    assert [q[1]["ch"] for q in h.pool.queries[4:]] == [["d"]]
    h.pool.queries[4][2].callback([(1, "stored", 1, TS, None)])
    assert rest[0][0].check(Conflict) and rest[1][0].events[0].id == 1


def test_an_outage_fails_the_group_and_the_queue_with_unavailable():
    h = Harness()
    answers = [h.append("c", ['{"n": %d}' % i], key=f"k{i}") for i in range(4)]
    h.pool.queries[0][2].errback(psycopg2.OperationalError("server closed the connection"))
    for outcome in answers[:1] + answers[2:]:
        assert outcome[0].check(Unavailable)
    assert answers[1] == []  # the other transaction in flight decides its own
    h.pool.queries[1][2].callback([(1, "stored", 1, TS, None)])
    assert answers[1][0].events[0].id == 1


def test_a_group_that_commits_after_its_503_is_still_announced():
    """The requester got a 503 (outcome unknown); the commit went through
    later: this process must still hear of its events, and a retry with
    the key replays them (the database decides that)."""
    h = Harness()
    outcome = h.append("c", ['{"n": 1}'], key="late")
    h.clock.advance(QUERY_TIMEOUT_S + 0.1)
    assert outcome[0].check(Unavailable)
    assert h.announced == []
    h.pool.queries[0][2].callback([(1, "stored", 9, TS, None)])
    assert h.announced == [("ctx", "c", [9])]


def test_plain_appends_never_take_the_conditional_statement():
    clock = Clock()
    database = Database(clock, "", pool_size=1, timeout=QUERY_TIMEOUT_S)
    database._pool = pool = FakePool()  # type: ignore[assignment]
    store = EventStore(database)
    defer.ensureDeferred(store.append("ctx", "c", "unit", ['{"n": 1}']))
    [(sql, _, _)] = pool.queries
    assert sql == APPEND_SQL
