"""The ``eventbus`` command line against real servers: every subcommand,
output on a terminal and without one, and the exit statuses."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from eventbus.client import Client
from tests.cli import eventbus, on_terminal, start
from tests.servers import ServerProcess, free_port
from tests.tokens import token_cli

DEADLINE_S = 60.0


def lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.fixture(scope="module")
def bus(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that accepts loopback webhook URLs (for ``subscriptions``)."""
    proc = ServerProcess(["--dsn", dsn, "--webhook-allow-private"], tmp_path_factory.mktemp("cli"))
    proc.start()
    yield proc
    proc.stop()


def test_publish_prints_the_stored_event_and_get_reads_it_back(bus, channel_name):
    done = eventbus("publish", f"cli/{channel_name}", '{"price": 1.50}', "--issuer", "ops", url=bus.base)
    assert done.returncode == 0, done.stderr
    [event] = lines(done.stdout)
    assert (event["id"], event["issuer"], event["payload"]) == (1, "ops", {"price": 1.5})
    assert done.stdout.decode().endswith('"payload":{"price": 1.50}}\n')  # the text as published
    one = eventbus("get", f"cli/{channel_name}/1", url=bus.base)
    assert one.returncode == 0 and one.stdout == done.stdout
    many = eventbus("get", f"cli/{channel_name}", url=bus.base)
    assert many.returncode == 0 and many.stdout == done.stdout
    as_json = eventbus("get", f"cli/{channel_name}", "--json", url=bus.base)
    assert json.loads(as_json.stdout) == [event]


def test_publish_reads_ndjson_in_batches_and_sums_up(bus, channel_name):
    source = b"".join(b'{"n": %d}\n' % i for i in range(25)) + b"\n"
    done = eventbus("publish", f"cli/{channel_name}", "--batch", "10", "--issuer", "ops", "--json",
                    input=source, url=bus.base)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"context": "cli", "channel": channel_name, "published": 25,
                                       "first_id": 1, "last_id": 25}
    assert b"published 25 event(s)" in done.stderr
    got = eventbus("get", f"cli/{channel_name}", "--limit", "3", url=bus.base)
    assert [e["payload"]["n"] for e in lines(got.stdout)] == [0, 1, 2]


def test_a_bad_line_stops_publishing_with_a_usage_error_after_what_went_before(bus, channel_name):
    source = b'{"n": 1}\n{"n": 2}\nnot json\n{"n": 4}\n'
    done = eventbus("publish", f"cli/{channel_name}", "--batch", "1", "--issuer", "ops", input=source, url=bus.base)
    assert done.returncode == 2
    assert b"error: line 3: not valid JSON" in done.stderr and b"published 2 event(s)" in done.stderr
    assert len(lines(eventbus("get", f"cli/{channel_name}", url=bus.base).stdout)) == 2


def test_exit_statuses_say_who_said_no(bus, channel_name):
    missing = eventbus("get", f"cli/{channel_name}/9", url=bus.base)
    assert missing.returncode == 1
    assert missing.stderr.decode() == f"error: 404 no event 9 in cli/{channel_name}\n"
    refused = eventbus("publish", f"cli/{channel_name}", "[1]", "--issuer", "x", url=bus.base)
    assert refused.returncode == 1 and refused.stderr.startswith(b"error: 400 ")
    down = eventbus("get", f"cli/{channel_name}", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and down.stderr.startswith(b"error: cannot connect to")
    assert b"Traceback" not in down.stderr
    for usage in (("get", "no-slash"), ("tail", "a/b", "--from", "0"), ("nonsense",), ("publish",)):
        done = eventbus(*usage, url=bus.base)
        assert done.returncode == 2, (usage, done.stderr)


def test_an_invalid_token_is_one_line_and_status_1(dsn, tmp_path, channel_name):
    proc = ServerProcess(["--dsn", dsn, "--auth", "required"], tmp_path).start()
    try:
        done = eventbus("get", f"cli/{channel_name}", url=proc.base, token="ebt_" + "x" * 43)
        assert done.returncode == 1
        assert done.stderr.decode().startswith("error: 401 ") and len(done.stderr.decode().splitlines()) == 1
    finally:
        proc.stop()


def test_tail_follows_live_filters_by_issuer_and_ends_cleanly_on_ctrl_c(bus, channel_name):
    with Client(bus.base, issuer="a") as c:
        c.publish("cli", channel_name, {"old": True})
        tail = start("tail", f"cli/{channel_name}", "--issuer", "b", url=bus.base)
        try:
            deadline = time.monotonic() + DEADLINE_S
            # Published until the tail (which starts at the head) has seen one.
            assert tail.stdout is not None
            import os
            import select

            os.set_blocking(tail.stdout.fileno(), False)
            seen = b""
            while b"\n" not in seen:
                assert time.monotonic() < deadline, tail.stderr
                c.publish("cli", channel_name, {"from": "a"})
                c.publish("cli", channel_name, {"from": "b"}, issuer="b")
                select.select([tail.stdout], [], [], 0.5)
                seen += tail.stdout.read() or b""
            tail.send_signal(signal.SIGINT)
            out, err = tail.communicate(timeout=DEADLINE_S)
        finally:
            if tail.poll() is None:
                tail.kill()
    assert tail.returncode == 0, err
    assert b"Traceback" not in err
    events = lines(seen + out)
    assert events and all(e["issuer"] == "b" and e["payload"] == {"from": "b"} for e in events)


def test_tail_from_the_start_or_an_id_prints_one_json_object_per_line(bus, channel_name):
    with Client(bus.base, issuer="a") as c:
        c.publish_batch("cli", channel_name, [{"n": i} for i in range(5)])
        c.publish("cli", channel_name, '{"lines":\n[1,\n2]}')
    done = eventbus("tail", f"cli/{channel_name}", "--from-start", "-n", "6", url=bus.base, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    assert [e["id"] for e in lines(done.stdout)] == [1, 2, 3, 4, 5, 6]
    assert lines(done.stdout)[-1]["payload"] == {"lines": [1, 2]}
    done = eventbus("tail", f"cli/{channel_name}", "--from", "4", "-n", "2", url=bus.base, timeout=DEADLINE_S)
    assert [e["id"] for e in lines(done.stdout)] == [4, 5]


def test_on_a_terminal_events_are_pretty_and_tables_have_colour(bus, channel_name):
    with Client(bus.base, issuer="a") as c:
        c.publish("cli", channel_name, {"colour": "blue"})
    status, shown, _ = on_terminal("get", f"cli/{channel_name}/1", url=bus.base)
    assert status == 0 and b"\x1b[" in shown and b'"colour"' in shown and b"#1" in shown
    status, shown, _ = on_terminal("get", f"cli/{channel_name}", url=bus.base)
    assert status == 0 and b"PAYLOAD" in shown and b"\x1b[" in shown
    # --json wins over the terminal
    status, shown, _ = on_terminal("get", f"cli/{channel_name}", "--json", url=bus.base)
    assert status == 0 and json.loads(shown)[0]["payload"] == {"colour": "blue"}


def test_a_progress_bar_is_drawn_only_on_a_terminal(bus, channel_name):
    source = b"".join(b'{"n": %d}\n' % i for i in range(3000))
    status, shown, out = on_terminal("publish", f"cli/{channel_name}", "--issuer", "ops", "--batch", "100",
                                     url=bus.base, input=source, stdout_tty=False)
    assert status == 0, shown
    text = shown.decode(errors="replace")
    assert "events/s" in text and "3,000" in text and "published 3000 event(s)" in text
    piped = eventbus("publish", f"cli/{channel_name}", "--issuer", "ops", input=source, url=bus.base)
    assert piped.returncode == 0 and b"events/s" not in piped.stderr and b"\x1b[" not in piped.stderr


def test_consumers_show_their_state_dead_letters_and_retry(bus, channel_name):
    with Client(bus.base, issuer="a") as c:
        c.publish_batch("cli", channel_name, [{"n": 1}, {"n": 2}])
        consumer = c.consumer("cli", channel_name, "billing", max_deliveries=1)
        consumer.next(10).nack()  # its only delivery: dead
    table = eventbus("consumers", f"cli/{channel_name}", url=bus.base)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.decode().splitlines()
    assert header.split()[:4] == ["NAME", "MODE", "CURSOR", "LAG"] and row.split()[:6] == [
        "billing", "ordered", "1", "1", "0", "1"]
    one = eventbus("consumers", f"cli/{channel_name}", "billing", "--json", url=bus.base)
    assert json.loads(one.stdout)["dead"] == 1
    dead = eventbus("consumers", "dead", f"cli/{channel_name}", "billing", "--json", url=bus.base)
    assert [(d["event"]["id"], d["deliveries"]) for d in json.loads(dead.stdout)] == [(1, 1)]
    retried = eventbus("consumers", "retry", f"cli/{channel_name}", "billing", "1", url=bus.base)
    assert retried.returncode == 0 and b"goes to billing again" in retried.stderr
    assert json.loads(eventbus("consumers", f"cli/{channel_name}", "billing", "--json", url=bus.base).stdout)["dead"] == 0
    unknown = eventbus("consumers", "retry", f"cli/{channel_name}", "billing", "2", url=bus.base)
    assert unknown.returncode == 1 and unknown.stderr.startswith(b"error: 404")


def test_subscriptions_list_show_enable_and_delete(bus, channel_name):
    with Client(bus.base) as c:
        sub = c.subscriptions.create("cli", channel_name, f"http://127.0.0.1:{free_port()}/hook")
    listed = eventbus("subscriptions", "--json", url=bus.base)
    assert sub["id"] in [s["id"] for s in json.loads(listed.stdout)]
    plain = eventbus("subscriptions", url=bus.base)
    assert plain.returncode == 0 and plain.stdout.split()[:3] == [b"ID", b"CHANNEL", b"URL"]
    one = eventbus("subscriptions", str(sub["id"]), url=bus.base)
    assert one.returncode == 0 and b"CHANNEL" in one.stdout and f"cli/{channel_name}".encode() in one.stdout
    enabled = eventbus("subscriptions", "enable", str(sub["id"]), url=bus.base)
    assert enabled.returncode == 0 and b"is active" in enabled.stderr
    deleted = eventbus("subscriptions", "delete", str(sub["id"]), url=bus.base)
    assert deleted.returncode == 0
    again = eventbus("subscriptions", str(sub["id"]), url=bus.base)
    assert again.returncode == 1 and again.stderr.startswith(b"error: 404")


def test_channels_lists_each_channel_with_its_ids_and_retention(bus, channel_name):
    with Client(bus.base, issuer="a") as c:
        c.publish_batch("cli-ch", channel_name, [{"n": 1}, {"n": 2}])
    listed = eventbus("channels", "--context", "cli-ch", "--json", url=bus.base)
    assert listed.returncode == 0, listed.stderr
    [channel] = [c for c in json.loads(listed.stdout) if c["channel"] == channel_name]
    assert (channel["first_id"], channel["last_id"], channel["count"]) == (1, 2, 2)
    plain = eventbus("channels", "--context", "cli-ch", url=bus.base)
    assert plain.stdout.split()[:6] == [b"CHANNEL", b"FIRST", b"LAST", b"COUNT", b"LAST", b"EVENT"]
    assert f"cli-ch/{channel_name}".encode() in plain.stdout


def test_serve_runs_the_server_and_help_lists_the_commands(dsn, tmp_path):
    class Serve(ServerProcess):
        def command(self) -> list[str]:
            return [*super().command(), "serve"]

    proc = Serve(["--dsn", dsn], tmp_path).start()
    try:
        assert proc.health() == 200
    finally:
        assert proc.stop() == 0
    helped = eventbus("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in (b"serve", b"tail", b"export", b"import"))
    server_help = eventbus("serve", "--help")
    assert server_help.returncode == 0 and b"--dsn" in server_help.stdout


def test_token_commands_still_work_beside_the_others(dsn, channel_name):
    done = token_cli("create", f"cli-{channel_name}"[:100], "--scope", "read:cli/*", dsn=dsn)
    assert done.stdout.startswith("ebt_")
    listed = token_cli("list", "--json", dsn=dsn)
    assert f"cli-{channel_name}"[:100] in [t["name"] for t in json.loads(listed.stdout)]


def test_import_append_publishes_the_payloads_anew(bus, channel_name, tmp_path: Path):
    with Client(bus.base, issuer="a") as c:
        c.publish("cli", channel_name, '{"x": 1.50}')
        c.publish("cli", channel_name, {"y": 2}, issuer="b")
    exported = tmp_path / "x.ndjson"
    assert eventbus("export", f"cli/{channel_name}", "--to", str(exported), url=bus.base).returncode == 0
    done = eventbus("import", str(exported), f"cli/{channel_name}", "--append", url=bus.base)
    assert done.returncode == 0, done.stderr
    events = lines(eventbus("get", f"cli/{channel_name}", url=bus.base).stdout)
    assert [(e["id"], e["issuer"]) for e in events] == [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
    assert eventbus("get", f"cli/{channel_name}/3", url=bus.base).stdout.endswith(b'"payload":{"x": 1.50}}\n')
