"""Scenario 5: reads on a store of 1,000,000 events over 1,000 channels.

Two databases, each behind its own event bus process:

* *large*: 1,000,000 events -- one channel ``big`` of 100,000 and 999
  channels of about 900 -- bulk-loaded straight into the schema with
  ``INSERT ... SELECT generate_series`` (ids 1..N, timestamps 10 ms apart,
  ``channels.last_id``/``last_ts`` set to match), then ``VACUUM ANALYZE``;
* *small* ("empty store"): one channel of the same ~900 events, nothing else.

Figures, alternating between the two stores each round:

* ``peek`` latency: ``GET ?peek=<random cursor>`` on a random channel,
  where the next event exists (the consumer's walk), one request at a time
  on a keep-alive connection; target: large p50 ≤ 2 × small p50.
* ``start`` latency: ``GET ?start=<random instant>&limit=10``, likewise.
* ``GET`` of the 100,000-event channel: events/s from sending the request
  to the last byte (target ≥ 50,000), and the growth of the server's VmRSS
  sampled every 20 ms during the stream over its value just before
  (target ≤ 50 MB).
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from typing import TYPE_CHECKING

import psycopg2

from bench.httpc import Connection, HTTPError
from bench.procs import rss_kb
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT

if TYPE_CHECKING:
    from bench.run import Context

NAME = "large-store"
TITLE = "reads with 1,000,000 events stored"
STEP_MS = 10
RATIO_MAX = 2.0
STREAM_MIN_EPS = 50_000
RSS_GROWTH_MAX_MB = 50
RSS_SAMPLE_S = 0.020
WARMUP_REQUESTS = 5
START_LIMIT = 10

_LOAD = """
INSERT INTO channels (context, channel, last_id, last_ts)
SELECT %(context)s, t.name, t.count, to_timestamp(%(base)s) + t.count * interval '{step} ms'
  FROM unnest(%(names)s::text[], %(counts)s::bigint[]) AS t(name, count);
INSERT INTO events (channel_id, id, ts, issuer, payload)
SELECT ch.id, g, to_timestamp(%(base)s) + g * interval '{step} ms', 'bench',
       ('{{"n": ' || g || ', "kind": "benchmark", "text": "0123456789abcdef012345"}}')::json
  FROM channels ch CROSS JOIN LATERAL generate_series(1, ch.last_id) AS g
 WHERE ch.context = %(context)s;
""".format(step=STEP_MS)


def layout(total: int, channels: int, big: int) -> list[tuple[str, int]]:
    """``big`` events in channel ``big``, the rest spread evenly over the others."""
    rest = channels - 1
    per, extra = divmod(total - big, rest)
    return [("big", big)] + [(f"c{i}", per + (1 if i <= extra else 0))
                             for i in range(1, rest + 1)]


def load(dsn: str, channels: list[tuple[str, int]], base: float) -> float:
    """Bulk-load the events; returns the seconds it took."""
    t0 = time.monotonic()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = off")
            cur.execute("SET maintenance_work_mem = '256MB'")
            cur.execute(_LOAD, {"context": CONTEXT, "base": base,
                                "names": [n for n, _ in channels],
                                "counts": [c for _, c in channels]})
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE channels")
            cur.execute("VACUUM ANALYZE events")
    finally:
        conn.close()
    return time.monotonic() - t0


async def read_latencies(port: int, paths: list[str], events_each: int) -> list[float]:
    """Milliseconds per request, one at a time on one keep-alive connection;
    the first answer is checked to hold ``events_each`` events."""
    conn = await Connection(port).connect()
    out = []
    try:
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            resp = await conn.request("GET", path)
            if resp.status != 200:
                raise HTTPError(f"GET {path}: {resp.status} {resp.body[:200]!r}")
            if i == 0:
                got = json.loads(resp.body)
                got = len(got) if isinstance(got, list) else 1
                if got != events_each:
                    raise HTTPError(f"GET {path}: {got} events, expected {events_each}")
            if i >= WARMUP_REQUESTS:
                out.append((resp.received_at - t0) * 1000)
    finally:
        conn.close()
    return out


async def stream(port: int, path: str, pid: int) -> dict:
    """GET a whole channel, sampling the server's RSS meanwhile."""
    conn = await Connection(port).connect()
    pieces: list[bytes] = []
    before = rss_kb(pid)
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_kb(pid))
            await asyncio.sleep(RSS_SAMPLE_S)

    sampler = asyncio.ensure_future(sample())
    try:
        t0 = time.perf_counter()
        conn.send("GET", path)
        resp = await conn.response(on_data=pieces.append)
        elapsed = resp.received_at - t0
    finally:
        done.set()
        await sampler
        conn.close()
    peak = max(peak, rss_kb(pid))
    if resp.status != 200:
        raise HTTPError(f"GET {path}: {resp.status}")
    events = len(json.loads(b"".join(pieces)))
    return {"events": events, "seconds": elapsed, "events_per_s": events / elapsed,
            "bytes": sum(map(len, pieces)), "rss_before_mb": before / 1024,
            "rss_peak_mb": peak / 1024, "rss_growth_mb": (peak - before) / 1024}


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    total = ctx.size(1_000_000, 10_000)
    channel_count = ctx.size(1000, 20)
    big = ctx.size(100_000, 2_000)
    requests = ctx.size(300, 30)
    large_layout = layout(total, channel_count, big)
    per = large_layout[-1][1]
    small_layout = [("c1", per)]
    base = time.time() - 2 * big * STEP_MS / 1000

    stores = {}
    load_s = {}
    for label, chans in (("small", small_layout), ("large", large_layout)):
        dsn = ctx.database(f"store_{label}")
        server = ctx.eventbus(dsn)  # creates the schema
        load_s[label] = load(dsn, chans, base)
        stores[label] = (server, [n for n, _ in chans if n != "big"])
    result.notes.append(f"bulk load of {total:,} events took {load_s['large']:.1f} s "
                        f"({total / load_s['large']:,.0f} events/s)")

    rng = random.Random(4)
    lat: dict[str, dict[str, list[list[float]]]] = {
        kind: {"small": [], "large": []} for kind in ("peek", "start")}
    streams: list[dict] = []

    def reads(label: str) -> None:
        server, names = stores[label]
        n = requests + WARMUP_REQUESTS
        peeks = [f"/events/{CONTEXT}/{rng.choice(names)}?peek={rng.randrange(per)}"
                 for _ in range(n)]
        starts = [f"/events/{CONTEXT}/{rng.choice(names)}?start="
                  f"{base + rng.randrange(1, per - START_LIMIT) * STEP_MS / 1000:.3f}"
                  f"&limit={START_LIMIT}" for _ in range(n)]
        lat["peek"][label].append(asyncio.run(read_latencies(server.port, peeks, 1)))
        lat["start"][label].append(asyncio.run(read_latencies(server.port, starts, START_LIMIT)))

    def stream_big() -> None:
        server = stores["large"][0]
        streams.append(asyncio.run(stream(server.port, f"/events/{CONTEXT}/big", server.pid)))
        if streams[-1]["events"] != big:
            raise HTTPError(f"streamed {streams[-1]['events']} events, expected {big}")

    for r in range(ctx.rounds):
        ctx.alternate(r, lambda: reads("small"), lambda: reads("large"))
        stream_big()

    for kind in ("peek", "start"):
        result.figures.append(Figure(
            f"{kind} p50, {total:,} events stored", "ms",
            [p(s, 50) for s in lat[kind]["large"]],
            baseline_name="small store", baseline_rounds=[p(s, 50) for s in lat[kind]["small"]],
            target=Target("ratio_max", RATIO_MAX)))
    result.figures.append(Figure(
        f"GET of a {big:,}-event channel", "events/s", [s["events_per_s"] for s in streams],
        target=Target("min", STREAM_MIN_EPS, "events/s")))
    result.figures.append(Figure(
        "server RSS growth during that GET", "MB", [s["rss_growth_mb"] for s in streams],
        target=Target("max", RSS_GROWTH_MAX_MB, "MB")))
    result.details = {
        "events": total, "channels": channel_count, "big_channel": big,
        "events_per_channel": per, "requests_per_round": requests,
        "load_seconds": load_s, "streams": streams,
        "p99_ms": {kind: {label: [p(s, 99) for s in rounds]
                          for label, rounds in by_store.items()}
                   for kind, by_store in lat.items()},
        "mean_ms": {kind: {label: statistics.fmean(sum(rounds, []))
                           for label, rounds in by_store.items()}
                    for kind, by_store in lat.items()},
    }
    return result
