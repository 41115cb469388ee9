"""Scenario 2: batch publish throughput against the database's ceiling.

wrk with 8 keep-alive connections POSTs a JSON array of 100 events per
request, round-robin over 8 channels; the figure is events/s (successful
requests × 100).  Baseline B appends the same 100 payloads per transaction
with raw psycopg2 into the same schema, counter update included (see
:mod:`bench.baseline_pg`), on 8 connections, one channel each.  Both write
to the same database, alternating.

Baseline B bakes the payloads into a prepared statement: an unfair ceiling
for a server that receives them from clients.  Baseline B', beside it, runs
the event bus's own group-commit statement with the parameters the server
sends for such a batch (payloads included, every time), from raw psycopg2
on 8 connections (:func:`bench.baseline_pg.append_batches_fair`).  Target:
event bus ≥ 0.6 × B'; B stays in the table.

Moonshot, no target: these durable events/s beside Nchan's in-memory single
publishes/s (the ``publish`` load, 64 connections, on reference C) in the
same rounds; aim 1.5×.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench import baseline_pg, wrk
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT, ISSUER, batch_body, event

if TYPE_CHECKING:
    from bench.run import Context

NAME = "batch"
TITLE = "batch publish, 100 events a request"
BATCH = 100
CONCURRENCY = 8
WRK_THREADS = 1
TARGET_RATIO = 0.6
MOONSHOT_RATIO = 1.5
#: Nchan's load for the moonshot: the ``publish`` scenario's.
NCHAN_CONNECTIONS = 64
NCHAN_CHANNELS = 16


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    if reason := wrk.missing():
        return result.skip(reason)
    dsn = ctx.database("batch")
    bus = ctx.eventbus(dsn)  # also creates the schema
    channel_ids = baseline_pg.create_channels(
        dsn, CONTEXT, [f"pg{i}" for i in range(CONCURRENCY)])
    nchan = ctx.nchan()
    body = batch_body(BATCH)
    payloads = [event(n) for n in range(BATCH)]
    bus_rounds: list[float] = []
    pg_rounds: list[float] = []
    fair_rounds: list[float] = []
    nchan_rounds: list[float] = []
    runs: dict[str, list] = {"eventbus": [], "baseline": [], "fair": [], "nchan": []}

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

    def measure_fair() -> None:
        out = baseline_pg.append_batches_fair(dsn, CONTEXT, [f"fair{i}" for i in range(CONCURRENCY)],
                                              payloads, ISSUER, ctx.seconds)
        runs["fair"].append(out)
        fair_rounds.append(out["events_per_s"])

    def measure_nchan() -> None:
        assert nchan is not None
        out = wrk.post(nchan.port, "/pub/m", EVENT, channels=NCHAN_CHANNELS, connections=NCHAN_CONNECTIONS,
                       seconds=ctx.seconds, threads=WRK_THREADS, workdir=ctx.workdir, tag=f"{NAME}-nchan")
        runs["nchan"].append(out)
        nchan_rounds.append(out["rps"])

    for r in range(ctx.rounds):
        steps = [measure_bus, measure_fair, measure_pg]
        if nchan is not None:
            steps.append(measure_nchan)
        ctx.alternate(r, *steps)

    figure = "batch publish, 100 events/request, 8 conns"
    result.figures.append(Figure(
        figure, "events/s", bus_rounds,
        baseline_name="B': server's statement, raw psycopg2", baseline_rounds=fair_rounds,
        target=Target("ratio_min", TARGET_RATIO)))
    result.references.append(Figure(
        figure, "events/s", bus_rounds,
        baseline_name="B: payloads prepared, raw psycopg2", baseline_rounds=pg_rounds))
    if nchan is not None:
        result.references.append(Figure(
            f"moonshot: durable batch events/s ÷ Nchan publishes/s (aim {MOONSHOT_RATIO:g}×)",
            "events/s", bus_rounds, baseline_name="C: Nchan req/s", baseline_rounds=nchan_rounds))
    else:
        result.notes.append("moonshot (beside Nchan's publishes/s): reference C not installed")
    errors = sum(o["errors"] for o in runs["eventbus"])
    if errors:
        result.notes.append(f"eventbus answered {errors} batch requests with errors; "
                            "they are not counted")
    result.details = {"runs": runs, "batch": BATCH, "concurrency": CONCURRENCY,
                      "baseline_b": "per-channel counter update included, one "
                                    "transaction per batch, no NOTIFY, payloads prepared",
                      "baseline_b_fair": "the server's APPEND_SQL with its parameters for one batch "
                                         "(payloads sent every time, pg_notify included), autocommit"}
    return result
