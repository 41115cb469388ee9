"""Without ``--dsn``: the server runs its own PostgreSQL in ``--data-dir``.

It starts it, stops it again on SIGTERM, and the events survive a restart.
Also through the twistd plugin, the way an operator would run it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted

from eventbus.storage.embedded import EmbeddedPostgres
from tests.client import get, publish
from tests.servers import REPO, ServerProcess

CTX = "embedded"
CHANNEL = "survives"

TWISTD = str(Path(sys.executable).parent / "twistd")


class TwistdProcess(ServerProcess):
    """``twistd -n --pidfile= eventbus ...``: the plugin path instead of ``-m``."""

    def command(self) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", "eventbus"]

    def environment(self) -> dict[str, str]:
        # The repository first on the path, so the source under test is what
        # runs (the plugin dropin itself is found in the installed package).
        return dict(super().environment(), PYTHONPATH=str(REPO))


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh --data-dir; whatever the test's outcome, no PostgreSQL is left running in it."""
    path = tmp_path / "data"
    yield path
    if path.exists():
        EmbeddedPostgres(path).stop(force=True)


async def history(server: ServerProcess) -> list[dict]:
    r = await get(server.url(f"/events/{CTX}/{CHANNEL}"))
    assert r.code == 200, r
    return r.json()


@pytest_twisted.ensureDeferred
async def test_embedded_postgres_is_started_stopped_and_keeps_events(tmp_path, data_dir):
    pg = EmbeddedPostgres(data_dir)
    server = ServerProcess(["--data-dir", str(data_dir)], tmp_path / "run1")
    try:
        server.start()
        assert pg.is_running(), "the server answers but no PostgreSQL runs in --data-dir"
        for n in (1, 2):
            r = await publish(server.base, CTX, CHANNEL, {"n": n})
            assert r.code == 201, r
    finally:
        code = server.stop()
    assert code == 0, f"SIGTERM exit code {code}:\n{server.log_tail()}"
    assert not pg.is_running(), "the embedded PostgreSQL outlived its server"

    again = ServerProcess(["--data-dir", str(data_dir)], tmp_path / "run2")
    try:
        again.start()
        assert [(e["id"], e["payload"]) for e in await history(again)] == \
            [(1, {"n": 1}), (2, {"n": 2})]
        r = await publish(again.base, CTX, CHANNEL, {"n": 3})
        assert r.code == 201 and r.json()["id"] == 3, r
    finally:
        code = again.stop()
    assert code == 0, f"SIGTERM exit code {code}:\n{again.log_tail()}"
    assert not pg.is_running()


def test_twistd_help_lists_the_eventbus_plugin(tmp_path):
    # Outside the repository: the installed dropin must be found on its own.
    out = subprocess.run([TWISTD, "--help"], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=""))
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert any(words[:1] == ["eventbus"] for words in lines), out.stdout


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_runs_embedded_postgres_and_stops_it(tmp_path, data_dir):
    pg = EmbeddedPostgres(data_dir)
    server = TwistdProcess(["--data-dir", str(data_dir)], tmp_path)
    try:
        server.start()
        assert pg.is_running()
        r = await publish(server.base, CTX, CHANNEL, {"via": "twistd"})
        assert r.code == 201, r
        assert [e["payload"] for e in await history(server)] == [{"via": "twistd"}]
    finally:
        code = server.stop()
    # twistd itself re-raises the signal that stopped it (Twisted's own
    # convention), so here a death by SIGTERM after a clean shutdown is fine.
    assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{server.log_tail()}"
    assert "Server Shut Down." in server.log_path.read_text(errors="replace")
    assert "Traceback" not in server.log_path.read_text(errors="replace"), server.log_tail()
    assert not pg.is_running(), "the embedded PostgreSQL outlived its server"
