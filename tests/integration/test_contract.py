"""The OpenAPI document against the server: schemathesis finds nothing.

Runs :mod:`tests.contract` (every schemathesis check on every operation
but the SSE stream, a fixed seed, a server with ``--max-wait 0.5``) in a
network namespace of its own, so nothing the fuzzer makes the server do
can leave this machine.  Needs ``unshare`` (util-linux) and root, or
user namespaces for ``--map-root-user``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.servers import REPO

#: Generous: the run takes about a minute and a half on the 2-core machine.
TIMEOUT_S = 900


@pytest.mark.contract
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_schemathesis_finds_nothing_against_a_live_server():
    unshare = shutil.which("unshare")
    assert unshare is not None, "contract fuzzing runs in a network namespace: install util-linux"
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    done = subprocess.run(
        [unshare, "--net", *as_root, sys.executable, "-m", "tests.contract"],
        cwd=str(REPO), capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20000:]
    # Both runs (every operation, then revoking tokens) reached their summary.
    assert output.count("Tested:") == 2, output[-5000:]
