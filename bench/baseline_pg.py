"""Baseline B: the database's ceiling for batch appends, with raw psycopg2.

The same rows go into the same schema (``channels``, ``events``) as a batch
publish writes, *including* the per-channel counter update: one statement
per batch bumps the channel's ``last_id``/``last_ts`` and inserts the batch
with ids derived from it, then one commit (one fsync).  What it leaves out
is everything that is not the database: HTTP, JSON validation, the PL/pgSQL
wrapper, ``pg_notify``, Twisted.

The statement is prepared once per connection with the batch's payloads as
a literal, so the client does almost nothing per batch.  One thread per
connection, each appending to a channel of its own (psycopg2 releases the
GIL while it waits for the server).
"""
from __future__ import annotations

import threading
import time

import psycopg2

_PREPARE = """
PREPARE bench_append(bigint) AS
WITH c AS (
    UPDATE channels
       SET last_id = last_id + {n},
           last_ts = greatest(last_ts, clock_timestamp())
     WHERE id = $1
    RETURNING id, last_id, last_ts
)
INSERT INTO events (channel_id, id, ts, issuer, payload)
SELECT c.id, c.last_id - {n} + p.ord, c.last_ts, {issuer}, p.value::json
  FROM c, unnest({payloads}::text[]) WITH ORDINALITY AS p(value, ord)
"""


def create_channels(dsn: str, context: str, names: list[str]) -> list[int]:
    """Channel rows for the baseline to append to (the event bus would create
    them on first publish); returns their ids."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            ids = []
            for name in names:
                cur.execute(
                    "INSERT INTO channels (context, channel, last_id, last_ts)"
                    " VALUES (%s, %s, 0, now())"
                    " ON CONFLICT (context, channel) DO UPDATE SET last_id = channels.last_id"
                    " RETURNING id", (context, name))
                ids.append(cur.fetchone()[0])
            return ids
    finally:
        conn.close()


def append_batches(dsn: str, channel_ids: list[int], payloads: list[str], issuer: str,
                   seconds: float) -> dict:
    """Append ``payloads`` as one batch, over and over, on one connection per
    channel, for ``seconds``; return events/s."""
    counts = [0] * len(channel_ids)
    errors: list[BaseException] = []
    start = threading.Barrier(len(channel_ids) + 1)
    deadline = [0.0]

    def worker(i: int, cid: int) -> None:
        try:
            conn = psycopg2.connect(dsn)
        except BaseException as e:
            errors.append(e)
            start.abort()
            return
        try:
            with conn.cursor() as cur:
                sql = _PREPARE.format(
                    n=len(payloads),
                    issuer=cur.mogrify("%s", (issuer,)).decode(),
                    payloads=cur.mogrify("%s", (payloads,)).decode())
                cur.execute(sql)
                conn.commit()
                start.wait()
                while time.monotonic() < deadline[0]:
                    cur.execute("EXECUTE bench_append(%s)", (cid,))
                    conn.commit()
                    counts[i] += 1
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i, cid), daemon=True)
               for i, cid in enumerate(channel_ids)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + seconds + 30  # until every worker is ready
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    deadline[0] = t0 + seconds
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    if errors:
        raise errors[0]
    events = sum(counts) * len(payloads)
    return {"events": events, "seconds": round(elapsed, 3), "events_per_s": events / elapsed}
