"""Scenario 7: what readers that never read cost the server, and whether it
gets the memory back (issue 8).

A channel of 300 events of 1 MiB each (random, incompressible JSON text),
loaded straight into the schema; then, each round, ten SSE clients replaying
it (``/stream?after=0``) and three history clients (``GET`` of the whole
channel), each a raw socket that sends its request and never reads.  Once
every client has its first bytes and the server is idle again, its VmRSS
is read (and sampled meanwhile for the peak); then the clients disconnect,
and once the server is idle again VmRSS is read once more.  Both figures are
over the server's VmRSS before the first round (after one small warm-up
round).  Targets: connected ≤ +150 MB, after the disconnect ≤ +50 MB, each
round.  No baseline: the reference is the process itself before the round.
"""
from __future__ import annotations

import json
import os
import random
import socket
import string
import time
from typing import TYPE_CHECKING

import psycopg2

from bench.procs import rss_kb, wait_quiet
from bench.report import Figure, Result, Target
from bench.scenarios import CONTEXT

if TYPE_CHECKING:
    from bench.run import Context

NAME = "memory"
TITLE = "readers that never read: server memory while held and after"
CHANNEL = "big"
EVENT_BYTES = 1024 * 1024
CONNECTED_MAX_MB = 150
AFTER_MAX_MB = 50
ANSWER_TIMEOUT_S = 60.0
SAMPLE_S = 0.05


def load(dsn: str, events: int) -> float:
    """The channel, inserted in batches; returns the seconds it took."""
    t0 = time.monotonic()
    rng = random.Random(8)
    alphabet = string.ascii_letters + string.digits
    blob = "".join(rng.choices(alphabet, k=EVENT_BYTES + 8 * events))
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO channels (context, channel, last_id, last_ts)"
                        " VALUES (%s, %s, %s, now()) RETURNING id", (CONTEXT, CHANNEL, events))
            channel_id = cur.fetchone()[0]
            for n in range(1, events + 1):
                text = json.dumps({"n": n, "s": blob[8 * n: 8 * n + EVENT_BYTES - 32]})
                cur.execute("INSERT INTO events (channel_id, id, ts, issuer, payload)"
                            " VALUES (%s, %s, now(), 'bench', %s::json)", (channel_id, n, text))
        conn.commit()
    finally:
        conn.close()
    return time.monotonic() - t0


def connect(port: int, sse: int, history: int) -> list[socket.socket]:
    paths = ([f"/events/{CONTEXT}/{CHANNEL}/stream?after=0"] * sse
             + [f"/events/{CONTEXT}/{CHANNEL}"] * history)
    clients = []
    for path in paths:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        clients.append(sock)
    return clients


def _answered(sock: socket.socket) -> bool:
    try:
        return len(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) == 1
    except BlockingIOError:
        return False


def one_round(port: int, pid: int, sse: int, history: int) -> tuple[int, int, float]:
    """(peak KiB while connected, KiB once they left, seconds to answer all)."""
    t0 = time.monotonic()
    clients = connect(port, sse, history)
    peak = rss_kb(pid)
    try:
        while not all(_answered(s) for s in clients):
            if time.monotonic() - t0 > ANSWER_TIMEOUT_S:
                raise RuntimeError("the server did not answer every client")
            peak = max(peak, rss_kb(pid))
            time.sleep(SAMPLE_S)
        answered = time.monotonic() - t0
        wait_quiet(pid)
        peak = max(peak, rss_kb(pid))
    finally:
        for sock in clients:
            sock.close()
    wait_quiet(pid)
    return peak, rss_kb(pid), answered


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    events = ctx.size(300, 30)
    sse = ctx.size(10, 3)
    history = ctx.size(3, 1)
    dsn = ctx.database("memory")
    bus = ctx.eventbus(dsn)  # creates the schema
    load_s = load(dsn, events)
    result.notes.append(f"{events} events of 1 MiB loaded in {load_s:.1f} s")
    # Warm-up: what the first use of each path allocates for good is part
    # of the process, not of the clients.
    one_round(bus.port, bus.pid, 1, 1)
    fresh = rss_kb(bus.pid)
    rounds = [one_round(bus.port, bus.pid, sse, history) for _ in range(ctx.rounds)]
    clients = f"{sse} SSE + {history} history"
    result.figures.append(Figure(
        f"RSS over start, {clients} clients not reading, {events} x 1 MiB", "MB",
        [(peak - fresh) / 1024 for peak, _, _ in rounds],
        target=Target("max", CONNECTED_MAX_MB, "MB")))
    result.figures.append(Figure(
        "RSS over start once they disconnected", "MB",
        [(after - fresh) / 1024 for _, after, _ in rounds],
        target=Target("max", AFTER_MAX_MB, "MB")))
    result.details = {
        "events": events, "event_bytes": EVENT_BYTES, "sse_clients": sse,
        "history_clients": history, "rss_start_mb": fresh / 1024,
        "rounds": [{"peak_mb": peak / 1024, "after_mb": after / 1024,
                    "all_answered_s": round(answered, 2)} for peak, after, answered in rounds],
        "load_seconds": load_s,
    }
    return result
