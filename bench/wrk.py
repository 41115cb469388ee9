"""Request throughput with ``wrk`` (Debian package ``wrk``), POST via a Lua script.

The script spreads requests round-robin over ``channels`` paths (``prefix`` +
number) and prints one machine-readable summary line from wrk's ``done``
hook, so nothing depends on wrk's human output format.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Optional

INSTALL_HINT = "apt-get install -y wrk"
#: wrk's ``--timeout``; a request slower than this counts as an error.
REQUEST_TIMEOUT_S = 10

_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-EVENT-ISSUER"] = "bench"
{extra_headers}
local prefix = "{prefix}"
local channels = {channels}
local counter = 0
{request}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "bad_status": %d, "timeouts": %d, ' ..
    '"p50_ms": %.3f, "p99_ms": %.3f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


#: Each request to the next channel, round-robin.
_REQUEST = """\
request = function()
  counter = counter + 1
  return wrk.format(nil, prefix .. (counter % channels))
end"""
#: The same, with a header whose value is unique to the request (``{name}``).
_REQUEST_UNIQUE = """\
local unique = "{tag}-" .. tostring(os.time()) .. "-" .. tostring(math.random(1000000000))
request = function()
  counter = counter + 1
  local headers = {{}}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["{name}"] = unique .. "-" .. counter
  return wrk.format(nil, prefix .. (counter % channels), headers)
end"""


def missing() -> Optional[str]:
    """Why wrk cannot run here (with the install command), or None."""
    if shutil.which("wrk") is None:
        return f"wrk not installed ({INSTALL_HINT})"
    return None


def post(port: int, prefix: str, body: bytes, *, channels: int, connections: int,
         seconds: int, threads: int, workdir: Path, tag: str,
         headers: Optional[dict[str, str]] = None, unique_header: Optional[str] = None) -> dict:
    """POST ``body`` for ``seconds`` over ``connections`` keep-alive connections.

    ``unique_header``: a header (``Idempotency-Key``) sent with a value no
    other request of any run has.

    Returns requests/s and error counts; ``bad_status`` counts answers that
    are not 2xx/3xx (a 503 under load shows up there).
    """
    if b"]==]" in body:
        raise ValueError("body must not contain the Lua long-bracket terminator")
    script = workdir / f"wrk-{tag}.lua"
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    request = _REQUEST if unique_header is None else _REQUEST_UNIQUE.format(name=unique_header, tag=tag)
    script.write_text(_SCRIPT.format(body=body.decode(), prefix=prefix, channels=channels,
                                     extra_headers=extra, request=request))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
           f"--timeout={REQUEST_TIMEOUT_S}s", "-s", str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result = json.loads(line[len("WRKJSON "):])
            break
    else:
        raise RuntimeError(f"wrk gave no summary (exit {out.returncode}):\n"
                           f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    seconds_run = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors",
                                     "bad_status", "timeouts"))
    ok = max(0, result["requests"] - result["bad_status"])
    return {
        "requests": result["requests"],
        "seconds": round(seconds_run, 3),
        "rps": ok / seconds_run if seconds_run else 0.0,
        "errors": errors,
        "bad_status": result["bad_status"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
    }
