"""``--workers`` without processes: options, the spec a worker is sent,
the parent's sockets, and what shutdown answers (a Clock, fakes)."""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from twisted.internet import defer, task
from twisted.python import usage

from eventbus.config import DEFAULTS, Options, Settings, cpu_count, metrics_endpoint, parse_workers
from eventbus.consumers import Consumers
from eventbus.notifier import Notifier
from eventbus.workers import Inherited, WorkerSpec, bind
from tests.unit.test_consumer_waking import CH, CTX, ScriptedStore, leased, nothing
from tests.unit.test_notifier import FakeStore


def parse(*args: str) -> Settings:
    options = Options()
    options.parseOptions(list(args))
    return options.settings()


def test_workers_default_to_one_and_auto_means_one_per_cpu():
    assert parse().workers == DEFAULTS.workers == 1
    assert parse("--workers", "3").workers == 3
    assert parse("--workers", "auto").workers == cpu_count() == parse_workers("AUTO")


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "257", ""])
def test_a_bad_worker_count_is_a_usage_error(value):
    with pytest.raises(usage.UsageError, match="--workers"):
        parse("--workers", value)


def test_workers_share_only_endpoints_the_parent_can_bind():
    assert parse("--workers", "2", "--listen", "unix:/tmp/x.sock", "--listen", "tcp6:0").workers == 2
    with pytest.raises(usage.UsageError, match="cannot share systemd:domain=INET:index=0"):
        parse("--workers", "2", "--listen", "systemd:domain=INET:index=0")
    # One process serves any endpoint, as before.
    assert parse("--listen", "systemd:domain=INET:index=0").workers == 1


def test_listen_dsn_goes_with_dsn():
    settings = parse("--dsn", "host=pooler", "--listen-dsn", "host=primary")
    assert (settings.dsn, settings.listen_dsn) == ("host=pooler", "host=primary")
    assert parse("--dsn", "host=x").listen_dsn is None
    with pytest.raises(usage.UsageError, match="--listen-dsn needs --dsn"):
        parse("--listen-dsn", "host=primary")


@pytest.mark.parametrize("endpoint, worker, expected", [
    ("tcp:9300", None, "tcp:9300"),
    ("tcp:9300", 1, "tcp:9300"),
    ("tcp:9300", 3, "tcp:9302"),
    ("tcp:9300:interface=127.0.0.1", 2, "tcp:9301:interface=127.0.0.1"),
    ("tcp6:port=9300:interface=\\:\\:1", 2, "tcp6:port=9301:interface=\\:\\:1"),
    ("tcp:interface=127.0.0.1:port=9300", 4, "tcp:interface=127.0.0.1:port=9303"),
])
def test_each_worker_serves_its_metrics_on_the_given_port_plus_its_number_minus_one(endpoint, worker, expected):
    assert parse("--workers", "4", "--metrics-listen", endpoint).metrics_listen == endpoint
    assert metrics_endpoint(endpoint, worker) == expected


@pytest.mark.parametrize("args", [
    ["--metrics-listen", "unix:/tmp/m.sock"],
    ["--metrics-listen", "ssl:9300"],
    ["--metrics-listen", "tcp:interface=127.0.0.1"],
    ["--metrics-listen", "tcp:http"],
    ["--metrics-listen", "tcp:0", "--workers", "2"],
    ["--metrics-listen", "tcp:65535", "--workers", "2"],
])
def test_a_metrics_endpoint_without_a_port_for_every_worker_is_a_usage_error(args):
    with pytest.raises(usage.UsageError, match="--metrics-listen"):
        parse(*args)
    assert parse().metrics_listen is None


def test_a_worker_gets_every_setting_of_its_parent():
    settings = parse("--dsn", "host=db", "--listen-dsn", "host=primary", "--cors-origin", "https://a.example",
                     "--webhook-allow-private", "--max-body", "99", "--heartbeat", "2.5")
    spec = WorkerSpec(2, dataclasses.replace(settings, listen=()),
                      (Inherited(4, socket.AF_INET, "tcp:8080"), Inherited(5, socket.AF_UNIX, "unix:/x")))
    again = WorkerSpec.from_json(spec.to_json())
    assert again == spec
    assert again.settings.cors_origin == ("https://a.example",)  # tuples, as the parent had them


def test_a_tcp_endpoint_gets_one_socket_per_worker_on_one_port():
    bound = bind("tcp:0:interface=127.0.0.1:backlog=7", 3)
    try:
        ports = {s.getsockname() for s in bound.sockets}
        assert len(bound.sockets) == 3 and len(ports) == 1
        assert len({bound.fileno(n) for n in (1, 2, 3)}) == 3
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in bound.sockets)
        # Connections are accepted by the group, whichever socket the kernel picks.
        (address,) = ports
        for _ in range(6):
            socket.create_connection(address).close()
    finally:
        bound.close()


def test_a_tcp_endpoint_already_taken_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            bind(f"tcp:{port}:interface=127.0.0.1", 2)


def test_a_unix_endpoint_is_one_socket_shared_and_removed_at_the_end(tmp_path: Path):
    path = tmp_path / "bus.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # left behind by a process that died
    bound = bind(f"unix:{path}:mode=600", 2)
    try:
        assert bound.fileno(1) == bound.fileno(2)
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        bound.close()
    assert not path.exists()


def test_closing_the_notifier_answers_held_long_polls_and_holds_no_new_one():
    clock = task.Clock()
    notifier = Notifier(clock, FakeStore())  # type: ignore[arg-type]
    held = [defer.ensureDeferred(notifier.next_event(CTX, CH, 0, 60)) for _ in range(3)]
    assert notifier.waiting() == 3 and not any(d.called for d in held)
    notifier.close()
    assert [d.result for d in held] == [None, None, None]
    assert notifier.waiting() == 0
    later = defer.ensureDeferred(notifier.next_event(CTX, CH, 0, 60))
    clock.advance(0)
    assert later.called and later.result is None


def test_closing_the_consumers_answers_a_held_next_after_one_more_round():
    clock = task.Clock()
    notifier = Notifier(clock, None)  # type: ignore[arg-type]
    store = ScriptedStore(nothing(), nothing(), leased(3), nothing(), nothing())
    consumers = Consumers(clock, store, store, notifier)  # type: ignore[arg-type]
    held = [defer.ensureDeferred(consumers.next(CTX, CH, name, 60)) for name in "ab"]
    assert consumers.waiting() == 2 and not any(d.called for d in held)
    consumers.close()
    # Each got its last round: nothing for one (a 204), an event for the other.
    answers = [d.result for d in held]
    assert sorted(a.event.id if a else 0 for a in answers) == [0, 3]
    assert consumers.waiting() == 0 and store.rounds == 4
    late = defer.ensureDeferred(consumers.next(CTX, CH, "c", 60))
    assert late.result is None and store.rounds == 5
