"""Scenario: what an ``Idempotency-Key`` costs a publish.

The load of ``publish`` (wrk, 64 keep-alive connections, one 63-byte event
per request over 16 channels) against one event bus process, every
request carrying an ``Idempotency-Key`` no other request has (so each is
stored: the conditional path's group commit, with its key lookup and key
record), beside the same load without the header on the same server;
rounds alternate which goes first.  Reported, no target: a keyed publish
does more work (a PL/pgSQL call that locks each channel, looks each key up
and writes its record) and the figure says how much.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench import wrk
from bench.report import Figure, Result
from bench.scenarios import CONTEXT, EVENT
from bench.scenarios.publish import CHANNELS, CONNECTIONS, WRK_THREADS

if TYPE_CHECKING:
    from bench.run import Context

NAME = "publish-keyed"
TITLE = "single-event publish with a unique Idempotency-Key, beside without"


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    if reason := wrk.missing():
        return result.skip(reason)
    bus = ctx.eventbus(ctx.database("publish_keyed"))
    rounds: dict[str, list] = {"keyed": [], "plain": []}
    runs: dict[str, list] = {"keyed": [], "plain": []}

    def measure(label: str, unique_header: str | None) -> None:
        out = wrk.post(bus.port, f"/events/{CONTEXT}/{label}", EVENT, channels=CHANNELS,
                       connections=CONNECTIONS, seconds=ctx.seconds, threads=WRK_THREADS,
                       workdir=ctx.workdir, tag=f"{NAME}-{label}-{len(runs[label])}",
                       unique_header=unique_header)
        runs[label].append(out)
        rounds[label].append(out["rps"])

    for r in range(ctx.rounds):
        ctx.alternate(r, lambda: measure("keyed", "Idempotency-Key"), lambda: measure("plain", None))

    result.figures.append(Figure(
        "publish with a unique Idempotency-Key, 64 conns", "req/s", rounds["keyed"],
        baseline_name="the same without the header", baseline_rounds=rounds["plain"]))
    errors = sum(o["errors"] for o in runs["keyed"])
    if errors:
        result.notes.append(f"publish-keyed: {errors} requests answered with errors; they are not counted")
    result.details = {"wrk": runs, "connections": CONNECTIONS, "channels": CHANNELS,
                      "wrk_threads": WRK_THREADS, "seconds": ctx.seconds}
    return result
