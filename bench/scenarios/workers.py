"""Scenario 10: ``--workers``: one port served by several processes.

Two loads, each against three set-ups on one database:

* ``--workers 1`` (one process, as every other scenario runs it);
* ``--workers 2`` (a parent and two workers sharing the port);
* two hand-started processes on two ports, behind nothing: the load split
  between them by hand (two wrk instances at once, half the connections
  each; half the SSE subscribers on each port).

Loads: ``publish`` (wrk, 64 keep-alive connections, one 63-byte event per
request over 16 channels: requests/s, the scaling ratio being 2 workers
over 1) and ``sse`` (subscribers streaming one channel while events are
published at 200/s: p99 latency, all delivered).  Target: the built-in
workers do at least as well as the two hand-started processes
(ratio ≥ 1.0 for publish; for SSE the two p99s are reported side by side).
On this 2-core machine the server processes, PostgreSQL and the load
generators share the cores, so more processes cannot double anything.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bench import wrk
from bench.procs import REPO, cpu_seconds, wait_quiet
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT
from bench.scenarios.sse import RATE, publish_at_rate, publish_one

if TYPE_CHECKING:
    from bench.procs import EventBus
    from bench.run import Context

NAME = "workers"
TITLE = "--workers 2 beside 1 and beside two hand-started processes"
CONNECTIONS = 64
CHANNELS = 16
TARGET_RATIO = 1.0


def server_pids(server: EventBus) -> list[int]:
    """The processes that serve: a parent's workers, else the server itself."""
    path = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    return children or [server.pid]


def publish_load(ctx: Context, ports: list[int], pids: list[int], tag: str) -> dict:
    """wrk at every port at once, the connections split between them; summed,
    with the CPU time the server processes (``pids``) spent per request."""
    outs: list[dict] = []
    cpu_before = sum(cpu_seconds(pid) for pid in pids)

    def one(port: int, index: int) -> None:
        outs.append(wrk.post(port, f"/events/{CONTEXT}/w{index}-", EVENT, channels=CHANNELS,
                             connections=CONNECTIONS // len(ports), seconds=ctx.seconds, threads=1,
                             workdir=ctx.workdir, tag=f"{NAME}-{tag}-{index}"))

    threads = [threading.Thread(target=one, args=(port, i)) for i, port in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    requests = sum(o["requests"] for o in outs)
    return {"rps": sum(o["rps"] for o in outs), "errors": sum(o["errors"] for o in outs),
            "p99_ms": max(o["p99_ms"] for o in outs), "runs": outs,
            "cpu_us_per_request": 1e6 * cpu / requests if requests else None}


def sse_load(ports: list[int], pids: list[int], subscribers: int, channel: str, seconds: int,
             drain_s: float) -> dict:
    """Subscribers split over ``ports`` (one client process each), events
    published through the first port at RATE/s; the worst p99 of the clients."""
    stream = f"/events/{CONTEXT}/{channel}/stream?after=0"
    path = f"/events/{CONTEXT}/{channel}"
    publish_one(ports[0], path, 0)
    count = RATE * seconds
    clients = [subprocess.Popen(
        [sys.executable, "-m", "bench.sse_client", str(port), str(subscribers // len(ports)), stream,
         str(count + 10)],
        cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1")) for port in ports]
    try:
        for client in clients:
            assert client.stdout is not None
            ready = json.loads(client.stdout.readline() or "{}")
            if ready.get("ready") != subscribers // len(ports):
                raise RuntimeError(f"SSE subscribers not all connected: {ready}")
        for pid in pids:
            wait_quiet(pid, timeout=120)
        published = asyncio.run(publish_at_rate(ports[0], path, count, RATE))
        outcomes = []
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(json.dumps({"sent": published["sent"], "drain_s": drain_s}) + "\n")
            client.stdin.flush()
        for client in clients:
            assert client.stdout is not None
            outcomes.append(json.loads(client.stdout.readline() or "{}"))
            client.wait(60)
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    expected = sum(o["expected"] for o in outcomes)
    return {
        "delivered_pct": 100.0 * sum(o["received"] for o in outcomes) / expected if expected else 0.0,
        "p99_ms": max((o["p99_ms"] for o in outcomes if o.get("p99_ms") is not None), default=None),
        "p50_ms": max((o["p50_ms"] for o in outcomes if o.get("p50_ms") is not None), default=None),
        "client_cpu_pct": max(o.get("client_cpu_pct", 0) for o in outcomes),
        "publish_rate": published["rate"],
    }


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    dsn = ctx.database("workers")
    one = ctx.eventbus(dsn, "--workers", "1")
    two = ctx.eventbus(dsn, "--workers", "2")
    first, second = ctx.eventbus(dsn), ctx.eventbus(dsn)
    setups = {"1 worker": ([one.port], [one]), "2 workers": ([two.port], [two]),
              "2 processes": ([first.port, second.port], [first, second])}
    publish: dict[str, list] = {k: [] for k in setups}
    sse: dict[str, list] = {k: [] for k in setups}
    subscribers = ctx.size(1000, 20)
    drain_s = ctx.size(5, 2)
    for r in range(ctx.rounds):
        order = list(setups) if r % 2 == 0 else list(reversed(setups))
        if not wrk.missing():
            for label in order:
                ports, servers = setups[label]
                # The parent too: what the built-in workers cost in all.
                pids = [s.pid for s in servers] + [p for s in servers for p in server_pids(s) if p != s.pid]
                publish[label].append(publish_load(ctx, ports, pids, f"{label[0]}{label[2]}-{r}"))
        for label in order:
            ports, servers = setups[label]
            pids = [pid for s in servers for pid in server_pids(s)]
            sse[label].append(sse_load(ports, pids, subscribers, f"w{label[0]}{label[2]}-{r}",
                                       ctx.seconds, drain_s))

    def series(runs: list[dict], key: str) -> list:
        return [o[key] for o in runs]

    if publish["1 worker"]:
        result.figures.append(Figure(
            "publish, --workers 2 over 2 hand-started processes", "req/s",
            series(publish["2 workers"], "rps"), baseline_name="2 processes, 2 wrk",
            baseline_rounds=series(publish["2 processes"], "rps"),
            target=Target("ratio_min", TARGET_RATIO)))
        result.figures.append(Figure(
            "server CPU per publish, --workers 2 (parent included) over 2 processes", "µs",
            series(publish["2 workers"], "cpu_us_per_request"), baseline_name="2 processes",
            baseline_rounds=series(publish["2 processes"], "cpu_us_per_request")))
        result.figures.append(Figure(
            "publish, --workers 2 over --workers 1 (scaling)", "req/s",
            series(publish["2 workers"], "rps"), baseline_name="--workers 1",
            baseline_rounds=series(publish["1 worker"], "rps")))
    else:
        result.notes.append(f"publish part skipped: {wrk.missing()}")
    label = f"{subscribers:,} subscribers, {RATE} events/s"
    result.figures.append(Figure(f"SSE delivered, --workers 2, {label}", "%",
                                 series(sse["2 workers"], "delivered_pct"),
                                 target=Target("min", 100.0, "%")))
    for setup in setups:
        result.figures.append(Figure(f"SSE p99, {setup}, {label}", "ms", series(sse[setup], "p99_ms")))
    busy = max((o["client_cpu_pct"] for runs in sse.values() for o in runs), default=0)
    result.notes.append(f"SSE client processes used up to {busy:.0f} % of a core each")
    result.details = {"publish": publish, "sse": sse, "connections": CONNECTIONS,
                      "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    return result
