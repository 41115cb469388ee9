"""Scenario: what checking a token costs a publish.

The load of ``publish`` (wrk, 64 keep-alive connections, one 63-byte event
per request over 16 channels) against two event bus processes on the same
database: one with ``--auth required``, every request carrying
``Authorization: Bearer <token>`` (a token made with ``eventbus token
create``, scope ``publish:bench/*``), beside one in the default mode, whose
loopback requests carry none.  Target: the token check costs at most 10 %
of the throughput (ratio ≥ 0.9).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from bench import wrk
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT, EVENT
from bench.scenarios.publish import CHANNELS, CONNECTIONS, WRK_THREADS

if TYPE_CHECKING:
    from bench.run import Context

NAME = "publish-auth"
TITLE = "single-event publish with --auth required and a token, beside without"
TARGET_RATIO = 0.9


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    if reason := wrk.missing():
        return result.skip(reason)
    dsn = ctx.database("publish_auth")
    plain = ctx.eventbus(dsn)
    secure = ctx.eventbus(dsn, "--auth", "required")
    token = secure.create_token("bench", f"publish:{CONTEXT}/*")
    rounds: dict[str, list] = {"auth": [], "plain": []}
    runs: dict[str, list] = {"auth": [], "plain": []}

    def measure(label: str, port: int, headers: dict[str, str]) -> None:
        out = wrk.post(port, f"/events/{CONTEXT}/{label}", EVENT, channels=CHANNELS,
                       connections=CONNECTIONS, seconds=ctx.seconds, threads=WRK_THREADS,
                       workdir=ctx.workdir, tag=f"{NAME}-{label}", headers=headers)
        runs[label].append(out)
        rounds[label].append(out["rps"])

    for r in range(ctx.rounds):
        ctx.alternate(r, lambda: measure("auth", secure.port, {"Authorization": f"Bearer {token}"}),
                      lambda: measure("plain", plain.port, {}))

    result.figures.append(Figure(
        "publish with a token (--auth required), 64 conns", "req/s", rounds["auth"],
        baseline_name="the same without a token (--auth local, loopback)",
        baseline_rounds=rounds["plain"], target=Target("ratio_min", TARGET_RATIO)))
    errors = sum(o["errors"] for o in runs["auth"])
    if errors:
        result.notes.append(f"publish-auth: {errors} requests answered with errors "
                            "(401s included); they are not counted")
    result.details = {"wrk": runs, "connections": CONNECTIONS, "channels": CHANNELS,
                      "wrk_threads": WRK_THREADS, "seconds": ctx.seconds}
    return result
