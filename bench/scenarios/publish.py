"""Scenario 1: single-event publish throughput against the stack's ceiling.

wrk with 64 keep-alive connections POSTs one 63-byte event per request,
round-robin over 16 channels, to the event bus and to baseline A (a bare
Klein route on the same twistd/Site/logging that stores nothing).  The
figure is successful requests per second; target: event bus ≥ 0.8 × A.
Reference C: the same load on Nchan's publisher endpoint.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench import wrk
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT

if TYPE_CHECKING:
    from bench.run import Context

NAME = "publish"
TITLE = "single-event publish, 64 keep-alive clients"
CONNECTIONS = 64
CHANNELS = 16
#: One wrk thread: the server is one Python process and PostgreSQL needs the
#: other core; a second wrk thread would only take CPU from them.
WRK_THREADS = 1
TARGET_RATIO = 0.8


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    if reason := wrk.missing():
        return result.skip(reason)
    bus = ctx.eventbus(ctx.database("publish"))
    base = ctx.baseline_klein()
    nchan = ctx.nchan()
    rounds: dict[str, list] = {"eventbus": [], "baseline": [], "nchan": []}
    runs: dict[str, list] = {"eventbus": [], "baseline": [], "nchan": []}

    def measure(label: str, port: int, prefix: str) -> None:
        out = wrk.post(port, prefix, EVENT, channels=CHANNELS, connections=CONNECTIONS,
                       seconds=ctx.seconds, threads=WRK_THREADS, workdir=ctx.workdir,
                       tag=f"{NAME}-{label}")
        runs[label].append(out)
        rounds[label].append(out["rps"])

    for r in range(ctx.rounds):
        steps = [lambda: measure("eventbus", bus.port, f"/events/{CONTEXT}/p"),
                 lambda: measure("baseline", base.port, f"/events/{CONTEXT}/p")]
        if nchan is not None:
            steps.append(lambda: measure("nchan", nchan.port, "/pub/p"))
        ctx.alternate(r, *steps)

    result.figures.append(Figure(
        "publish, 1 event/request, 64 conns", "req/s", rounds["eventbus"],
        baseline_name="A: bare Klein", baseline_rounds=rounds["baseline"],
        target=Target("ratio_min", TARGET_RATIO)))
    if nchan is not None:
        result.references.append(Figure("C: Nchan publish, same load", "req/s",
                                        rounds["nchan"]))
    else:
        result.notes.append("reference C (Nchan): not installed")
    errors = sum(o["errors"] for o in runs["eventbus"])
    if errors:
        result.notes.append(f"eventbus answered {errors} requests with errors "
                            "(not 2xx, timeouts or resets); they are not counted")
    result.details = {"wrk": runs, "connections": CONNECTIONS, "channels": CHANNELS,
                      "wrk_threads": WRK_THREADS, "seconds": ctx.seconds}
    return result
