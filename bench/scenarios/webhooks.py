"""Scenario 7: webhook fan-out, many lagging channels, a receiver that holds requests.

The server runs under ``ulimit -n 1024`` with the default
``--webhook-concurrency`` (64) and ``--webhook-subscription-concurrency``
(4).  A context gets N channels of one event each (1,000; 100 with
``--smoke``), then S ``*`` subscriptions from ``earliest`` (16, which
together ask for 64 attempts at once; 4 with ``--smoke``) to one local
receiver that holds every request H (100 ms; 20 ms with ``--smoke``) before
its ``200``.  The receiver (asyncio, HTTP/1.1 keep-alive, in the runner's
process) counts the connections and requests it has open at once.
Meanwhile probes, each on a new connection, ask ``GET /health`` and
publish one event to another context, each every 100 ms.

Figures: delivered events/s from the subscriptions' creation until every
event reached the receiver, beside the ceiling the bound allows (64 in
flight / H); the most connections open at the receiver at once (target ≤
64); the share of probes answered in time (target 100 %) and the slowest
answer; connections opened per 1,000 deliveries (keep-alive reuse).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

from bench.httpc import Connection
from bench.procs import cpu_seconds
from bench.report import Figure, Result, Target
from bench.scenarios import EVENT, PUBLISH_HEADERS

if TYPE_CHECKING:
    from bench.run import Context

NAME = "webhooks"
TITLE = "webhook fan-out to a receiver that holds each request"
FILES_LIMIT = 1024
#: The server's defaults, which this scenario measures.
CONCURRENCY = 64
PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 5.0
PUBLISHERS = 8


class Receiver:
    """Holds every POST for ``hold`` seconds, then answers 200; counts what it holds."""

    def __init__(self, hold: float, expected: int) -> None:
        self.hold = hold
        self.expected = expected
        self.ids: set[str] = set()
        self.requests = 0
        self.accepted = 0
        self.open = self.peak_open = 0
        self.in_flight = self.peak_in_flight = 0
        self.done = asyncio.Event()
        self.finished_at = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    await asyncio.sleep(self.hold)
                finally:
                    self.in_flight -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                self.requests += 1
                self.ids.add(headers.get("webhook-id", ""))
                if len(self.ids) >= self.expected and not self.done.is_set():
                    self.finished_at = time.perf_counter()
                    self.done.set()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()


class Probes:
    """Health checks and publishes, each on a new connection, while the storm lasts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.answered = 0
        self.slowest_ms = 0.0

    async def _once(self, method: str, path: str, body: bytes | None = None) -> int:
        conn = await Connection(self.port).connect()
        try:
            return (await conn.request(method, path, body,
                                       PUBLISH_HEADERS if body is not None else None)).status
        finally:
            conn.close()

    async def run(self, stop: asyncio.Event, method: str, path: str,
                  body: bytes | None = None) -> None:
        while not stop.is_set():
            self.sent += 1
            t0 = time.perf_counter()
            try:
                status = await asyncio.wait_for(self._once(method, path, body), PROBE_TIMEOUT_S)
            except Exception:  # refused, reset, timed out: not answered
                status = 0
            if status in (200, 201):
                self.answered += 1
                self.slowest_ms = max(self.slowest_ms, (time.perf_counter() - t0) * 1000)
            await asyncio.sleep(PROBE_EVERY_S)


async def _create_channels(port: int, context: str, channels: int) -> None:
    async def publisher(k: int) -> None:
        conn = await Connection(port).connect()
        try:
            for n in range(k, channels, PUBLISHERS):
                r = await conn.request("POST", f"/events/{context}/c{n:05}", EVENT, PUBLISH_HEADERS)
                if r.status != 201:
                    raise RuntimeError(f"publish answered {r.status}: {r.body[:200]!r}")
        finally:
            conn.close()

    await asyncio.gather(*(publisher(k) for k in range(PUBLISHERS)))


async def _storm(port: int, context: str, channels: int, subscriptions: int, hold: float,
                 timeout: float) -> dict:
    receiver = Receiver(hold, channels * subscriptions)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0, backlog=4096)
    hook_port = server.sockets[0].getsockname()[1]
    await _create_channels(port, context, channels)
    probes = Probes(port)
    stop = asyncio.Event()
    conn = await Connection(port).connect()
    started = time.perf_counter()
    try:
        for s in range(subscriptions):
            body = json.dumps({"context": context, "channel": "*", "start": "earliest",
                               "url": f"http://127.0.0.1:{hook_port}/hook?s={s}"}).encode()
            r = await conn.request("POST", "/subscriptions", body,
                                   {"Content-Type": "application/json"})
            if r.status != 201:
                raise RuntimeError(f"subscribe answered {r.status}: {r.body[:200]!r}")
        tasks = [asyncio.create_task(probes.run(stop, "GET", "/health")),
                 asyncio.create_task(probes.run(stop, "POST", "/events/bench-calm/probe", EVENT))]
        try:
            await asyncio.wait_for(receiver.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        conn.close()
        server.close()
        await server.wait_closed()
    delivered = len(receiver.ids)
    elapsed = (receiver.finished_at or time.perf_counter()) - started
    return {
        "delivered": delivered, "expected": channels * subscriptions,
        "events_per_s": delivered / elapsed, "seconds": elapsed,
        "peak_open": receiver.peak_open, "peak_in_flight": receiver.peak_in_flight,
        "accepted": receiver.accepted, "requests": receiver.requests,
        "probes_sent": probes.sent, "probes_answered": probes.answered,
        "slowest_probe_ms": probes.slowest_ms,
    }


def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    channels = ctx.size(1000, 100)
    subscriptions = ctx.size(16, 4)
    hold = 0.1 if not ctx.smoke else 0.02
    bus = ctx.eventbus(ctx.database("webhooks"), "--webhook-allow-private", nofile=FILES_LIMIT)
    rounds = []
    for r in range(ctx.rounds):
        cpu = cpu_seconds(bus.pid)
        rounds.append(asyncio.run(_storm(bus.port, f"fan-{r}", channels, subscriptions, hold,
                                         timeout=ctx.size(600, 60))))
        # Creating the channels is included: one publish each, against four
        # queries and a request per delivery.
        rounds[-1]["server_cpu_ms_per_delivery"] = (
            1000 * (cpu_seconds(bus.pid) - cpu) / max(1, rounds[-1]["delivered"]))
    label = f"{channels:,} channels × {subscriptions} '*' subs, receiver holds {hold * 1000:g} ms"
    ceiling = min(CONCURRENCY, 4 * subscriptions) / hold
    result.figures.append(Figure(
        f"webhook deliveries, {label}", "events/s", [r["events_per_s"] for r in rounds],
        baseline_name=f"ceiling: {min(CONCURRENCY, 4 * subscriptions)} in flight / hold",
        baseline_rounds=[ceiling] * len(rounds)))
    result.figures.append(Figure(
        "most connections open at the receiver at once", "conns",
        [r["peak_open"] for r in rounds], target=Target("max", CONCURRENCY, "conns")))
    result.figures.append(Figure(
        f"probes answered during the storm (new-connection /health, publish; ulimit -n {FILES_LIMIT})",
        "%", [100.0 * r["probes_answered"] / max(1, r["probes_sent"]) for r in rounds],
        target=Target("min", 100.0, "%")))
    result.references.append(Figure(
        "slowest probe answer during the storm", "ms", [r["slowest_probe_ms"] for r in rounds]))
    result.references.append(Figure(
        "server CPU per delivery", "ms", [r["server_cpu_ms_per_delivery"] for r in rounds]))
    result.references.append(Figure(
        "connections opened per 1,000 deliveries", "conns",
        [1000.0 * r["accepted"] / max(1, r["requests"]) for r in rounds]))
    for r in rounds:
        if r["delivered"] < r["expected"]:
            result.notes.append(f"only {r['delivered']:,} of {r['expected']:,} events were "
                                f"delivered within the time allowed")
    if "Too many open files" in bus.log_path.read_text(errors="replace"):
        result.notes.append("the server logged 'Too many open files'")
    result.details = {"rounds": rounds, "channels": channels, "subscriptions": subscriptions,
                      "hold_s": hold, "files_limit": FILES_LIMIT}
    return result
