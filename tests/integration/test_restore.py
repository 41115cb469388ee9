"""``POST /channels/{context}/{channel}/restore`` and ``eventbus export``/``import``:
restored events keep their ids and timestamps, the channel goes on after
them as if they had been published, and a round trip is byte for byte."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest

from eventbus.client import BadRequest, Client, Conflict, Forbidden
from eventbus.storage.embedded import EmbeddedPostgres
from tests.cli import eventbus
from tests.servers import ServerProcess
from tests.tokens import token_cli

DEADLINE_S = 60.0


def exported(context: str, channel: str, first: int, count: int, ts: float = 1764248745.123456) -> list[str]:
    return [
        json.dumps({"id": i, "issuer": f"iss{i % 3}", "context": context, "channel": channel,
                    "timestamp": round(ts + i / 1000, 6), "payload": {"n": i, "f": 1.5}}, separators=(",", ":"))
        for i in range(first, first + count)
    ]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.base, issuer="live") as c:
        yield c


def test_a_publish_after_a_restore_gets_the_next_id_and_a_later_timestamp(client, channel_name):
    answer = client.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 5), 0)
    assert (answer["first_id"], answer["last_id"], answer["count"]) == (1, 5, 5)
    answer = client.channels.restore("rs", channel_name, exported("rs", channel_name, 6, 5), 5)
    assert answer["last_id"] == 10
    restored = list(client.history("rs", channel_name))
    assert [e.id for e in restored] == list(range(1, 11))
    assert restored[0].timestamp == 1764248745.124456 and restored[-1].timestamp == 1764248745.133456
    assert [e.issuer for e in restored[:3]] == ["iss1", "iss2", "iss0"]
    assert restored[0].raw == exported("rs", channel_name, 1, 1)[0]
    event = client.publish("rs", channel_name, {"after": "restore"})
    assert event.id == 11 and event.timestamp >= restored[-1].timestamp


def test_a_peek_chain_over_a_restored_channel_sees_every_event_once(client, channel_name):
    client.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 250), 0)
    client.publish("rs", channel_name, {"n": "live"})
    seen, cursor = [], 0
    while (event := client.peek("rs", channel_name, cursor, timeout=0)) is not None:
        seen.append(event.id)
        cursor = event.id
    assert seen == list(range(1, 252))


def test_waiting_readers_in_every_process_are_woken_by_a_restore(client, server, dsn, tmp_path, channel_name):
    other = ServerProcess(["--dsn", dsn], tmp_path).start()
    got: dict[str, object] = {}

    def wait(name: str, base: str) -> None:
        with Client(base) as c:
            got[name] = c.peek("rs", channel_name, 0, timeout=DEADLINE_S)

    def lease() -> None:
        with Client(server.base) as c:
            got["lease"] = c.consumer("rs", channel_name, "waiting").next(DEADLINE_S)

    try:
        waiters = [threading.Thread(target=wait, args=(n, b)) for n, b in (("here", server.base), ("there", other.base))]
        waiters.append(threading.Thread(target=lease))
        for t in waiters:
            t.start()
        import time

        time.sleep(1.0)  # the waiters are held (a lost wake-up would leave them so)
        client.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 3), 0)
        for t in waiters:
            t.join(DEADLINE_S)
        assert got["here"].id == got["there"].id == 1
        assert got["lease"].event.id == 1
    finally:
        other.stop()


def test_a_restore_goes_only_where_the_channel_ends_where_it_expects(client, channel_name):
    client.publish("rs", channel_name, {"n": 1})
    with pytest.raises(Conflict, match="ends at id 1") as raised:
        client.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 2), 0)
    assert raised.value.last_id == 1
    later = 1.9e9  # after the live event: a restore never puts time back
    with pytest.raises(Conflict) as raised:
        client.channels.restore("rs", channel_name, exported("rs", channel_name, 6, 2, later), 5)
    assert raised.value.last_id == 1
    with pytest.raises(BadRequest, match="must start with id 6"):  # the request contradicts itself
        client.channels.restore("rs", channel_name, exported("rs", channel_name, 2, 2, later), 5)
    with pytest.raises(BadRequest, match="older than the channel's last event"):
        client.channels.restore("rs", channel_name, exported("rs", channel_name, 2, 2), 1)
    answer = client.channels.restore("rs", channel_name, exported("rs", channel_name, 2, 2, later), 1)
    assert answer["last_id"] == 3
    assert [e.id for e in client.history("rs", channel_name)] == [1, 2, 3]


def test_a_failed_batch_stores_nothing(client, channel_name):
    batch = exported("rs", channel_name, 1, 3)
    batch[2] = batch[2].replace('"payload":{', '"payload":{"n":0,')  # a duplicate member
    with pytest.raises(Exception, match="same member twice"):
        client.channels.restore("rs", channel_name, batch, 0)
    assert list(client.history("rs", channel_name)) == []
    assert client.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 3), 0)["last_id"] == 3


def test_a_restore_needs_admin(dsn, tmp_path, channel_name):
    proc = ServerProcess(["--dsn", dsn, "--auth", "required"], tmp_path).start()
    try:
        name = f"rs-{channel_name}"[:100]
        token = token_cli("create", name, "--scope", "publish:rs/*", "--scope", "read:rs/*", dsn=dsn).stdout.strip()
        with Client(proc.base, token) as c, pytest.raises(Forbidden, match="admin"):
            c.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 1), 0)
        admin = token_cli("create", name + "-admin", "--scope", "admin", dsn=dsn).stdout.strip()
        with Client(proc.base, admin) as c:
            assert c.channels.restore("rs", channel_name, exported("rs", channel_name, 1, 1), 0)["count"] == 1
    finally:
        proc.stop()


@pytest.fixture
def fresh_server(postgres: EmbeddedPostgres, tmp_path: Path, request) -> Iterator[ServerProcess]:
    """A server on a database of its own, created empty for this test."""
    name = "fresh_" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    conn = psycopg2.connect(postgres.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    proc = ServerProcess(["--dsn", postgres.dsn(name)], tmp_path / "fresh").start()
    yield proc
    proc.stop()


def test_export_then_import_into_a_fresh_server_then_export_is_byte_identical(server, fresh_server, tmp_path):
    """100,000 events, with payloads of every shape (numbers as written, unicode,
    nesting, and line breaks, which an export writes as spaces)."""
    channel = "roundtrip"
    source = tmp_path / "source.ndjson"
    with source.open("w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(['{"n": %d, "price": 1.50}', '{"name": "Zoë ✓ %d", "e": 1E+2}',
                     '{"deep": [[{"a": [%d]}]], "big": 123456789012345678901234567890}',
                     '{"x":%d}'][i % 4] % i + "\n")
    published = eventbus("publish", f"rt/{channel}", "--issuer", "JERPi", "--batch", "1000",
                         input=source.read_bytes(), url=server.base)
    assert published.returncode == 0, published.stderr
    with Client(server.base, issuer="other") as c:
        c.publish("rt", channel, '{"lines":\n[1,\r\n2]}')
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    done = eventbus("export", f"rt/{channel}", "--to", str(first), url=server.base)
    assert done.returncode == 0, done.stderr
    done = eventbus("import", str(first), f"rt/{channel}", url=fresh_server.base)
    assert done.returncode == 0, done.stderr
    assert b"restored 100001 event(s)" in done.stderr
    done = eventbus("export", f"rt/{channel}", "--to", str(second), url=fresh_server.base)
    assert done.returncode == 0, done.stderr
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text(encoding="utf-8").splitlines()
    assert len(text) == 100_001 and text[1].endswith('"payload":{"name": "Zoë ✓ 1", "e": 1E+2}}')
    assert text[-1].endswith('"payload":{"lines": [1, 2]}}')  # CRLF and LF: one space each
    # The restored channel goes on after its last id.
    with Client(fresh_server.base, issuer="after") as c:
        assert c.publish("rt", channel, {"next": True}).id == 100_002
    again = eventbus("import", str(first), f"rt/{channel}", url=fresh_server.base)
    assert again.returncode == 1 and b"error: 409" in again.stderr
