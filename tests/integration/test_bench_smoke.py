"""The benchmark runner keeps working: a smoke run goes end to end.

No assertion on speed -- only that ``python -m bench --smoke`` exits 0 and
its JSON reports every scenario, each either measured or skipped with a
reason (a machine without wrk or Nchan skips those parts).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO

SCENARIOS = {"publish", "publish-auth", "publish-keyed", "batch", "wake", "waiters", "large-store", "sse",
             "memory", "webhooks", "retention", "workers"}
SMOKE_TIMEOUT_S = 150


@pytest.mark.bench
@pytest.mark.timeout(SMOKE_TIMEOUT_S + 30)
def test_bench_smoke_run_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=str(REPO), capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    document = json.loads(out.read_text())
    assert document["meta"]["mode"] == "smoke"
    assert set(document["scenarios"]) == SCENARIOS
    for name, scenario in document["scenarios"].items():
        assert scenario["status"] in ("measured", "skipped"), (name, scenario)
        if scenario["status"] == "skipped":
            assert scenario["reason"], name
            continue
        assert scenario["figures"], name
        for figure in scenario["figures"]:
            assert figure["eventbus"] is not None, (name, figure)
            assert figure["target"] is None or figure["pass"] in (True, False), (name, figure)
    # The table is printed too, one line per scenario at least.
    for name in SCENARIOS:
        assert name in proc.stdout
