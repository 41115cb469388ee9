"""The client and the command line where retention deleted events: never a
silent skip (``Expired``, or a ``missed`` count), and a pruned channel
exported and restored starts where it started."""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from eventbus.client import Client, Expired
from tests.cli import eventbus
from tests.servers import ServerProcess

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def pruning(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn, "--retention-interval", "0.1"], tmp_path_factory.mktemp("pruning"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def pruned(pruning: ServerProcess, channel_name: str) -> Iterator[Client]:
    """A channel that had events 1..10 and keeps the newest 3 (8, 9, 10)."""
    with Client(pruning.base, issuer="i") as c:
        c.channels.configure("rt", channel_name, max_events=3)
        c.publish_batch("rt", channel_name, [{"n": i} for i in range(1, 11)])
        deadline = time.monotonic() + DEADLINE_S
        while c.channels.get("rt", channel_name)["count"] != 3:
            assert time.monotonic() < deadline, "the pruner did not prune"
            time.sleep(0.1)
        yield c


def test_follow_raises_expired_or_counts_what_it_missed(pruned, channel_name):
    with pytest.raises(Expired) as raised:
        next(iter(pruned.follow("rt", channel_name, after=2)))
    assert (raised.value.first_id, raised.value.missed) == (8, 5)
    events = pruned.follow("rt", channel_name, after=0, on_expired="skip")
    got = [next(events) for _ in range(3)]
    assert [(e.id, e.missed) for e in got] == [(8, 7), (9, 0), (10, 0)]


def test_peek_raises_expired_or_answers_the_first_stored_event(pruned, channel_name):
    with pytest.raises(Expired) as raised:
        pruned.peek("rt", channel_name, 0)
    assert (raised.value.status, raised.value.first_id, raised.value.missed) == (410, 8, 7)
    event = pruned.peek("rt", channel_name, 0, on_expired="earliest")
    assert (event.id, event.missed) == (8, 7)


def test_tail_says_what_retention_deleted_and_goes_on(pruned, pruning, channel_name):
    done = eventbus("tail", f"rt/{channel_name}", "--from-start", "-n", "3", url=pruning.base, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert b"(7 event(s) before #8 were deleted by retention)" in done.stderr
    assert [line.count(b'"id":') for line in done.stdout.splitlines()] == [1, 1, 1]


def test_a_pruned_channel_restores_from_its_first_stored_event(pruned, pruning, channel_name, tmp_path):
    exported = tmp_path / "pruned.ndjson"
    assert eventbus("export", f"rt/{channel_name}", "--to", str(exported), url=pruning.base).returncode == 0
    target = channel_name + "-copy"
    done = eventbus("import", str(exported), f"rt/{target}", url=pruning.base)
    assert done.returncode == 0, done.stderr
    info = pruned.channels.get("rt", target)
    assert (info["first_id"], info["last_id"], info["count"]) == (8, 10, 3)
    with pytest.raises(Expired) as raised:  # 1..7 count as deleted, as in the original
        pruned.peek("rt", target, 0)
    assert (raised.value.first_id, raised.value.missed) == (8, 7)
    assert [e.id for e in pruned.history("rt", target)] == [8, 9, 10]
    assert pruned.publish("rt", target, {"n": 11}).id == 11
    again = tmp_path / "again.ndjson"
    assert eventbus("export", f"rt/{target}", "--to", str(again), url=pruning.base).returncode == 0
    assert again.read_text().splitlines()[:3] == [
        line.replace(f'"channel":"{channel_name}"', f'"channel":"{target}"') for line in exported.read_text().splitlines()
    ]
