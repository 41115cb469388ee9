"""Where a held long-poll waiter's memory goes: tracemalloc in a server process.

``python -m bench.memprofile [--waiters N] [--frames F] [--top K]`` starts an
embedded PostgreSQL and one ``python -m eventbus`` whose interpreter starts
:mod:`tracemalloc` (``F`` frames per allocation) on ``SIGUSR2`` and answers
``SIGUSR1`` by writing a snapshot (tracing from the start would slow the
server down until its database queries time out).  One warm-up round of waiters first (lazy imports,
caches and free lists that the first use fills for good), then a snapshot
with none held, then N idle ``peek`` waiters on N channels (held by
:mod:`bench.holder`, as the ``waiters`` scenario does), another snapshot
once the server is quiet, and the difference grouped three ways: by the
allocating line, by the first frame inside our package (what of ours
holds it), and by traceback, in bytes per held waiter.  The server's VmRSS
is read beside (tracemalloc's own bookkeeping inflates it: the RSS figure
to trust is the ``waiters`` scenario's, without tracing).

A tool for finding where memory goes, not a scenario: no target.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench import procs
from bench.holder import IdleWaiters

#: Run in the server's interpreter before the event bus starts.
_BOOT = """
import os, signal, sys, tracemalloc
_n = [0]
def _start(signum, frame):
    tracemalloc.start(int(os.environ["EVENTBUS_MEMPROFILE_FRAMES"]))
signal.signal(signal.SIGUSR2, _start)
def _dump(signum, frame):
    import gc
    gc.collect()
    if os.environ.get("EVENTBUS_MEMPROFILE_DICTS"):
        from twisted.web.server import Request
        live = [o for o in gc.get_objects() if isinstance(o, Request)]
        if live:
            sys.stderr.write("REQUEST-DICT %d %d %r\\n" % (len(live), sys.getsizeof(live[0].__dict__), list(live[0].__dict__)))
    path = os.environ["EVENTBUS_MEMPROFILE_DIR"] + "/snap-%d" % _n[0]
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path)
    _n[0] += 1
signal.signal(signal.SIGUSR1, _dump)
from eventbus.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
TEMPLATE = "/events/bench/idle-{i}?peek=0&timeout=300"
#: Waiters sent at once.
BATCH = 100


class TracedEventBus(procs.EventBus):
    name = "eventbus-traced"

    def command(self) -> list[str]:
        command = super().command()
        return [command[0], "-c", _BOOT, *command[3:]]


def snapshot(server: TracedEventBus, outdir: Path, n: int) -> tracemalloc.Snapshot:
    path = outdir / f"snap-{n}"
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no snapshot from the server")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def ours(frame_file: str) -> bool:
    return f"{os.sep}eventbus{os.sep}" in frame_file and f"{os.sep}site-packages{os.sep}" not in frame_file


def report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, waiters: int, top: int) -> None:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    print(f"\ntraced growth: {total / 1024:,.0f} KiB for {waiters:,} waiters = "
          f"{total / waiters:,.0f} B per waiter\n")

    print(f"-- by allocating line (top {top}), bytes per waiter, blocks per waiter")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"{stat.size_diff / waiters:8,.0f} B {stat.count_diff / waiters:6.2f}  "
              f"{_short(frame.filename)}:{frame.lineno}")

    print("\n-- by part (the allocating frame, or for a Deferred's the frame that made it)")
    old_parts, new_parts = _by_part(before), _by_part(after)
    for part, (size, count) in sorted(((p, (new_parts.get(p, (0, 0))[0] - old_parts.get(p, (0, 0))[0],
                                             new_parts.get(p, (0, 0))[1] - old_parts.get(p, (0, 0))[1]))
                                       for p in set(old_parts) | set(new_parts)), key=lambda kv: -kv[1][0]):
        print(f"{size / waiters:8,.0f} B {count / waiters:6.2f}  {part}")

    print(f"\n-- by the innermost frame of eventbus/ on the stack (top {top})")
    grouped: dict[str, list[int]] = {}
    old = _by_owner(before)
    new = _by_owner(after)
    for key in set(old) | set(new):
        a, b = old.get(key, (0, 0)), new.get(key, (0, 0))
        grouped[key] = [b[0] - a[0], b[1] - a[1]]
    for key, (size, count) in sorted(grouped.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{size / waiters:8,.0f} B {count / waiters:6.2f}  {key}")

    print(f"\n-- by traceback (top {min(top, 12)}), innermost last")
    for stat in after.compare_to(before, "traceback")[:min(top, 12)]:
        print(f"{stat.size_diff / waiters:8,.0f} B {stat.count_diff / waiters:6.2f} blocks")
        for frame in stat.traceback.format(limit=8, most_recent_first=False)[-16:]:
            if frame.strip() and not frame.startswith("    "):
                print(f"      {frame.strip()}")
        print()


#: (path fragment, part), first match wins; frames of Deferred machinery are
#: skipped so that a Deferred counts where it was made.
PARTS = [
    ("eventbus/notifier.py", "notifier: subscription, channel entry, long poll"),
    ("twisted/internet/base.py", "timers (callLater)"),
    ("klein/", "Klein: per-request dispatch and its Deferred chain"),
    ("werkzeug/", "werkzeug: URL matching"),
    ("eventbus/http/router.py", "our router: checks and dispatch"),
    ("eventbus/http/access.py", "held(): hold and its coroutine"),
    ("eventbus/http/events.py", "handler coroutines (read, _peek)"),
    ("eventbus/storage/", "storage calls (finished, their Deferreds)"),
    ("twisted/web/http_headers.py", "twisted.web request: headers"),
    ("twisted/web/", "twisted.web request and channel"),
    ("eventbus/http/site.py", "twisted.web request and channel"),
    ("twisted/internet/tcp.py", "connection: socket and transport"),
    ("twisted/internet/protocol.py", "connection: socket and transport"),
    ("/socket.py", "connection: socket and transport"),
    ("twisted/python/components.py", "twisted.web request: adapters cache"),
]
SKIP = ("twisted/internet/defer.py", "twisted/python/failure.py")


def _by_part(snap: tracemalloc.Snapshot) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for trace in snap.traces:
        part = "other"
        for frame in reversed(trace.traceback):  # most recent first
            if any(s in frame.filename for s in SKIP):
                continue
            part = next((name for frag, name in PARTS if frag in frame.filename), f"other: {_short(frame.filename)}")
            break
        entry = out.setdefault(part, [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _by_owner(snap: tracemalloc.Snapshot) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for trace in snap.traces:
        owner = "(no eventbus frame)"
        for frame in reversed(trace.traceback):  # most recent first
            if ours(frame.filename):
                owner = f"{_short(frame.filename)}:{frame.lineno}"
                break
        entry = out.setdefault(owner, [0, 0])
        entry[0] += trace.size
        entry[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _short(path: str) -> str:
    for marker in (f"{os.sep}site-packages{os.sep}", str(procs.REPO) + os.sep, f"{os.sep}lib{os.sep}python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memprofile")
    parser.add_argument("--waiters", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    procs.raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-memprofile-"))
    snapdir = workdir / "snaps"
    snapdir.mkdir()
    os.environ["EVENTBUS_MEMPROFILE_FRAMES"] = str(args.frames)
    os.environ["EVENTBUS_MEMPROFILE_DIR"] = str(snapdir)
    pg = procs.Postgres(workdir).start()
    server = None
    try:
        server = TracedEventBus(workdir, pg.database("memprofile"))
        server.start()
        with IdleWaiters(server.port, min(args.waiters, 500), TEMPLATE, server.pid):
            pass
        rss0 = server.rss_kb()
        os.kill(server.pid, signal.SIGUSR2)  # trace from here on: the warm-up ran at full speed
        time.sleep(1)
        before = snapshot(server, snapdir, 0)
        # In batches, each registered before the next comes: a traced server
        # is slow, and on a busy machine thousands of requests at once would
        # wait out the query timeout, be answered 503 and come back.
        with contextlib.ExitStack() as stack:
            for start in range(0, args.waiters, BATCH):
                count = min(BATCH, args.waiters - start)
                stack.enter_context(IdleWaiters(server.port, count, f"/events/bench/b{start}-{{i}}?peek=0&timeout=300",
                                                server.pid))
            rss1 = server.rss_kb()
            after = snapshot(server, snapdir, 1)
        refused = server.log_path.read_text(errors="replace").count('" 503 ')
        if refused:
            print(f"WARNING: {refused} requests were answered 503 (the server was too slow): "
                  "the figures below include their retries")
        print(f"VmRSS (traced, inflated by tracemalloc): {rss0 / 1024:.1f} MB -> {rss1 / 1024:.1f} MB, "
              f"{(rss1 - rss0) * 1024 / args.waiters:,.0f} B per waiter")
        report(before, after, args.waiters, args.top)
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
