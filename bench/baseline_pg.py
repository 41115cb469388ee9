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

Baseline B', the fair ceiling (:func:`append_batches_fair`): the event bus's
own group-commit statement (``APPEND_SQL``, ``pg_notify`` included) with
the parameters it sends for one batch of these payloads -- the payloads
travel with every execution, as a JSON array text, and PostgreSQL parses
them each time -- from raw psycopg2, one commit per batch.  What it leaves
out is only the server: HTTP, validation, Twisted, the Python side of the
group commit.  B bakes the payloads into a prepared statement, which no
server taking payloads from clients can do.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import psycopg2

from eventbus.storage.events import APPEND_SQL

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

    def prepare(cur: Any, i: int) -> Callable[[], None]:
        cur.execute(_PREPARE.format(
            n=len(payloads),
            issuer=cur.mogrify("%s", (issuer,)).decode(),
            payloads=cur.mogrify("%s", (payloads,)).decode()))
        cid = channel_ids[i]
        return lambda: cur.execute("EXECUTE bench_append(%s)", (cid,))

    return _run(dsn, len(channel_ids), len(payloads), prepare, seconds)


def fair_params(context: str, channel: str, issuer: str, payloads: list[str]) -> dict:
    """What the event bus's group commit sends for one append of ``payloads``
    (:meth:`eventbus.storage.events.EventStore._write_group`, a group of one)."""
    n = len(payloads)
    return {
        "ctx": [context],
        "ch": [channel],
        "n": [n],
        "payloads": "[" + ",".join(payloads) + "]",
        "e_ch": "{" + ",".join(["1"] * n) + "}",
        "e_pos": "{" + ",".join(map(str, range(1, n + 1))) + "}",
        "e_iss": "{" + ",".join(["1"] * n) + "}",
        "issuers": [issuer],
    }


def append_batches_fair(dsn: str, context: str, channels: list[str], payloads: list[str], issuer: str,
                        seconds: float) -> dict:
    """Baseline B': the server's own statement and parameters for each batch,
    on one connection per channel, for ``seconds``; return events/s."""

    def prepare(cur: Any, i: int) -> Callable[[], None]:
        channel = channels[i]

        def one() -> None:
            # Built per batch, as the server builds them per group.
            cur.execute(APPEND_SQL, fair_params(context, channel, issuer, payloads))
            cur.fetchall()
        return one

    # Autocommit, as the server's connections run it: one round trip, one
    # implicit transaction per statement.
    return _run(dsn, len(channels), len(payloads), prepare, seconds, autocommit=True)


def _run(dsn: str, connections: int, batch: int, prepare: Callable[[Any, int], Callable[[], None]],
         seconds: float, autocommit: bool = False) -> dict:
    """``prepare(cursor, i)`` on each connection, then its batch function
    with a commit after each (or in autocommit mode), over and over, for
    ``seconds``."""
    counts = [0] * connections
    errors: list[BaseException] = []
    start = threading.Barrier(connections + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        try:
            conn = psycopg2.connect(dsn)
            conn.autocommit = autocommit
        except BaseException as e:
            errors.append(e)
            start.abort()
            return
        try:
            with conn.cursor() as cur:
                one = prepare(cur, i)
                if not autocommit:
                    conn.commit()
                start.wait()
                while time.monotonic() < deadline[0]:
                    one()
                    if not autocommit:
                        conn.commit()
                    counts[i] += 1
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
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
    events = sum(counts) * batch
    return {"events": events, "seconds": round(elapsed, 3), "events_per_s": events / elapsed}
