"""The client library's pure parts: the incremental readers of long answers,
the errors mapped from statuses, how a follow resumes, and the calls as data."""
from __future__ import annotations

import json

import pytest

from eventbus.client import calls, errors
from eventbus.client.model import Event
from eventbus.client.resume import Resume
from eventbus.client.wire import ArrayReader, Message, SSEReader, members

EVENTS = [
    {"id": 1, "issuer": "a", "context": "c", "channel": "ch", "timestamp": 1.5, "payload": {"s": "x]}\"[{", "n": 1}},
    {"id": 2, "issuer": "é", "context": "c", "channel": "ch", "timestamp": 2.25, "payload": {"deep": [[{"a": []}]]}},
    {"id": 3, "issuer": "b", "context": "c", "channel": "ch", "timestamp": 3, "payload": {"big": 12345678901234567890123}},
]


def body_of(events: list[dict]) -> bytes:
    # As the server writes it: compact objects joined by commas, payloads as published.
    return ("[" + ",".join(json.dumps(e, ensure_ascii=False) for e in events) + "]").encode()


def read_array(body: bytes, size: int) -> list[tuple[str, object]]:
    reader = ArrayReader()
    out = []
    for i in range(0, len(body), size):
        out += reader.feed(body[i : i + size])
    return out + reader.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_the_array_reader_returns_each_element_exactly_as_sent_whatever_the_chunks(size):
    body = body_of(EVENTS)
    got = read_array(body, size)
    assert [value for _, value in got] == EVENTS
    assert [raw for raw, _ in got] == [json.dumps(e, ensure_ascii=False) for e in EVENTS]


def test_the_array_reader_reads_an_empty_array_and_whitespace():
    assert read_array(b" [ ] ", 1) == []
    assert [v for _, v in read_array(b'[ {"a":1} ,\n {"b":2} ]', 3)] == [{"a": 1}, {"b": 2}]


def test_the_array_reader_refuses_a_body_cut_short():
    reader = ArrayReader()
    reader.feed(body_of(EVENTS)[:-10])
    with pytest.raises(ValueError):
        reader.close()


def test_the_array_reader_does_not_reparse_a_large_element_at_every_chunk(monkeypatch):
    from eventbus.client import wire

    tries = []
    real = wire._DECODER.raw_decode

    def counting(s, i=0):
        tries.append(i)
        return real(s, i)

    monkeypatch.setattr(wire._DECODER, "raw_decode", counting)
    big = [{"id": 1, "payload": {"x": "y" * 1_000_000}}]
    assert [v for _, v in read_array(body_of(big), 1000)] == big
    assert len(tries) < 30  # about log2(1 MB / 1 KB) attempts, not 1,000


def feed_sse(body: bytes, size: int) -> list[Message]:
    reader = SSEReader()
    out: list[Message] = []
    for i in range(0, len(body), size):
        out += list(reader.feed(body[i : i + size]))
    return out


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_the_sse_reader_splits_messages_whatever_the_chunks_and_line_ends(size, eol):
    lines = [b": connected", b"", b"id: 7", b"event: event", b"data: {\"a\":", b"data:  1}", b"",
             b": keepalive", b"", b"id: 9", b"event: expired", b'data: {"first_id": 10}', b"", b"data: x", b""]
    # (A CR at the end of what came may be the first half of a CRLF: the
    # line it ends is complete once the next byte is known.)
    got = feed_sse(eol.join(lines) + eol + b": more" + eol, size)
    assert got == [
        Message("event", '{"a":\n 1}', "7"),
        Message("expired", '{"first_id": 10}', "9"),
        Message("message", "x", None),
    ]


def test_members_gives_each_value_as_written():
    text = '{"id": 5, "payload" : {"a": 1.50, "b": [1, 2]}, "timestamp":1.000100}'
    found = members(text)
    assert found["payload"][0] == '{"a": 1.50, "b": [1, 2]}'
    assert found["timestamp"] == ("1.000100", 1.0001)
    assert members("{}") == {}
    for bad in ("[]", '{"a" 1}', '{"a": 1 "b": 2}'):
        with pytest.raises(ValueError):
            members(bad)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, errors.BadRequest), (401, errors.Unauthorized), (403, errors.Forbidden), (404, errors.NotFound),
     (409, errors.Conflict), (413, errors.TooLarge), (422, errors.Unprocessable), (429, errors.TooManyRequests),
     (503, errors.Unavailable), (500, errors.ServerError), (418, errors.ServerError)],
)
def test_every_status_maps_to_its_error_with_the_servers_message(status, cls):
    e = errors.error_for(status, b'{"error": "no such thing", "last_id": 41}')
    assert type(e) is cls and e.status == status and e.message == "no such thing"
    assert str(e) == f"{status} no such thing"
    assert e.retryable == (status in (429, 503))


def test_a_409_carries_the_channels_last_id_and_a_410_what_was_missed():
    assert errors.error_for(409, b'{"error": "x", "last_id": 41}').last_id == 41
    gone = errors.error_for(410, b'{"error": "pruned", "first_id": 50, "missed": 9}')
    assert isinstance(gone, errors.Expired) and (gone.first_id, gone.missed) == (50, 9)
    assert errors.error_for(502, b"<html>bad gateway</html>").message == "<html>bad gateway</html>"


def test_unreachable_is_a_retryable_unavailable():
    assert issubclass(errors.Unreachable, errors.Unavailable) and errors.Unreachable("x").retryable


def event_message(event_id: int) -> Message:
    data = json.dumps({"id": event_id, "issuer": "i", "context": "c", "channel": "ch", "timestamp": 1.0,
                       "payload": {}})
    return Message("event", data, str(event_id))


def test_a_follow_resumes_after_the_last_event_it_handed_out_and_never_repeats_one():
    resume = Resume("c", "ch", 4)
    assert resume.request()[2]["Last-Event-ID"] == "4"
    assert resume.take(event_message(5)).id == 5
    assert resume.take(event_message(5)) is None  # a repeat is dropped
    assert resume.take(event_message(3)) is None
    assert resume.request()[2]["Last-Event-ID"] == "5"


def test_an_expired_message_raises_or_is_counted_on_the_next_event():
    with pytest.raises(errors.Expired) as raised:
        Resume("c", "ch", 4).take(Message("expired", '{"first_id": 10, "missed": 5}', "9"))
    assert (raised.value.first_id, raised.value.missed) == (10, 5)
    resume = Resume("c", "ch", 4, on_expired="skip")
    assert resume.take(Message("expired", '{"first_id": 10, "missed": 5}', "9")) is None
    assert resume.request()[2]["Last-Event-ID"] == "9"
    event = resume.take(event_message(10))
    assert (event.id, event.missed) == (10, 5)
    assert resume.take(event_message(11)).missed == 0


def test_a_streams_error_message_ends_it_as_unauthorized():
    with pytest.raises(errors.Unauthorized, match="token revoked"):
        Resume("c", "ch", 0).take(Message("error", '{"error": "token revoked"}', None))


def test_only_retryable_errors_are_waited_out():
    resume = Resume("c", "ch", 0)
    assert 0 < resume.retry_in(errors.Unreachable("down")) < 1
    with pytest.raises(errors.Forbidden):
        resume.retry_in(errors.Forbidden("no", status=403))


def test_a_publish_is_resent_only_with_an_idempotency_key():
    with_key = calls.publish("c", "ch", b"{}", calls.publish_headers("i", "k", None))
    without = calls.publish("c", "ch", b"{}", calls.publish_headers("i", None, None))
    assert with_key.retry and not without.retry
    assert with_key.headers["Idempotency-Key"] == "k" and with_key.headers["X-EVENT-ISSUER"] == "i"
    assert calls.publish_headers(None, None, 0)["Expected-Last-Id"] == "0"
    assert calls.new_key() != calls.new_key()


def test_batches_are_cut_by_count_and_by_size():
    payloads = [b"x" * 10] * 7
    assert [len(b) for b in calls.batches(payloads, 3, 10_000)] == [3, 3, 1]
    assert [len(b) for b in calls.batches(payloads, 100, 35)] == [3, 3, 1]  # 2 + 3 * 11 <= 35
    assert [len(b) for b in calls.batches([b"y" * 100], 100, 35)] == [1]  # one larger event alone


def test_a_payload_given_as_text_is_sent_exactly():
    assert calls.encode('{"a": 1.50}') == b'{"a": 1.50}'
    assert calls.encode({"a": "é"}) == '{"a":"é"}'.encode()


def test_an_event_keeps_the_servers_text_beside_its_values():
    raw = '{"id":1,"issuer":"i","context":"c","channel":"ch","timestamp":1.5,"payload":{"a": 1.50}}'
    event = Event.from_json(raw)
    assert event.raw == raw and event.payload == {"a": 1.5} and event.to_dict()["id"] == 1
    with pytest.raises(errors.EventBusError):
        Event.from_json('{"id": 1}')
