"""What a restore batch may hold (``eventbus.http.restore``): exported event
objects with gap-free ids, timestamps in order and to the microsecond, and
payloads that a publish would have accepted."""
from __future__ import annotations

import json

import pytest

from eventbus.errors import InvalidInput, TooLarge
from eventbus.http.restore import after_param, restored_events
from eventbus.storage.restore import Restored


def line(event_id: int, ts: str = "1764248745.123456", payload: str = '{"a": 1.50}', issuer: str = "JERPi") -> str:
    return (f'{{"id":{event_id},"issuer":{json.dumps(issuer)},"context":"mkp","channel":"INVOICE",'
            f'"timestamp":{ts},"payload":{payload}}}')


def body(*lines: str) -> bytes:
    return ("[" + ",".join(lines) + "]").encode()


def test_an_export_restores_with_its_ids_exact_timestamps_and_payload_texts():
    got = restored_events(body(line(7, "1764248745.123456"), line(8, "1764248745.9", '{ "b" : [1, 2] }')), 1000)
    assert got == [
        Restored(7, 1764248745123456, "JERPi", '{"a": 1.50}'),
        Restored(8, 1764248745900000, "JERPi", '{ "b" : [1, 2] }'),
    ]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ((line(1), line(3)), "consecutive"),
        ((line(2), line(1)), "consecutive"),
        ((line(1, "5.5"), line(2, "5.4")), "older"),
        ((line(0),), "id must be"),
        ((line(1).replace('"id":1', '"id":"1"'),), "id must be"),
        ((line(1, "-1"),), "timestamp"),
        ((line(1, '"soon"'),), "timestamp"),
        ((line(1, "300000000000"),), "timestamp"),
        ((line(1, payload="[1]"),), "payload must be a JSON object"),
        ((line(1, issuer=""),), "issuer"),
        ((line(1).replace('"issuer"', '"writer"'),), "unknown field"),
        ((line(1, payload='{"a": 1, "a": 2}'),), "same member twice"),
        ((line(1, payload="[" * 100 + "]" * 100),), "payload must be a JSON object"),
        ((line(1, payload='{"a":' + "[" * 100 + "]" * 100 + "}"),), "nested deeper"),
        (("[1]",), "not a JSON object"),
    ],
)
def test_a_batch_breaking_a_rule_is_refused_with_a_message(lines, message):
    with pytest.raises(InvalidInput, match=message):
        restored_events(body(*lines), 1000)


def test_a_payload_as_deep_as_a_publish_allows_is_restored():
    deep = '{"a":' + "[" * 98 + "]" * 98 + "}"  # 99 levels
    assert restored_events(body(line(1, payload=deep)), 1000)[0].payload == deep
    deepest = "{" + '"a":{' * 99 + "}" * 99 + "}"  # 100 levels
    assert restored_events(body(line(1, payload=deepest)), 1000)[0].payload == deepest


@pytest.mark.parametrize("text", [b"", b"  ", b"{}", b"[]", b"[1,", b"\xff"])
def test_anything_but_a_non_empty_array_is_refused(text):
    with pytest.raises(InvalidInput):
        restored_events(text, 1000)


def test_a_batch_over_the_limit_is_too_large():
    with pytest.raises(TooLarge):
        restored_events(body(line(1), line(2), line(3)), 2)


def test_after_is_required_and_bounded():
    assert after_param({"after": "0"}) == 0 and after_param({"after": "41"}) == 41
    for query in ({}, {"after": "-1"}, {"after": "x"}, {"after": str(2**63)}):
        with pytest.raises(InvalidInput):
            after_param(query)
