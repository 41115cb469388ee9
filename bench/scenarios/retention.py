"""Scenario: publish throughput while the pruner deletes flat out.

One event bus process (``--retention-interval 1``) on a database of its
own.  Each round measures the ``publish`` load (wrk, 64 keep-alive
connections, one 63-byte event per request over 16 channels) twice,
alternating which goes first:

* *with pruning*: a backlog channel is bulk-loaded straight into the schema
  (``INSERT ... SELECT generate_series``, like ``large-store``), vacuumed
  and checkpointed (so the load's own writes are not measured), then given
  the setting ``max_events = 1``, so all but one of its events are due; the
  measurement starts once the pruner has begun deleting it, and the
  pruner's progress (``channel_retention.pruned_to``) is read before and
  after, to report how many events it deleted meanwhile and whether it was
  still busy at the end (it must be, for the figure to mean "flat out");
* *without*: the same load once the backlog is gone, vacuumed and
  checkpointed, nothing left to prune.

Target: with ≥ 0.8 × without.  Also reported: the events deleted per
second while the publishes ran.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg2

from bench import wrk
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT
from bench.scenarios.publish import CHANNELS, CONNECTIONS, WRK_THREADS

if TYPE_CHECKING:
    from bench.run import Context

NAME = "retention"
TITLE = "single-event publish while the pruner deletes flat out, beside without"
TARGET_RATIO = 0.8
#: ``--retention-interval``: the pruner finds the backlog within a second,
#: then deletes it in one round, batch after batch, without pausing.
INTERVAL_S = 1
WAIT_S = 300.0

_LOAD = """
WITH ch AS (
    INSERT INTO channels (context, channel, last_id, last_ts)
    VALUES (%(context)s, %(channel)s, %(n)s, clock_timestamp())
    RETURNING id
)
INSERT INTO events (channel_id, id, ts, issuer, payload)
SELECT ch.id, g, clock_timestamp(), 'bench',
       ('{"n": ' || g || ', "kind": "benchmark", "text": "0123456789abcdef012345"}')::json
  FROM ch CROSS JOIN generate_series(1, %(n)s) AS g
"""
_DUE = """
INSERT INTO channel_retention (channel_id, max_events)
SELECT id, 1 FROM channels WHERE context = %(context)s AND channel = %(channel)s
"""


def _query(dsn: str, sql: str, params: Any = None, autocommit: bool = False) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone() if cur.description else None
        if not autocommit:
            conn.commit()
        return row
    finally:
        conn.close()


def pruned_to(dsn: str, channel: str) -> int:
    row = _query(dsn, "SELECT coalesce(r.pruned_to, 0) FROM channels c"
                      " LEFT JOIN channel_retention r ON r.channel_id = c.id"
                      " WHERE c.context = %s AND c.channel = %s", (CONTEXT, channel))
    return int(row[0]) if row else 0


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"retention: {what} did not happen within {WAIT_S:.0f} s")
        time.sleep(0.05)


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    if reason := wrk.missing():
        return result.skip(reason)
    dsn = ctx.database("retention")
    bus = ctx.eventbus(dsn, "--retention-interval", str(INTERVAL_S))
    backlog = ctx.size(1_000_000, 20_000)
    rounds: dict[str, list] = {"with": [], "without": []}
    runs: dict[str, list] = {"with": [], "without": []}
    pruning: list[dict[str, Any]] = []

    def measure(label: str) -> dict:
        out = wrk.post(bus.port, f"/events/{CONTEXT}/p", EVENT, channels=CHANNELS,
                       connections=CONNECTIONS, seconds=ctx.seconds, threads=WRK_THREADS,
                       workdir=ctx.workdir, tag=f"{NAME}-{label}")
        runs[label].append(out)
        rounds[label].append(out["rps"])
        return out

    def with_pruning(r: int) -> None:
        channel = f"backlog-{r}"
        t0 = time.monotonic()
        _query(dsn, _LOAD, {"context": CONTEXT, "channel": channel, "n": backlog})
        settle()
        loaded = time.monotonic() - t0
        _query(dsn, _DUE, {"context": CONTEXT, "channel": channel})
        wait_for(lambda: pruned_to(dsn, channel) > 0, "the pruner starting")
        before = pruned_to(dsn, channel)
        t0 = time.monotonic()
        measure("with")
        elapsed = time.monotonic() - t0
        after = pruned_to(dsn, channel)
        pruning.append({"channel": channel, "backlog": backlog, "load_s": round(loaded, 1),
                        "deleted_during": after - before, "seconds": round(elapsed, 2),
                        "deleted_per_s": round((after - before) / elapsed),
                        "busy_to_the_end": after < backlog - 1})
        wait_for(lambda: pruned_to(dsn, channel) >= backlog - 1, "the backlog being deleted")
        settle()

    def settle() -> None:
        """What was written is vacuumed and on disk: nothing left for the next measurement."""
        _query(dsn, "VACUUM ANALYZE events", autocommit=True)
        _query(dsn, "CHECKPOINT", autocommit=True)

    def without() -> None:
        measure("without")

    for r in range(ctx.rounds):
        ctx.alternate(r, lambda r=r: with_pruning(r), without)

    result.figures.append(Figure(
        "publish, 1 event/request, 64 conns, pruner deleting", "req/s", rounds["with"],
        baseline_name="the same, nothing to prune", baseline_rounds=rounds["without"],
        target=Target("ratio_min", TARGET_RATIO)))
    result.references.append(Figure("events deleted by the pruner meanwhile", "events/s",
                                    [p["deleted_per_s"] for p in pruning]))
    idle = [p["channel"] for p in pruning if not p["busy_to_the_end"]]
    if idle:
        result.notes.append(f"the pruner finished its backlog before the end of the "
                            f"measurement in {len(idle)} of {len(pruning)} rounds (not flat out "
                            "throughout); raise the backlog")
    errors = sum(o["errors"] for o in runs["with"] + runs["without"])
    if errors:
        result.notes.append(f"{errors} requests answered with errors; they are not counted")
    result.details = {"wrk": runs, "pruning": pruning, "connections": CONNECTIONS, "channels": CHANNELS,
                      "seconds": ctx.seconds, "interval_s": INTERVAL_S}
    return result
