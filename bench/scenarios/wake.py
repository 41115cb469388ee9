"""Scenario 3: publish-to-wake latency of a long-poll consumer.

A held-open ``peek`` waits on channel L; 10 ms after sending it (so the
server has registered it) the clock starts and one event is POSTed to L on
another keep-alive connection; the clock stops when the waiter's response
has fully arrived.  The next sample peeks past that event.  Meanwhile
5,000 idle ``peek`` requests are held open on 5,000 other channels by a
separate process (:mod:`bench.holder`).  Targets: p50 ≤ 5 ms and p99 ≤
5 ms with the idle waiters (issue 14 tightened p99 from 20 ms); the same measurement without them is shown
beside, alternating.  Reference C: Nchan long-poll, same procedure.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Callable

from bench.holder import IdleWaiters
from bench.httpc import Connection, HTTPError
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT, PUBLISH_HEADERS

if TYPE_CHECKING:
    from bench.run import Context

NAME = "wake"
TITLE = "publish-to-wake latency, long-poll peek"
SETTLE_S = 0.010
P50_MAX_MS = 5.0
P99_MAX_MS = 5.0
PEEK_TIMEOUT_S = 60


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def wake_latencies(port: int, samples: int, waiter_path: Callable[[int], str],
                         publish_path: str, waiter_ok: int = 200) -> list[float]:
    """Milliseconds from just before each publish to the waiter's full answer."""
    waiter = await Connection(port).connect()
    publisher = await Connection(port).connect()
    cursor = 0
    latencies = []
    try:
        for _ in range(samples):
            waiter.send("GET", waiter_path(cursor))
            await asyncio.sleep(SETTLE_S)
            t0 = time.perf_counter()
            publisher.send("POST", publish_path, EVENT, PUBLISH_HEADERS)
            woken = await waiter.response()
            published = await publisher.response()
            if woken.status != waiter_ok or not 200 <= published.status < 300:
                raise HTTPError(f"waiter got {woken.status}, publisher {published.status}: "
                                f"{published.body[:200]!r}")
            latencies.append((woken.received_at - t0) * 1000)
            cursor += 1
    finally:
        waiter.close()
        publisher.close()
    return latencies


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    idle = ctx.size(5000, 200)
    samples = ctx.size(500, 20)
    bus = ctx.eventbus(ctx.database("wake"))
    nchan = ctx.nchan()
    series: dict[str, list[list[float]]] = {"idle": [], "quiet": [], "nchan": []}

    def measure(label: str, port: int, waiter_path: Callable[[int], str], publish_path: str,
                idle_template: str, idle_count: int, pid: int) -> None:
        with IdleWaiters(port, idle_count, idle_template, pid):
            series[label].append(asyncio.run(
                wake_latencies(port, samples, waiter_path, publish_path)))

    idle_peek = f"/events/{CONTEXT}/idle-{{i}}?peek=0&timeout=300"
    for r in range(ctx.rounds):
        channel = f"/events/{CONTEXT}/wake-{r}"
        steps = [
            lambda ch=channel: measure(
                "idle", bus.port, lambda c: f"{ch}-i?peek={c}&timeout={PEEK_TIMEOUT_S}",
                f"{ch}-i", idle_peek, idle, bus.pid),
            lambda ch=channel: measure(
                "quiet", bus.port, lambda c: f"{ch}-q?peek={c}&timeout={PEEK_TIMEOUT_S}",
                f"{ch}-q", idle_peek, 0, bus.pid),
        ]
        if nchan is not None:
            steps.append(lambda r=r: measure(
                "nchan", nchan.port, lambda c: f"/sub/wake-{r}", f"/pub/wake-{r}",
                "/sub/idle-{i}", idle, nchan.worker_pid))
        ctx.alternate(r, *steps)

    def per_round(label: str, p: float) -> list[float]:
        return [percentile(s, p) for s in series[label]]

    for p, limit in ((50, P50_MAX_MS), (99, P99_MAX_MS)):
        result.figures.append(Figure(
            f"wake p{p}, {idle:,} idle waiters on other channels", "ms", per_round("idle", p),
            baseline_name="no idle waiters", baseline_rounds=per_round("quiet", p),
            target=Target("max", limit, "ms")))
    if nchan is not None:
        for p in (50, 99):
            result.references.append(Figure(
                f"C: Nchan long-poll wake p{p}, {idle:,} idle", "ms", per_round("nchan", p)))
    else:
        result.notes.append("reference C (Nchan): not installed")
    result.details = {
        "samples_per_round": samples, "idle_waiters": idle,
        "all_rounds": {label: {"p50_ms": percentile(sum(s, []), 50),
                               "p99_ms": percentile(sum(s, []), 99),
                               "max_ms": max(sum(s, [])),
                               "mean_ms": statistics.fmean(sum(s, []))}
                       for label, s in series.items() if s},
    }
    return result
