"""Scenario 2: batch publish throughput against the database's ceiling.

wrk with 8 keep-alive connections POSTs a JSON array of 100 events per
request, round-robin over 8 channels; the figure is events/s (successful
requests × 100).  Baseline B appends the same 100 payloads per transaction
with raw psycopg2 into the same schema, counter update included (see
:mod:`bench.baseline_pg`), on 8 connections, one channel each.  Both write
to the same database, alternating.  Target: event bus ≥ 0.6 × B.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench import baseline_pg, wrk
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, ISSUER, batch_body, event

if TYPE_CHECKING:
    from bench.run import Context

NAME = "batch"
TITLE = "batch publish, 100 events a request"
BATCH = 100
CONCURRENCY = 8
WRK_THREADS = 1
TARGET_RATIO = 0.6


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    if reason := wrk.missing():
        return result.skip(reason)
    dsn = ctx.database("batch")
    bus = ctx.eventbus(dsn)  # also creates the schema
    channel_ids = baseline_pg.create_channels(
        dsn, CONTEXT, [f"pg{i}" for i in range(CONCURRENCY)])
    body = batch_body(BATCH)
    payloads = [event(n) for n in range(BATCH)]
    bus_rounds: list[float] = []
    pg_rounds: list[float] = []
    runs: dict[str, list] = {"eventbus": [], "baseline": []}

    def measure_bus() -> None:
        out = wrk.post(bus.port, f"/events/{CONTEXT}/b", body, channels=CONCURRENCY,
                       connections=CONCURRENCY, seconds=ctx.seconds, threads=WRK_THREADS,
                       workdir=ctx.workdir, tag=NAME)
        runs["eventbus"].append(out)
        bus_rounds.append(out["rps"] * BATCH)

    def measure_pg() -> None:
        out = baseline_pg.append_batches(dsn, channel_ids, payloads, ISSUER, ctx.seconds)
        runs["baseline"].append(out)
        pg_rounds.append(out["events_per_s"])

    for r in range(ctx.rounds):
        ctx.alternate(r, measure_bus, measure_pg)

    result.figures.append(Figure(
        "batch publish, 100 events/request, 8 conns", "events/s", bus_rounds,
        baseline_name="B: raw psycopg2", baseline_rounds=pg_rounds,
        target=Target("ratio_min", TARGET_RATIO)))
    errors = sum(o["errors"] for o in runs["eventbus"])
    if errors:
        result.notes.append(f"eventbus answered {errors} batch requests with errors; "
                            "they are not counted")
    result.details = {"runs": runs, "batch": BATCH, "concurrency": CONCURRENCY,
                      "baseline_b": "per-channel counter update included, one "
                                    "transaction per batch, no NOTIFY"}
    return result
