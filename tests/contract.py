"""Contract fuzzing: schemathesis against a live server, in a network namespace of its own.

    unshare --net python -m tests.contract [st run options...]

runs (inside the namespace, where only loopback exists) an embedded
PostgreSQL, a server with ``--auth required --max-wait 0.5
--webhook-allow-private``, an ``admin`` token, and ``st run`` against the
server's own ``/openapi.json`` with every check, then exits with
schemathesis's status.

Why a namespace: the fuzzer creates webhook subscriptions with URLs of its
choosing, and no setting of the server keeps it on this machine.  Without
``--webhook-allow-private`` a public URL is accepted (and delivered to),
and a host name is resolved through DNS when the subscription is created;
with it, every URL is accepted.  So the server runs with it (the URL
rules alone decide, which is what the fuzzer should see) in a namespace
whose only interface is loopback: a delivery or a DNS query to anywhere
else fails at once (ENETUNREACH), whatever URL was generated.

Revoking tokens runs last, on its own: the fuzzer lists the tokens and
could revoke its own, after which every other operation would see only 401s.

The SSE stream is left out: its answer never ends (a stream stays open
for events to come), so a fuzzer would only wait for its own timeout; its
contract is tested by ``tests/integration/test_sse.py``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from eventbus.storage.embedded import EmbeddedPostgres
from tests.servers import REPO, ServerProcess

#: What a check expects of an operation, where it differs from schemathesis's default.
CONFIG = Path(__file__).with_name("schemathesis.toml")
#: Long polls wait at most this long (the document says so, so the fuzzer
#: never asks for more).
MAX_WAIT = "0.5"
#: Not fuzzed: the SSE stream (its answer never ends; see the docstring).
EXCLUDED_PATHS = ("/events/{context}/{channel}/stream",)
#: Examples per operation and phase, a fixed seed: a bounded, repeatable run.
DEFAULT_OPTIONS = ("--max-examples", "40", "--seed", "20261111", "--workers", "1")


def isolated() -> bool:
    """Is loopback the only network interface (a namespace of our own)?"""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def loopback_up() -> None:
    """``ip link set lo up``, without needing iproute2: a new namespace's loopback is down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def admin_token(dsn: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "eventbus", "token", "create", "fuzzer", "--scope", "admin", "--dsn", dsn],
        cwd=str(REPO), capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL,
    )
    return done.stdout.strip()


#: The operation run on its own, after every other (it may revoke the fuzzer's token).
LAST = "revokeToken"


def schemathesis_command(base: str, token: str, extra: list[str]) -> list[str]:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    command = [st, "--config-file", str(CONFIG), "run", f"{base}/openapi.json", "--checks", "all",
               "-H", f"Authorization: Bearer {token}", *DEFAULT_OPTIONS]
    for path in EXCLUDED_PATHS:
        command += ["--exclude-path", path]
    return [*command, *extra]


def main(extra: list[str]) -> int:
    if not isolated():
        print("refusing to fuzz outside a network namespace: run it as `unshare --net python -m tests.contract`",
              file=sys.stderr)
        return 2
    loopback_up()
    work = Path(tempfile.mkdtemp(prefix="eventbus-contract-"))
    pg = EmbeddedPostgres(work / "pg")
    pg.start()
    server = ServerProcess(["--dsn", pg.dsn(), "--auth", "required", "--max-wait", MAX_WAIT,
                            "--webhook-allow-private", "--webhook-retry-scale", "0.05"], work)
    try:
        server.start()
        token = admin_token(pg.dsn())
        # The served document describes only what this server mounts
        # (``/metrics`` once the metrics resource is there), so it is all fuzzed.
        command = schemathesis_command(server.base, token, extra)
        code = 0
        for only in (["--exclude-operation-id", LAST], ["--include-operation-id", LAST]):
            print("$", " ".join("[token]" if "Bearer" in c else c for c in [*command, *only]), flush=True)
            done = subprocess.run([*command, *only], cwd=str(work), stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, SCHEMATHESIS_TELEMETRY="false", NO_COLOR="1"))
            code = code or done.returncode
    finally:
        server.stop()
        pg.stop(force=True)
        if os.environ.get("EVENTBUS_KEEP_CONTRACT_RUN"):
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
