"""Scenario 6: Server-Sent-Events fan-out.

Contract (the endpoint is built on another branch): ``GET
/events/{context}/{channel}/stream?after=<id>`` answers ``text/event-stream``
with one message per event, ``id: <id>``, ``event: event``, ``data: <event
JSON>``.  When the server answers that path with ``404`` the scenario is
skipped with that reason.

1,000 subscribers (4 lean epoll processes of 250, :mod:`bench.sse_client`,
so that the load client is not the bottleneck: the scenario reports the
CPU each used) stream one channel from ``after=0``; one event (seq 0, not counted) is published
first so every stream starts with a message and its headers.  Once all have
their headers and the server is quiet, events carrying ``"seq": k`` are published at 200 events/s for the
measurement time over 4 keep-alive connections.  Every subscriber records
when each seq first arrived; latency is arrival minus the instant just
before that event's POST was written (one monotonic clock for both
processes).  Targets: every event reaches every subscriber (100 %), p99 ≤
50 ms.  Reference C: Nchan's EventSource subscriber, same procedure.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Optional

from bench.httpc import Connection
from bench.procs import REPO, wait_quiet
from bench.report import Figure, Result, Target
from bench.sse_client import hist_percentile
from bench.scenarios import CONTEXT, PUBLISH_HEADERS

if TYPE_CHECKING:
    from bench.run import Context

NAME = "sse"
TITLE = "SSE fan-out"
RATE = 200
PUBLISH_CONNECTIONS = 16
P99_MAX_MS = 50.0
PAD = "0123456789abcdef0123456789abcdef"
READY_TIMEOUT_S = 120
#: Above this share of a core a subscriber process itself adds latency.
CLIENT_BUSY_PCT = 70
#: Subscriber processes the subscribers are split over.
CLIENT_PROCESSES = 4


def publish_one(port: int, path: str, seq: int) -> int:
    """One blocking POST; its status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, _body(seq), PUBLISH_HEADERS)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _body(seq: int) -> bytes:
    return b'{"seq":%d,"pad":"%s"}' % (seq, PAD.encode())


def probe(port: int, publish_path: str, stream_path: str) -> Optional[int]:
    """The status a stream request gets (reading only the status line).

    One event is published first: a server may well send its headers only
    with the first message.
    """
    publish_one(port, publish_path, 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {stream_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Accept: text/event-stream\r\n\r\n".encode())
            line = sock.makefile("rb").readline()
        return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return None


async def publish_at_rate(port: int, path: str, count: int, rate: float) -> dict:
    """POST ``count`` events at ``rate``/s; the monotonic send time of each seq."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(PUBLISH_CONNECTIONS):
        pool.put_nowait(await Connection(port).connect())
    sent: dict[int, float] = {}
    failed = []

    async def one(seq: int, conn: Connection) -> None:
        body = _body(seq)
        sent[seq] = time.monotonic()
        resp = await conn.request("POST", path, body, PUBLISH_HEADERS)
        if not 200 <= resp.status < 300:
            failed.append(resp.status)
            del sent[seq]
        pool.put_nowait(conn)

    loop = asyncio.get_running_loop()
    tasks = []
    t0 = loop.time()
    for seq in range(1, count + 1):
        delay = t0 + (seq - 1) / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(seq, await pool.get())))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    while not pool.empty():
        pool.get_nowait().close()
    return {"sent": sent, "failed": len(failed), "rate": count / elapsed if elapsed else 0.0}


def fan_out(port: int, pid: int, subscribers: int, stream_path: str, publish_path: str,
            seconds: int, drain_s: float, processes: int = CLIENT_PROCESSES) -> dict:
    """``subscribers`` split over ``processes`` client processes; their
    outcomes merged (latency percentiles over every subscriber's arrivals)."""
    count = RATE * seconds
    # seq 0 before anyone subscribes: every stream starts with it (after=0),
    # so every server sends its headers at once; it is not counted.
    status = publish_one(port, publish_path, 0)
    if not 200 <= status < 300:
        raise RuntimeError(f"publishing to {publish_path} answered {status}")
    processes = max(1, min(processes, subscribers))
    shares = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
    clients = [subprocess.Popen(
        [sys.executable, "-m", "bench.sse_client", str(port), str(share), stream_path, str(count + 10)],
        cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1")) for share in shares]
    outcomes: list[dict] = []
    try:
        for client, share in zip(clients, shares):
            assert client.stdout is not None
            ready = json.loads(client.stdout.readline() or "{}")
            if ready.get("ready") != share:
                raise RuntimeError(f"SSE subscribers not all connected: {ready}")
        wait_quiet(pid, timeout=READY_TIMEOUT_S)
        published = asyncio.run(publish_at_rate(port, publish_path, count, RATE))
        order = json.dumps({"sent": published["sent"], "drain_s": drain_s}) + "\n"
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(order)
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
    if len(outcomes) != len(clients) or not all(outcomes):
        raise RuntimeError("an SSE client gave no result")
    hist: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.pop("hist").items():
            hist[k] = hist.get(k, 0) + v
    expected = sum(o["expected"] for o in outcomes)
    received = sum(o["received"] for o in outcomes)
    cpu = [o["client_cpu_pct"] for o in outcomes]
    return {
        "subscribers": subscribers,
        "client_processes": len(clients),
        "expected": expected,
        "received": received,
        "missing": sum(o["missing"] for o in outcomes),
        "duplicates": sum(o["duplicates"] for o in outcomes),
        "closed_early": sum(o["closed_early"] for o in outcomes),
        "delivered_pct": 100.0 * received / expected if expected else 0.0,
        "p50_ms": hist_percentile(hist, 50),
        "p99_ms": hist_percentile(hist, 99),
        "max_ms": max((o["max_ms"] for o in outcomes if o.get("max_ms") is not None), default=None),
        # Share of one core each client process used while the events were
        # published, and their sum.
        "client_cpu_pct": max(cpu),
        "clients_cpu_pct": cpu,
        "clients_cpu_total_pct": round(sum(cpu), 1),
        "per_client_p99_ms": [o["p99_ms"] for o in outcomes],
        "publish_rate": published["rate"],
        "publish_failed": published["failed"],
    }


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    subscribers = ctx.size(1000, 20)
    drain_s = ctx.size(5, 2)
    bus = ctx.eventbus(ctx.database("sse"))
    status = probe(bus.port, f"/events/{CONTEXT}/probe",
                   f"/events/{CONTEXT}/probe/stream?after=0")
    if status != 200:
        return result.skip(f"endpoint missing ({status})" if status == 404
                           else f"endpoint answers {status}, not 200")
    nchan = ctx.nchan()
    runs: dict[str, list[dict]] = {"eventbus": [], "nchan": []}

    for r in range(ctx.rounds):
        steps = [lambda r=r: runs["eventbus"].append(fan_out(
            bus.port, bus.pid, subscribers, f"/events/{CONTEXT}/sse-{r}/stream?after=0",
            f"/events/{CONTEXT}/sse-{r}", ctx.seconds, drain_s))]
        if nchan is not None:
            steps.append(lambda r=r: runs["nchan"].append(fan_out(
                nchan.port, nchan.worker_pid, subscribers, f"/sse/sse-{r}",
                f"/pub/sse-{r}", ctx.seconds, drain_s)))
        ctx.alternate(r, *steps)

    def series(label: str, key: str) -> list:
        return [o[key] for o in runs[label]]

    label = f"{subscribers:,} subscribers, {RATE} events/s"
    result.figures.append(Figure(f"SSE delivered, {label}", "%", series("eventbus", "delivered_pct"),
                                 target=Target("min", 100.0, "%")))
    result.figures.append(Figure(f"SSE p99 latency, {label}", "ms", series("eventbus", "p99_ms"),
                                 target=Target("max", P99_MAX_MS, "ms")))
    result.figures.append(Figure(f"SSE p50 latency, {label}", "ms", series("eventbus", "p50_ms")))
    if nchan is not None:
        result.references.append(Figure("C: Nchan EventSource delivered", "%",
                                        series("nchan", "delivered_pct")))
        result.references.append(Figure("C: Nchan EventSource p99 latency", "ms",
                                        series("nchan", "p99_ms")))
    else:
        result.notes.append("reference C (Nchan): not installed")
    busy = max((o["client_cpu_pct"] for o in runs["eventbus"] + runs["nchan"]), default=0)
    total = max((o["clients_cpu_total_pct"] for o in runs["eventbus"]), default=0)
    result.notes.append(
        f"SSE clients: {CLIENT_PROCESSES} processes; the busiest used {busy:.0f} % of a core, "
        f"all of them together up to {total:.0f} % (details.runs[].clients_cpu_pct)")
    if busy > CLIENT_BUSY_PCT:
        result.notes.append(
            f"an SSE client process used {busy:.0f} % of a core while events were published: "
            "latencies that high are partly the client's")
    short = [o["publish_rate"] for o in runs["eventbus"] if o["publish_rate"] < 0.95 * RATE]
    if short:
        result.notes.append(f"publishers reached only {min(short):.0f} events/s of {RATE}")
    result.details = {"subscribers": subscribers, "rate": RATE, "runs": runs}
    return result
