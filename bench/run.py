"""``python -m bench``: start everything on loopback, measure, print, write JSON.

Each scenario measures the event bus beside its baseline in the same run,
alternating which goes first, for ``--rounds`` rounds, and reports medians
(see :mod:`bench.report`).  A scenario whose tool is missing is skipped
with the install command; one that crashes is reported as failed and makes
the exit status 1 (targets missed do not: this is a measurement, not a test).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, TypeVar

from bench import procs, wrk
from bench.report import FAILED, Result, table

DEFAULT_OUT = procs.REPO / "bench" / "results.json"
DEFAULT_SMOKE_OUT = procs.REPO / "bench" / "results-smoke.json"
DEFAULT_ROUNDS = 3
SMOKE_ROUNDS = 1
#: Length of one throughput measurement (one wrk run, one publish burst).
DEFAULT_SECONDS = 10
SMOKE_SECONDS = 1

S = TypeVar("S", bound=procs.ServerProcess)


class Context:
    """What a scenario gets: sizes for this mode, and servers it may start.

    Every process started through here is stopped when the run ends, the
    PostgreSQL last.
    """

    def __init__(self, smoke: bool, rounds: int, seconds: int, workdir: Path) -> None:
        self.smoke = smoke
        self.rounds = rounds
        self.seconds = seconds
        self.workdir = workdir
        self._pg: Optional[procs.Postgres] = None
        self._servers: list[procs.ServerProcess] = []

    def size(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full

    def database(self, name: str) -> str:
        """A fresh, empty database in the run's PostgreSQL; its DSN."""
        if self._pg is None:
            log(f"starting embedded PostgreSQL in {self.workdir / 'pg'}")
            self._pg = procs.Postgres(self.workdir).start()
        return self._pg.database(name)

    def eventbus(self, dsn: str, *extra: str, nofile: Optional[int] = None) -> procs.EventBus:
        """An event bus server; ``nofile``: its ``ulimit -n`` (default: the hard limit)."""
        return self._start(procs.EventBus(self.workdir, dsn, list(extra), nofile=nofile))

    def baseline_klein(self) -> procs.BaselineKlein:
        return self._start(procs.BaselineKlein(self.workdir))

    def nchan(self) -> Optional[procs.Nchan]:
        """Reference C, or None when it is not installed."""
        if procs.nchan_missing():
            return None
        return self._start(procs.Nchan(self.workdir))

    def _start(self, server: S) -> S:
        log(f"starting {server.name} on port {server.port}")
        self._servers.append(server)
        server.start()
        return server

    def release_all(self) -> None:
        while self._servers:
            self._servers.pop().stop()

    def close(self) -> None:
        self.release_all()
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    @staticmethod
    def alternate(round_no: int, *steps: Callable[[], None]) -> None:
        """Run the steps in order on even rounds, reversed on odd ones."""
        for step in (steps if round_no % 2 == 0 else tuple(reversed(steps))):
            step()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _scenarios() -> dict[str, Callable[[Context], Result]]:
    from bench.scenarios import (batch, large_store, memory, publish, publish_auth, publish_keyed, retention, sse,
                                 wake, waiters, webhooks, workers)

    return {module.NAME: module.run
            for module in (publish, publish_auth, publish_keyed, batch, wake, waiters, large_store, sse,
                           memory, webhooks, retention, workers)}


def missing_tools() -> list[str]:
    notes = []
    if reason := wrk.missing():
        notes.append(f"{reason}: scenarios publish, publish-auth, publish-keyed, batch and retention will be skipped, "
                     "and the throughput part of waiters")
    if reason := procs.nchan_missing():
        notes.append(f"Nchan {reason}: reference C will be reported as not installed")
    return notes


def parse_args(argv: list[str]) -> argparse.Namespace:
    names = list(_scenarios())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the event bus beside its baselines, on loopback.")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and 1 s measurements: exercises every scenario "
                             "end to end in well under a minute")
    parser.add_argument("--only", action="append", metavar="NAME", choices=names,
                        help=f"run only this scenario (repeatable): {', '.join(names)}")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds per scenario, alternating eventbus and baseline "
                             f"(default {DEFAULT_ROUNDS}, {SMOKE_ROUNDS} with --smoke)")
    parser.add_argument("--seconds", type=int, default=None,
                        help=f"length of one throughput measurement "
                             f"(default {DEFAULT_SECONDS}, {SMOKE_SECONDS} with --smoke)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the JSON (default {DEFAULT_OUT.relative_to(procs.REPO)}, "
                             f"{DEFAULT_SMOKE_OUT.relative_to(procs.REPO)} with --smoke)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (server logs, PostgreSQL)")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = SMOKE_ROUNDS if args.smoke else DEFAULT_ROUNDS
    if args.seconds is None:
        args.seconds = SMOKE_SECONDS if args.smoke else DEFAULT_SECONDS
    if args.out is None:
        args.out = DEFAULT_SMOKE_OUT if args.smoke else DEFAULT_OUT
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    scenarios = _scenarios()
    selected = args.only or list(scenarios)
    nofile = procs.raise_nofile()
    started = time.monotonic()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-bench-"))
    for note in missing_tools():
        log(note)
    ctx = Context(args.smoke, args.rounds, args.seconds, workdir)
    results: list[Result] = []
    try:
        for name in selected:
            log(f"scenario {name}")
            t0 = time.monotonic()
            try:
                result = scenarios[name](ctx)
            except Exception as e:
                traceback.print_exc()
                result = Result(name, name, status=FAILED, reason=f"{type(e).__name__}: {e}")
            finally:
                ctx.release_all()
            result.seconds = time.monotonic() - t0
            results.append(result)
    finally:
        ctx.close()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    document = {
        "meta": {
            "command": " ".join(["python -m bench", *argv]),
            "mode": "smoke" if args.smoke else "full",
            "rounds": args.rounds,
            "seconds_per_measurement": args.seconds,
            "started": started_at,
            "elapsed_s": round(elapsed, 1),
            "cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "open_files_limit": nofile,
            "missing_tools": missing_tools(),
        },
        "scenarios": {r.name: r.as_json() for r in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(table(results))
    print(f"\n{len(results)} scenarios in {elapsed:.0f} s; JSON written to {args.out}")
    return 1 if any(r.status == FAILED for r in results) else 0
