"""--access-log: twistd's log (default), batched file or stdout, or off."""
from __future__ import annotations

import pytest_twisted

from tests.client import get, publish
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
