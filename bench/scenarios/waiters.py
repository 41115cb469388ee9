"""Scenario 4: 10,000 concurrent long-poll waiters on one server process.

A separate process (:mod:`bench.holder`) holds 10,000 ``peek`` requests
open, one per channel, on channels nobody publishes to.  Figures:

* the server's resident memory (VmRSS from ``/proc/<pid>/status``) at its
  highest while they are held -- sampled once they are all registered and
  again after the publish load below; target ≤ 400 MB.  Beside it: the
  same process before it ever held a waiter.
* the growth of VmRSS over that fresh process per held waiter, read once
  they are all registered (before any publish load); target ≤ 10 KiB
  (issue 14: 10,000 waiters ≤ 100 MB above a fresh process).
* single-event publish throughput (wrk, 64 connections, as in scenario 1)
  while they are held, beside the same without them, alternating; target:
  within 10 %, i.e. ≥ 0.9×.

Reference C: Nchan's worker RSS holding as many long-poll subscribers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench import wrk
from bench.holder import IdleWaiters
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT

if TYPE_CHECKING:
    from bench.run import Context

NAME = "waiters"
TITLE = "10,000 long-poll waiters on one process"
CONNECTIONS = 64
CHANNELS = 16
WRK_THREADS = 1
RSS_MAX_MB = 400
PER_WAITER_MAX_KIB = 10.0
TARGET_RATIO = 0.9


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    no_wrk = wrk.missing()
    count = ctx.size(10_000, 200)
    bus = ctx.eventbus(ctx.database("waiters"))
    nchan = ctx.nchan()
    rss_fresh = bus.rss_kb() / 1024
    with_rps: list[float] = []
    without_rps: list[float] = []
    rss_held: list[float] = []
    rss_registered: list[float] = []
    nchan_rss: list[float] = []
    runs: dict[str, list] = {"with": [], "without": []}
    template = f"/events/{CONTEXT}/idle-{{i}}?peek=0&timeout=300"

    def publish(label: str) -> float:
        out = wrk.post(bus.port, f"/events/{CONTEXT}/w", EVENT, channels=CHANNELS,
                       connections=CONNECTIONS, seconds=ctx.seconds, threads=WRK_THREADS,
                       workdir=ctx.workdir, tag=f"{NAME}-{label}")
        runs[label].append(out)
        return out["rps"]

    def with_waiters() -> None:
        with IdleWaiters(bus.port, count, template, bus.pid) as held:
            registered = bus.rss_kb()
            rss_registered.append(registered / 1024)
            if not no_wrk:
                with_rps.append(publish("with"))
            rss_held.append(max(registered, bus.rss_kb()) / 1024)
        if held.final.get("errors"):
            result.notes.append(f"{held.final['errors']} held waiters were cut off")

    def without_waiters() -> None:
        if not no_wrk:
            without_rps.append(publish("without"))

    for r in range(ctx.rounds):
        ctx.alternate(r, with_waiters, without_waiters)
        if nchan is not None:
            with IdleWaiters(nchan.port, count, "/sub/idle-{i}", nchan.worker_pid):
                nchan_rss.append(nchan.rss_kb() / 1024)

    result.figures.append(Figure(
        f"server RSS holding {count:,} waiters", "MB", rss_held,
        baseline_name="fresh process", baseline_rounds=[rss_fresh],
        target=Target("max", RSS_MAX_MB, "MB")))
    result.figures.append(Figure(
        f"RSS growth per held waiter, {count:,} registered", "KiB",
        [(mb - rss_fresh) * 1024 / count for mb in rss_registered],
        target=Target("max", PER_WAITER_MAX_KIB, "KiB")))
    if no_wrk:
        result.notes.append(f"publish throughput part skipped: {no_wrk}")
    else:
        result.figures.append(Figure(
            f"publish with {count:,} waiters held, 64 conns", "req/s", with_rps,
            baseline_name="without waiters", baseline_rounds=without_rps,
            target=Target("ratio_min", TARGET_RATIO)))
    if nchan is not None:
        result.references.append(Figure(f"C: Nchan worker RSS holding {count:,}", "MB",
                                        nchan_rss))
    else:
        result.notes.append("reference C (Nchan): not installed")
    if rss_held:
        per_waiter = (max(rss_held) - rss_fresh) * 1024 / count
        result.notes.append(f"about {per_waiter:.1f} KiB of server memory per held waiter "
                            "(peak RSS growth over the fresh process"
                            + (")" if no_wrk else ", publish load included)"))
    result.details = {"waiters": count, "wrk": runs, "rss_fresh_mb": rss_fresh}
    return result
