"""Hold thousands of idle long-poll requests open, in a process of its own.

``python -m bench.holder PORT COUNT PATH_TEMPLATE`` opens COUNT keep-alive
connections and sends ``GET PATH_TEMPLATE.format(i=n)`` on each; whenever
one is answered (a timeout's ``204``, say) it asks again, so the server
keeps COUNT waiters for as long as the holder runs.  It prints one JSON line
when every request has been sent, and a last one (counts of answers and
errors) when its standard input closes, then exits.

A separate process, so the measuring client's event loop never shares a
core's time slice with ten thousand sockets.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Optional

from bench.httpc import Connection, HTTPError
from bench.procs import REPO, raise_nofile, wait_quiet

#: Connections being set up at once: the server's listen backlog is small
#: (Twisted's default is 50) and overflowing it costs seconds of SYN retries.
CONNECT_CONCURRENCY = 40


class Holder:
    def __init__(self, port: int, count: int, template: str) -> None:
        self.port = port
        self.count = count
        self.template = template
        self.open = 0
        self.failed = 0
        self.answers = 0
        self.errors = 0
        self.connections: list[Connection] = []

    async def run(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        tasks = [asyncio.ensure_future(self._one(i, gate)) for i in range(self.count)]
        while self.open + self.failed < self.count:
            await asyncio.sleep(0.01)
        print(json.dumps({"ready": self.open, "failed": self.failed}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for task in tasks:
            task.cancel()
        for conn in self.connections:
            conn.close()
        print(json.dumps({"answers": self.answers, "errors": self.errors}), flush=True)

    async def _one(self, i: int, gate: asyncio.Semaphore) -> None:
        path = self.template.format(i=i)
        try:
            async with gate:
                conn = await Connection(self.port).connect()
                conn.send("GET", path)
        except OSError:
            self.failed += 1
            return
        self.connections.append(conn)
        self.open += 1
        try:
            while True:
                await conn.response()
                self.answers += 1
                conn.send("GET", path)
        except (OSError, HTTPError, asyncio.IncompleteReadError):
            self.errors += 1


class IdleWaiters:
    """Parent side: ``with IdleWaiters(port, n, template, server_pid):`` holds
    n waiters for the duration of the block.

    Entering returns once every request is sent *and* the server has gone
    quiet (it has registered them: a long poll gives no answer saying so);
    leaving, once the server has gone quiet again after the disconnects.
    """

    def __init__(self, port: int, count: int, template: str,
                 server_pid: Optional[int] = None, timeout: float = 300.0) -> None:
        self.port = port
        self.count = count
        self.template = template
        self.server_pid = server_pid
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.ready: dict = {}
        self.final: dict = {}

    def __enter__(self) -> "IdleWaiters":
        if self.count == 0:
            return self
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.holder", str(self.port), str(self.count),
             self.template],
            cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"waiter holder exited with {self.proc.wait()}")
        self.ready = json.loads(line)
        if self.ready["failed"]:
            self.__exit__()
            raise RuntimeError(f"{self.ready['failed']} of {self.count} waiters "
                               "could not connect")
        if self.server_pid is not None:
            wait_quiet(self.server_pid, timeout=self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()
            line = self.proc.stdout.readline()
            self.final = json.loads(line) if line else {}
            self.proc.wait(30)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.server_pid is not None:
            # Let the server finish dropping them before the next measurement.
            wait_quiet(self.server_pid, timeout=self.timeout)


def main(argv: list[str]) -> int:
    raise_nofile()
    port, count, template = int(argv[0]), int(argv[1]), argv[2]
    asyncio.run(Holder(port, count, template).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
