"""Many Server-Sent-Events subscribers in one lean process (raw epoll).

``python -m bench.sse_client PORT COUNT PATH MAX_SEQ`` opens COUNT
``GET PATH`` streams (``Accept: text/event-stream``), prints
``{"ready": n, "statuses": {...}}`` once every stream has answered its
headers, then records, for every subscriber, when each message carrying
``"seq": N`` first arrived (``time.monotonic()``, which is one clock for
every process on the machine).

The publisher then writes one JSON line to our standard input, ``{"sent":
{seq: monotonic send time}, "drain_s": S}``; we keep reading until every
subscriber has every sent seq or S seconds pass, and print the result:
messages expected, received, missing, duplicated, latency percentiles, and
the latencies as a histogram of 0.1 ms buckets (``hist``), so that the
scenario can merge the results of several client processes.

Why not asyncio: a thousand streams at 200 events/s are 200,000 messages a
second; the client must cost far less per message than the server does.
Here one ``recv`` may carry many messages, and a message costs one regular
expression match.
"""
from __future__ import annotations

import array
import json
import math
import os
import re
import resource
import select
import socket
import sys
import time
from typing import Optional

from bench.procs import raise_nofile

SEQ = re.compile(rb'"seq":\s*(\d+)')
#: Width of a histogram bucket, in milliseconds.
BUCKET_MS = 0.1
READ_SIZE = 1 << 18
HEADERS_TIMEOUT_S = 60.0


class Subscriber:
    __slots__ = ("sock", "status", "head", "chunked", "raw", "text", "arrivals",
                 "received", "duplicates", "closed")

    def __init__(self, sock: socket.socket, max_seq: int) -> None:
        self.sock = sock
        self.status: Optional[int] = None
        self.head = b""
        self.chunked = False
        self.raw = b""     # undecoded chunked transfer bytes
        self.text = b""    # event-stream text not yet ended by a blank line
        self.arrivals = array.array("d", [math.nan]) * (max_seq + 1)
        self.received = 0
        self.duplicates = 0
        self.closed = False

    def feed(self, data: bytes, now: float, expected: Optional[set[int]]) -> None:
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4:]
            lines = head.split(b"\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
            self.head = b""
        if self.chunked:
            data = self._dechunk(data)
        text = self.text + data
        end = text.rfind(b"\n\n")
        if end < 0:
            self.text = text
            return
        complete, self.text = text[:end], text[end + 2:]
        arrivals = self.arrivals
        for match in SEQ.finditer(complete):
            seq = int(match.group(1))
            if seq >= len(arrivals):
                continue
            if math.isnan(arrivals[seq]):
                arrivals[seq] = now
                if expected is None or seq in expected:
                    self.received += 1
            else:
                self.duplicates += 1

    def _dechunk(self, data: bytes) -> bytes:
        raw = self.raw + data
        out = []
        pos = 0
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol].split(b";")[0] or b"0", 16)
            if len(raw) < eol + 2 + size + 2:
                break
            out.append(raw[eol + 2:eol + 2 + size])
            pos = eol + 2 + size + 2
        self.raw = raw[pos:]
        return b"".join(out)


def open_streams(port: int, count: int, path: str, max_seq: int) -> list[Subscriber]:
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    subs = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request)
        sock.setblocking(False)
        subs.append(Subscriber(sock, max_seq))
    return subs


def run(port: int, count: int, path: str, max_seq: int) -> dict:
    subs = open_streams(port, count, path, max_seq)
    by_fd = {s.sock.fileno(): s for s in subs}
    poll = select.epoll()
    for fd in by_fd:
        poll.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()

    def pump(timeout: float, expected: Optional[set[int]]) -> bool:
        """Read what is ready; True when stdin became readable."""
        for fd, _ in poll.poll(timeout):
            if fd == stdin:
                return True
            sub = by_fd[fd]
            try:
                data = sub.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sub.closed = True
                poll.unregister(fd)
                continue
            sub.feed(data, time.monotonic(), expected)
        return False

    deadline = time.monotonic() + HEADERS_TIMEOUT_S
    while any(s.status is None and not s.closed for s in subs):
        if time.monotonic() > deadline:
            break
        pump(0.05, None)
    statuses: dict[str, int] = {}
    for s in subs:
        key = str(s.status) if s.status is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
    print(json.dumps({"ready": statuses.get("200", 0), "statuses": statuses}), flush=True)

    poll.register(stdin, select.EPOLLIN)
    wall0, cpu0 = time.monotonic(), _cpu()
    while not pump(0.5, None):
        pass
    busy = (_cpu() - cpu0) / max(1e-9, time.monotonic() - wall0)
    order = json.loads(sys.stdin.readline())
    poll.unregister(stdin)
    sent = {int(k): v for k, v in order["sent"].items()}
    expected = set(sent)
    for s in subs:  # recount against what was really sent
        s.received = sum(1 for seq in expected
                         if seq < len(s.arrivals) and not math.isnan(s.arrivals[seq]))
    drain_deadline = time.monotonic() + order["drain_s"]
    want = len(expected)
    while time.monotonic() < drain_deadline:
        if all(s.received >= want or s.closed for s in subs):
            break
        pump(0.05, expected)

    latencies = array.array("d")
    missing = 0
    for s in subs:
        for seq, t_sent in sent.items():
            t = s.arrivals[seq] if seq < len(s.arrivals) else math.nan
            if math.isnan(t):
                missing += 1
            else:
                latencies.append(t - t_sent)
    ordered = sorted(latencies)

    def pct(p: float) -> Optional[float]:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    result = {
        "subscribers": count,
        "streams_ok": statuses.get("200", 0),
        "closed_early": sum(1 for s in subs if s.closed),
        "expected": want * count,
        "received": len(ordered),
        "missing": missing,
        "duplicates": sum(s.duplicates for s in subs),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": ordered[-1] * 1000 if ordered else None,
        "hist": histogram(ordered),
        # Share of one core this client used while the events were published:
        # near 100 % the client, not the server, sets the latencies.
        "client_cpu_pct": round(100 * busy, 1),
    }
    for s in subs:
        s.sock.close()
    return result


def histogram(latencies_s: "array.array[float] | list[float]") -> dict[str, int]:
    """Counts per ``BUCKET_MS`` bucket (bucket k: k to k+1 buckets of ms)."""
    counts: dict[int, int] = {}
    for t in latencies_s:
        k = max(0, int(t * 1000 / BUCKET_MS))
        counts[k] = counts.get(k, 0) + 1
    return {str(k): v for k, v in counts.items()}


def hist_percentile(hist: dict[str, int], p: float) -> Optional[float]:
    """The p-th percentile (ms, a bucket's upper edge) of a merged histogram."""
    total = sum(hist.values())
    if not total:
        return None
    rank = min(total - 1, int(p / 100 * total))
    seen = 0
    for k in sorted(hist, key=int):
        seen += hist[k]
        if seen > rank:
            return (int(k) + 1) * BUCKET_MS
    return None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    raise_nofile()
    port, count, path, max_seq = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    print(json.dumps(run(port, count, path, max_seq)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
