"""The blocking client (``eventbus.client.Client``) against real server processes."""
from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from eventbus.client import (
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    TooLarge,
    Unauthorized,
    Unreachable,
)
from tests.dropping_proxy import DroppingProxy
from tests.servers import ServerProcess, free_port
from tests.tokens import token_cli

DEADLINE_S = 60.0


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.base, issuer="sync") as c:
        yield c


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_published_event_comes_back_typed_and_exactly_as_sent(client, channel_name):
    event = client.publish("cl", channel_name, '{"price": 1.50, "big": 123456789012345678901234567890}')
    assert (event.id, event.issuer, event.context, event.channel) == (1, "sync", "cl", channel_name)
    assert event.payload == {"price": 1.5, "big": 123456789012345678901234567890}
    assert event.raw.endswith('"payload":{"price": 1.50, "big": 123456789012345678901234567890}}')
    assert client.event("cl", channel_name, 1) == event
    assert client.event("cl", channel_name, 1).raw == event.raw
    assert client.peek("cl", channel_name, 0) == event
    assert client.peek("cl", channel_name, 1, timeout=0) is None
    assert [e.raw for e in client.history("cl", channel_name)] == [event.raw]


def test_history_streams_a_channel_of_several_pages_in_order(client, channel_name):
    stored = client.publish_batch("cl", channel_name, [{"n": i} for i in range(2500)], split=True)
    assert [e.id for e in stored] == list(range(1, 2501))
    got = list(client.history("cl", channel_name))
    assert [e.id for e in got] == list(range(1, 2501)) and got[-1].payload == {"n": 2499}
    assert [e.id for e in client.history("cl", channel_name, limit=3)] == [1, 2, 3]
    assert [e.id for e in client.history("cl", channel_name, start=got[-1].timestamp)][-1] == 2500


def test_a_batch_over_the_servers_limit_is_refused_unless_split(client, channel_name):
    with pytest.raises(TooLarge) as raised:
        client.publish_batch("cl", channel_name, [{"n": i} for i in range(1001)])
    assert raised.value.status == 413 and "1000" in raised.value.message
    stored = client.publish_batch("cl", channel_name, [{"n": i} for i in range(1001)], split=True)
    assert [e.id for e in stored] == list(range(1, 1002))


def test_errors_are_typed_and_carry_the_servers_message(client, channel_name):
    with pytest.raises(NotFound, match=f"no event 5 in cl/{channel_name}"):
        client.event("cl", channel_name, 5)
    with pytest.raises(BadRequest, match="not valid JSON"):
        client.publish("cl", channel_name, "{")
    with pytest.raises(BadRequest, match="X-EVENT-ISSUER"):
        Client(client.url).publish("cl", channel_name, {"a": 1})
    consumer = client.consumer("cl", channel_name, "c1")
    with pytest.raises(NotFound):
        consumer.state()
    client.publish("cl", channel_name, {"a": 1})
    lease = consumer.next(5)
    lease.ack()
    with pytest.raises(Conflict):
        lease.ack()


def test_an_unreachable_server_is_unreachable_after_a_few_attempts():
    with Client(f"http://127.0.0.1:{free_port()}", attempts=2) as c, pytest.raises(Unreachable, match="cannot connect"):
        c.publish("cl", "x", {"a": 1}, issuer="i")


@pytest.fixture(scope="module")
def secure(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn, "--auth", "required"], tmp_path_factory.mktemp("secure"))
    proc.start()
    yield proc
    proc.stop()


def test_a_missing_or_narrow_token_is_unauthorized_or_forbidden(secure, dsn, channel_name, monkeypatch):
    with Client(secure.base, issuer="i") as anonymous, pytest.raises(Unauthorized):
        anonymous.publish("cl", channel_name, {"a": 1})
    token = token_cli("create", f"reader-{channel_name}"[:120], "--scope", f"read:cl/{channel_name}", dsn=dsn).stdout.strip()
    monkeypatch.setenv("EVENTBUS_URL", secure.base)
    monkeypatch.setenv("EVENTBUS_TOKEN", token)
    monkeypatch.setenv("EVENTBUS_ISSUER", "from-env")
    with Client() as reader:  # everything from the environment
        assert (reader.url, reader.token, reader.issuer) == (secure.base, token, "from-env")
        with pytest.raises(Forbidden, match=f"publish:cl/{channel_name}"):
            reader.publish("cl", channel_name, {"a": 1})
        assert list(reader.history("cl", channel_name)) == []


def test_follow_goes_on_across_a_server_restart_without_skipping_or_repeating(dsn, tmp_path, channel_name):
    proc = ServerProcess(["--dsn", dsn], tmp_path).start()
    got: list[int] = []
    failed: list[BaseException] = []

    def follow() -> None:
        try:
            with Client(proc.base) as c:
                for event in c.follow("cl", channel_name):
                    got.append(event.id)
                    if len(got) == 20:
                        return
        except BaseException as e:  # reported by the test
            failed.append(e)

    try:
        with Client(proc.base, issuer="i") as c:
            c.publish_batch("cl", channel_name, [{"n": i} for i in range(5)])
            follower = threading.Thread(target=follow, daemon=True)
            follower.start()
            wait_for(lambda: len(got) == 5 or failed, "the first 5 events")
            for i in range(5):
                c.publish("cl", channel_name, {"n": 5 + i})
            wait_for(lambda: len(got) == 10 or failed, "10 events")
            proc.stop()
            time.sleep(1.0)  # the follower retries against a closed port meanwhile
            proc.start()
            c.publish_batch("cl", channel_name, [{"n": 10 + i} for i in range(10)])
        follower.join(DEADLINE_S)
        assert not failed, failed
        assert got == list(range(1, 21))
    finally:
        proc.stop()


def test_a_lease_acks_when_its_block_succeeds_and_nacks_when_it_raises(client, channel_name):
    client.publish_batch("cl", channel_name, [{"n": 1}, {"n": 2}])
    consumer = client.consumer("cl", channel_name, "worker", mode="ordered", max_deliveries=5)
    with pytest.raises(ValueError), consumer.next(10) as lease:
        assert (lease.event.id, lease.deliveries) == (1, 1)
        raise ValueError("handler failed")
    with consumer.next(10) as lease:  # nacked: the same event again (ordered)
        assert (lease.event.id, lease.deliveries) == (1, 2)
    with consumer.next(10) as lease:
        assert lease.event.id == 2
    state = consumer.state()
    assert (state["cursor"], state["lag"], state["in_flight"]) == (2, 0, 0)
    assert consumer.next(0.2) is None


def test_run_handles_every_event_with_several_workers_and_retries_the_failed_ones(client, channel_name):
    client.publish_batch("cl", channel_name, [{"n": i} for i in range(30)])
    consumer = client.consumer("cl", channel_name, "pool", mode="shared", lease=30)
    seen: list[int] = []
    lock = threading.Lock()
    failed_once: set[int] = set()

    def handle(event) -> None:
        with lock:
            if event.id % 7 == 0 and event.id not in failed_once:
                failed_once.add(event.id)
                raise RuntimeError("first try fails")
            seen.append(event.id)

    deadline = threading.Timer(DEADLINE_S, consumer.stop)  # a failure must not hang the suite
    deadline.start()
    try:
        handled = consumer.run(handle, concurrency=4, poll=1, limit=30 + 4)
    finally:
        deadline.cancel()
    assert handled == 34
    assert sorted(seen) == list(range(1, 31)) and failed_once == {7, 14, 21, 28}
    state = consumer.state()
    assert (state["lag"], state["in_flight"], state["dead"]) == (0, 0, 0)


def test_run_stops_on_an_error_retrying_cannot_cure(client, channel_name):
    consumer = client.consumer("cl", channel_name, "bad name!")
    with pytest.raises(BadRequest, match="consumer name"):
        consumer.run(lambda e: None, concurrency=2, poll=1)


def test_a_publish_retried_after_its_answer_was_lost_is_stored_once(server, channel_name):
    proxy = DroppingProxy(server.port)
    try:
        proxy.drop = 1
        with Client(proxy.base, issuer="i") as c:
            event = c.publish("cl", channel_name, {"once": True})
        assert proxy.dropped == 1
        with Client(server.base) as direct:
            stored = list(direct.history("cl", channel_name))
        assert [e.id for e in stored] == [event.id] == [1]
    finally:
        proxy.close()


def test_expected_last_id_lets_one_of_two_writers_win(client, channel_name):
    assert client.publish("cl", channel_name, {"w": 1}, expected_last_id=0).id == 1
    with pytest.raises(Conflict) as raised:
        client.publish("cl", channel_name, {"w": 2}, expected_last_id=0)
    assert raised.value.last_id == 1
    stored = client.publish_batch("cl", channel_name, [{"n": i} for i in range(3)], expected_last_id=1)
    assert [e.id for e in stored] == [2, 3, 4]
