"""--access-log: twistd's log (default), batched file or stdout, or off."""
from __future__ import annotations

import json
import re

import pytest_twisted

from tests.client import get, publish, request
from tests.servers import ServerProcess


def _request_lines(text: str, marker: str) -> list[str]:
    return [line for line in text.splitlines() if marker in line and '" 20' in line]


@pytest_twisted.ensureDeferred
async def test_batched_file_gets_every_request_line_by_shutdown(dsn, tmp_path, channel_name):
    path = tmp_path / "access.log"
    server = ServerProcess(["--dsn", dsn, "--access-log", str(path)], tmp_path).start()
    try:
        for i in range(5):
            assert (await publish(server.base, "alog", channel_name, {"i": i})).code == 201
        assert (await get(server.url(f"/events/alog/{channel_name}"))).code == 200
    finally:
        assert server.stop() == 0
    lines = _request_lines(path.read_text(), channel_name)
    assert len([line for line in lines if '"POST ' in line]) == 5
    assert len([line for line in lines if '"GET ' in line]) == 1
    # ...and none of them went through twistd's log.
    assert _request_lines(server.log_path.read_text(), channel_name) == []


@pytest_twisted.ensureDeferred
async def test_stdout_and_off(dsn, tmp_path, channel_name):
    for mode, expected in (("-", 3), ("off", 0), ("twistd", 3)):
        server = ServerProcess(["--dsn", dsn, "--access-log", mode], tmp_path / mode).start()
        try:
            for i in range(3):
                r = await publish(server.base, "alog", f"{channel_name}-{mode}", {"i": i})
                assert r.code == 201
        finally:
            assert server.stop() == 0
        lines = _request_lines(server.log_path.read_text(), f"{channel_name}-{mode}")
        assert len(lines) == expected, (mode, lines)


@pytest_twisted.ensureDeferred
async def test_log_format_json_writes_every_line_as_an_object_and_each_request_with_its_id(
    dsn, tmp_path, channel_name
):
    server = ServerProcess(["--dsn", dsn, "--log-format", "json"], tmp_path).start()
    try:
        r = await request("POST", server.url(f"/events/alog/{channel_name}"), json_body={"i": 1},
                          headers={"X-EVENT-ISSUER": "t", "X-Request-Id": "trace-7"})
        assert r.code == 201 and r.header("X-Request-Id") == "trace-7"
        r = await get(server.url(f"/events/alog/{channel_name}/999"))
        assert r.code == 404 and re.fullmatch(r"[0-9a-f]{32}", r.header("X-Request-Id") or "")
        generated = r.header("X-Request-Id")
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
    assert all(list(line)[:4] == ["timestamp", "level", "logger", "message"] for line in lines)
    [publish_line] = [line for line in lines if line.get("request_id") == "trace-7"]
    assert publish_line["route"] == "/events/{context}/{channel}" and publish_line["status"] == 201
    assert publish_line["logger"] == "eventbus.access" and publish_line["duration"] >= 0
    [missing] = [line for line in lines if line.get("request_id") == generated]
    assert missing["status"] == 404 and missing["route"] == "/events/{context}/{channel}/{event_id}"
    assert any(line["logger"] == "eventbus.service" for line in lines)  # our own lines too


@pytest_twisted.ensureDeferred
async def test_text_access_lines_end_with_the_request_id(dsn, tmp_path, channel_name):
    server = ServerProcess(["--dsn", dsn], tmp_path).start()
    try:
        r = await request("POST", server.url(f"/events/alog/{channel_name}"), json_body={"i": 1},
                          headers={"X-EVENT-ISSUER": "t", "X-Request-Id": "trace-8"})
        assert r.code == 201
    finally:
        assert server.stop() == 0
    [line] = _request_lines(server.log_path.read_text(), channel_name)
    assert line.endswith('"trace-8"'), line
