"""Structured logs (issue 11): ``X-Request-Id`` on every answer, JSON lines,
and twistd told to use the JSON observer by ``--log-format json``.

The request ids are checked on the real site and channel classes over an
in-memory transport (as tests/unit/test_site.py drives them).
"""
from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.scripts import twistd

from eventbus import logs
from eventbus.config import Options
from eventbus.http.accesslog import access_fields, access_log_line
from eventbus.http.site import EventBusSite
from tests.unit.test_site import DEADLINE_S, connect, site

RID = re.compile(rb"X-Request-Id: ([^\r]+)\r\n")


def ids(raw: bytes) -> list[bytes]:
    return RID.findall(raw)


@pytest.mark.parametrize("sent, echoed", [
    (b"abc-123", True), (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
    (b"dXNlcjE=/+:@._", True), (b"a" * 128, True),
    (b"a" * 129, False), (b"with space", False), (b'quote"', False), (b"", False),
])
def test_a_valid_request_id_is_echoed_and_any_other_replaced(sent, echoed):
    s, _, _ = site()
    channel, transport = connect(s)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\nX-Request-Id: " + sent + b"\r\n\r\n")
    [got] = ids(transport.value())
    if echoed:
        assert got == sent
    else:
        assert re.fullmatch(rb"[0-9a-f]{32}", got)


def test_a_request_id_sent_twice_is_replaced_and_each_request_gets_its_own():
    s, _, _ = site()
    channel, transport = connect(s)
    twice = b"GET /x HTTP/1.1\r\nHost: h\r\nX-Request-Id: a\r\nX-Request-Id: b\r\n\r\n"
    channel.dataReceived(twice + b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
    first, second = ids(transport.value())
    assert first not in (b"a", b"b") and second != first


def test_refusals_written_straight_to_the_connection_carry_a_request_id_too():
    s, _, clock = site(max_body=10)
    channel, transport = connect(s)
    channel.dataReceived(
        b"POST /x HTTP/1.1\r\nHost: h\r\nX-Request-Id: big-1\r\nContent-Length: 100\r\n\r\n"
    )
    assert b" 413 " in transport.value() and ids(transport.value()) == [b"big-1"]
    channel, transport = connect(s)
    channel.dataReceived(b"GET /x HT")
    clock.advance(DEADLINE_S)  # the request deadline: a 408
    assert b" 408 " in transport.value() and len(ids(transport.value())) == 1


def finished_request(s: EventBusSite) -> Any:
    channel, transport = connect(s)
    seen: list[Any] = []
    s.log = seen.append  # type: ignore[method-assign]
    channel.dataReceived(b"GET /x?access_token=ebt_secret HTTP/1.1\r\nHost: h\r\nX-Request-Id: r-1\r\n"
                         b"User-Agent: ua\r\n\r\n")
    [request] = seen
    return request


def test_the_access_line_carries_the_request_id_and_the_json_fields_the_route_status_and_duration():
    request = finished_request(site()[0])
    line = access_log_line("[ts]", request)
    assert line.endswith('"ua" "r-1"') and "ebt_secret" not in line
    fields = access_fields(request)
    assert fields["request_id"] == "r-1" and fields["status"] == 200 and fields["method"] == "GET"
    assert "ebt_secret" not in fields["path"] and fields["user_agent"] == "ua"
    assert fields["route"] is None  # not a routed API request
    assert isinstance(fields["duration"], float) and fields["duration"] >= 0


def test_a_json_access_log_file_gets_one_object_a_line():
    s, _, _ = site()
    stream = io.StringIO()
    s._logFile = stream
    s.log_format = logs.JSON
    request = finished_request(site()[0])
    EventBusSite.log(s, request)
    record = json.loads(stream.getvalue())
    assert list(record)[:4] == list(logs.OWN)
    assert record["logger"] == "eventbus.access" and record["request_id"] == "r-1"
    assert record["message"].startswith("GET /x?access_token=[redacted] 200")


def event(**fields: Any) -> dict:
    return {"log_time": 1764248745.5, "log_level": LogLevel.warn, "log_namespace": "eventbus.x",
            "log_format": "waited {seconds} s for {what}", **fields}


def test_a_log_event_becomes_an_object_with_its_scalar_fields():
    record = logs.record(event(seconds=3, what="db", request_id="r", obj=object(), level="fake"))
    assert record == {"timestamp": "2025-11-27T13:05:45.500000+00:00", "level": "warn",
                      "logger": "eventbus.x", "message": "waited 3 s for db", "seconds": 3,
                      "what": "db", "request_id": "r"}


def test_a_failure_carries_its_traceback_and_a_legacy_event_its_text():
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    record = logs.record(event(log_failure=failure, seconds=1, what="x"))
    assert record["message"] == "waited 1 s for x" and "ZeroDivisionError" in record["traceback"]
    legacy = {"message": ("hello",), "time": 1.0, "isError": 0, "log_time": 1.0, "log_text": "hello",
              "log_format": "{log_text}", "log_level": LogLevel.info, "log_namespace": "log_legacy",
              "log_system": "HTTPChannel,0,127.0.0.1", "system": "HTTPChannel,0,127.0.0.1"}
    assert logs.record(legacy) == {"timestamp": "1970-01-01T00:00:01.000000+00:00", "level": "info",
                                   "logger": "log_legacy", "message": "hello",
                                   "system": "HTTPChannel,0,127.0.0.1"}


def test_the_observer_writes_one_line_per_event():
    stream = io.StringIO()
    observer = logs.JsonLineObserver(stream)
    observer(event(seconds=1, what="a\nb"))
    observer(event(seconds=2, what="c"))
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["seconds"] for line in lines] == [1, 2]


def test_log_format_json_makes_twistd_log_through_the_json_observer(tmp_path):
    config = twistd.ServerOptions()
    config.parseOptions(["--nodaemon", "--logfile", str(tmp_path / "x.log"), "eventbus", "--log-format", "json"])
    assert config["logger"] is logs.json_observer  # twistd imported it by the name we gave
    observer = config["logger"]()
    observer(event(seconds=1, what="x"))
    assert json.loads((tmp_path / "x.log").read_text())["seconds"] == 1
    plain = twistd.ServerOptions()
    plain.parseOptions(["--nodaemon", "eventbus"])
    assert plain["logger"] is None


def test_log_format_json_and_twistds_own_logger_conflict_and_other_formats_are_refused():
    with pytest.raises(usage.UsageError):
        twistd.ServerOptions().parseOptions(
            ["--nodaemon", "--logger", "eventbus.logs.json_observer", "eventbus", "--log-format", "json"]
        )
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--log-format", "xml"])
