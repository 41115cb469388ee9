"""``python -m bench.partitions``: batched DELETE against dropping a partition.

The measurement behind the README's "Why batched DELETE": on a private
embedded PostgreSQL, 600,000 events of one channel in an unpartitioned
table (primary key ``(channel_id, id)``, index on ``(channel_id, ts, id)``,
as the event bus stores them) and the same in a table partitioned by the
hour.  While one connection inserts into another channel as fast as it can:

1. delete one hour (72,000 events) in batches of 1,000, one transaction each;
2. ``DROP`` that hour's partition while a reader holds a 1 s transaction on
   the table (a slow query, a long read).

Prints the deletion rate and what the inserts saw (median and worst).
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time

import psycopg2

from eventbus.storage.embedded import EmbeddedPostgres

EVENTS = 600_000
HOUR = 72_000  # events 50 ms apart
BATCH = 1000


def _inserter(dsn: str, table: str, stop: threading.Event, latencies: list[float]) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur, n = conn.cursor(), 1
    while not stop.is_set():
        t0 = time.perf_counter()
        cur.execute(f"INSERT INTO {table} VALUES (2, %s, '2026-01-01 11:30+00', '{{}}')", (n,))
        latencies.append(time.perf_counter() - t0)
        n += 1
    conn.close()


def _while_inserting(dsn: str, table: str, work: object) -> tuple[float, list[float]]:
    stop, latencies = threading.Event(), []
    thread = threading.Thread(target=_inserter, args=(dsn, table, stop, latencies))
    thread.start()
    time.sleep(1.0)
    skip = len(latencies)
    t0 = time.perf_counter()
    work()  # type: ignore[operator]
    elapsed = time.perf_counter() - t0
    time.sleep(0.5)
    stop.set()
    thread.join()
    return elapsed, latencies[skip:]


def main() -> None:
    pg = EmbeddedPostgres(tempfile.mkdtemp(prefix="eventbus-partitions-"))
    pg.start()
    try:
        dsn = pg.dsn()
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("CREATE TABLE ev_plain (channel_id bigint, id bigint, ts timestamptz, payload json,"
                    " PRIMARY KEY (channel_id, id))")
        cur.execute("CREATE INDEX ON ev_plain (channel_id, ts, id)")
        cur.execute("CREATE TABLE ev_part (channel_id bigint, id bigint, ts timestamptz, payload json,"
                    " PRIMARY KEY (channel_id, id, ts)) PARTITION BY RANGE (ts)")
        for h in range(12):
            cur.execute(f"CREATE TABLE ev_part_{h} PARTITION OF ev_part FOR VALUES"
                        f" FROM ('2026-01-01 {h:02d}:00+00') TO ('2026-01-01 {h + 1:02d}:00+00')")
        for table in ("ev_plain", "ev_part"):
            cur.execute(f"INSERT INTO {table} SELECT 1, g, '2026-01-01 00:00+00'::timestamptz"
                        f" + g * interval '50 ms', '{{\"n\": 1}}' FROM generate_series(1, {EVENTS}) g")
        cur.execute("VACUUM ANALYZE")

        batches: list[float] = []

        def delete() -> None:
            for done in range(0, HOUR, BATCH):
                t0 = time.perf_counter()
                cur.execute("BEGIN")
                cur.execute("DELETE FROM ev_plain WHERE channel_id = 1 AND id > %s AND id <= %s",
                            (done, done + BATCH))
                cur.execute("COMMIT")
                batches.append(time.perf_counter() - t0)

        elapsed, seen = _while_inserting(dsn, "ev_plain", delete)
        print(f"batched DELETE: {HOUR:,} events in {elapsed:.2f} s ({HOUR / elapsed:,.0f}/s,"
              f" {statistics.median(batches) * 1000:.1f} ms per batch of {BATCH});"
              f" inserts meanwhile: median {statistics.median(seen) * 1000:.1f} ms,"
              f" worst {max(seen) * 1000:.0f} ms")

        reader = psycopg2.connect(dsn)

        def drop() -> None:
            reader.cursor().execute("SELECT count(*) FROM ev_part WHERE ts < '2026-01-01 06:00+00'")
            threading.Timer(1.0, reader.commit).start()  # a read that holds the table for 1 s
            cur.execute("DROP TABLE ev_part_0")

        elapsed, seen = _while_inserting(dsn, "ev_part", drop)
        reader.close()
        print(f"DROP of a partition of {HOUR:,} events, a reader holding the table 1 s:"
              f" {elapsed * 1000:.0f} ms; inserts meanwhile: median {statistics.median(seen) * 1000:.1f} ms,"
              f" worst {max(seen) * 1000:.0f} ms")
        conn.close()
    finally:
        pg.stop(force=True)


if __name__ == "__main__":
    main()
