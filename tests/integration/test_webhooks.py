"""Webhook subscriptions over real HTTP: real server processes, the real
database, and a real receiver on loopback in the test process.

Each group of servers gets a database of its own: every process delivers
every subscription of its database, so sharing one would let a server with
other options deliver another test's subscription.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import psycopg2
import pytest
import pytest_twisted

from tests.client import get, publish, request
from tests.servers import ServerProcess
from tests.webhook_receiver import Receiver, sleep, until, until_async, verify_standard_webhook

#: Run against each (tests/deployments.py); --workers has tests of its own
#: (test_workers.py: this module finds the owner process by its pid).
DEPLOYMENTS = ("embedded", "pgbouncer", "pg15")
CTX = "hooks"
#: Retry delays in these tests are 1/20 of the real ones: 0.05 s, 0.25 s, 1.5 s...
SCALE = 0.05


def _database(deployment: Any, name: str) -> list[str]:
    """A fresh database; the server arguments that use it."""
    conn = psycopg2.connect(deployment.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return deployment.server_args(name)


def _server(deployment: Any, tmp_path_factory: Any, db: str, *args: str) -> ServerProcess:
    database = _database(deployment, db)
    return ServerProcess([*database, "--pool-size", "3", *args],
                         tmp_path_factory.mktemp(db))


@pytest.fixture(scope="module")
def hooks_server(deployment, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = _server(deployment, tmp_path_factory, "webhooks_main", "--webhook-allow-private",
                   "--webhook-retry-scale", str(SCALE), "--webhook-disable-after", "60")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def strict_server(deployment, tmp_path_factory) -> Iterator[ServerProcess]:
    """Without --webhook-allow-private."""
    proc = _server(deployment, tmp_path_factory, "webhooks_strict")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    if r._listening is not None and r._listening.connected:
        r._listening.stopListening()


async def _subscribe(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    r = await request("POST", server.url("/subscriptions"), json_body=fields)
    assert r.code == 201, r
    sub = r.json()
    assert r.header("Location") == f"/subscriptions/{sub['id']}"
    return sub


async def _status(server: ServerProcess, sid: int) -> dict[str, Any]:
    r = await get(server.url(f"/subscriptions/{sid}"))
    assert r.code == 200, r
    return r.json()


async def _publish_all(server: ServerProcess, context: str, channel: str,
                       payloads: list[dict]) -> list[dict]:
    events = []
    for payload in payloads:
        r = await publish(server.base, context, channel, payload)
        assert r.code == 201, r
        events.append(r.json())
    return events


@pytest_twisted.ensureDeferred
async def test_events_are_delivered_in_order_and_signed_with_the_secret(
        hooks_server, receiver, channel_name):
    before = await _publish_all(hooks_server, CTX, channel_name, [{"i": 0}, {"i": 1}])
    sub = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                           url=receiver.url, start="earliest")
    secret = sub["secret"]
    assert secret.startswith("whsec_") and sub["status"] == "active"
    after = await _publish_all(hooks_server, CTX, channel_name, [{"i": i} for i in range(2, 5)])
    await until(lambda: len(receiver.requests) >= 5, what="5 deliveries")
    await sleep(0.2)
    assert receiver.events() == before + after  # each event once, in id order, as stored
    now = time.time()
    for got in receiver.requests:
        assert verify_standard_webhook(secret, got.headers, got.body)
        assert got.headers["webhook-id"] == f"{sub['id']}/{CTX}/{channel_name}/{got.event['id']}"
        assert abs(int(got.headers["webhook-timestamp"]) - now) < 60
        assert got.headers["content-type"] == "application/json"
    assert not verify_standard_webhook("whsec_" + "A" * 44, receiver.requests[0].headers,
                                       receiver.requests[0].body)

    status = await until_async(
        lambda: _status_if(hooks_server, sub["id"], lambda s: s["cursor"] == 5),
        what="cursor 5 in the status")
    assert status["status"] == "active" and status["lag"] == 0
    assert status["last_status"] == 200 and status["last_error"] is None
    assert status["consecutive_failures"] == 0 and status["last_attempt"] is not None
    assert status["channels"][channel_name]["head"] == 5
    assert "secret" not in status
    listed = (await get(hooks_server.url("/subscriptions"))).json()
    (mine,) = [s for s in listed if s["id"] == sub["id"]]
    assert mine["cursor"] == 5 and mine["url"] == receiver.url and "secret" not in mine


async def _status_if(server: ServerProcess, sid: int, predicate: Any) -> Any:
    status = await _status(server, sid)
    return status if predicate(status) else None


@pytest_twisted.ensureDeferred
async def test_start_at_an_id_or_latest_and_delivery_follows_a_publish_quickly(
        hooks_server, receiver, channel_name):
    await _publish_all(hooks_server, CTX, channel_name, [{"i": i} for i in range(3)])
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    from_2 = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                              url=receiver.url + "?from=2", secret=secret, start=2)
    assert from_2["secret"] == secret and from_2["cursor"] == 1 and from_2["lag"] == 2
    latest = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                              url=receiver.url + "?latest", start="latest")
    assert latest["cursor"] == 3 and latest["lag"] == 0
    await until(lambda: len(receiver.requests) >= 2, what="events 2 and 3")
    assert receiver.ids() == [2, 3]
    assert all(verify_standard_webhook(secret, r.headers, r.body) for r in receiver.requests)

    latencies = []
    for i in range(3, 6):
        seen = len(receiver.requests)
        started = time.monotonic()
        await publish(hooks_server.base, CTX, channel_name, {"i": i})
        await until(lambda: len(receiver.requests) >= seen + 2, what=f"event {i + 1} twice")
        latencies.append(time.monotonic() - started)
    assert sorted(receiver.ids()) == [2, 3, 4, 4, 5, 5, 6, 6]
    # Woken by the notifier: far below any polling or lease interval.
    assert sorted(latencies)[1] < 2.0, latencies


@pytest_twisted.ensureDeferred
async def test_failures_are_retried_with_growing_gaps_and_order_is_kept(
        hooks_server, receiver, channel_name):
    receiver.fail_first = 3
    sub = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                           url=receiver.url, start="earliest")
    await _publish_all(hooks_server, CTX, channel_name, [{"i": 1}, {"i": 2}])
    await until(lambda: len(receiver.requests) >= 5, timeout=20, what="3 failures, 2 successes")
    await sleep(0.2)
    assert receiver.ids() == [1, 1, 1, 1, 2]  # event 2 only after event 1 succeeded
    first = receiver.requests[:4]
    assert len({r.headers["webhook-id"] for r in first}) == 1  # stable across retries
    assert all(verify_standard_webhook(sub["secret"], r.headers, r.body) for r in first)
    gaps = [b.at - a.at for a, b in zip(first, first[1:])]
    # Scaled schedule 1 s, 5 s, 30 s with +-20 % jitter: 0.05, 0.25, 1.5.
    for gap, nominal in zip(gaps, (1, 5, 30)):
        assert gap >= 0.8 * nominal * SCALE - 0.01, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    status = await until_async(
        lambda: _status_if(hooks_server, sub["id"], lambda s: s["cursor"] == 2),
        what="cursor 2")
    assert status["consecutive_failures"] == 0 and status["last_status"] == 200


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_disappears_gets_the_event_when_it_is_back(
        hooks_server, receiver, channel_name):
    sub = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                           url=receiver.url, start="earliest")
    await _publish_all(hooks_server, CTX, channel_name, [{"i": 1}])
    await until(lambda: len(receiver.requests) == 1, what="first delivery")
    await receiver.disappear()
    await _publish_all(hooks_server, CTX, channel_name, [{"i": 2}])
    status = await until_async(
        lambda: _status_if(hooks_server, sub["id"], lambda s: s["consecutive_failures"] >= 1),
        what="a failure in the status")
    assert status["last_error"] == "connection refused", status
    assert status["last_status"] is None and status["status"] == "active"
    receiver.start()
    await until(lambda: len(receiver.requests) == 2, timeout=15, what="redelivery")
    assert receiver.ids() == [1, 2]


@pytest_twisted.ensureDeferred
async def test_a_subscription_failing_too_long_is_disabled_and_enable_resumes(
        deployment, tmp_path_factory, receiver, channel_name):
    server = _server(deployment, tmp_path_factory, "webhooks_disable", "--webhook-allow-private",
                     "--webhook-retry-scale", str(SCALE), "--webhook-disable-after", "1")
    server.start()
    try:
        receiver.failing = True
        sub = await _subscribe(server, context=CTX, channel=channel_name,
                               url=receiver.url, start="earliest")
        await _publish_all(server, CTX, channel_name, [{"i": 1}, {"i": 2}])
        status = await until_async(
            lambda: _status_if(server, sub["id"], lambda s: s["status"] == "disabled"),
            timeout=20, what="disabled")
        assert "failing" in status["disabled_reason"], status
        assert status["disabled_at"] is not None and status["owner"] is None
        assert status["last_error"] == "HTTP 500" and status["last_status"] == 500
        assert status["consecutive_failures"] >= 2 and status["cursor"] == 0
        attempts = len(receiver.requests)
        assert set(receiver.ids()) == {1}
        await sleep(0.5)
        assert len(receiver.requests) == attempts  # a disabled subscription is left alone

        receiver.failing = False
        r = await request("POST", server.url(f"/subscriptions/{sub['id']}/enable"))
        assert r.code == 200, r
        enabled = r.json()
        assert enabled["status"] == "active" and enabled["consecutive_failures"] == 0
        assert enabled["disabled_reason"] is None
        await until(lambda: receiver.ids()[attempts:] == [1, 2], what="delivery after enable")
        status = await until_async(
            lambda: _status_if(server, sub["id"], lambda s: s["cursor"] == 2), what="cursor 2")
        assert status["status"] == "active" and status["consecutive_failures"] == 0
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_wildcard_subscription_follows_every_channel_with_its_own_cursor(
        hooks_server, receiver, channel_name):
    context = f"ctx-{channel_name}"[:128]
    await _publish_all(hooks_server, context, "a", [{"old": 1}, {"old": 2}])
    sub = await _subscribe(hooks_server, context=context, channel="*", url=receiver.url,
                           start="latest")
    assert sub["channels"] == {"a": sub["channels"]["a"]} and sub["channels"]["a"]["cursor"] == 2
    await _publish_all(hooks_server, context, "a", [{"n": 3}])
    await _publish_all(hooks_server, context, "b", [{"n": 1}, {"n": 2}])  # created later
    await _publish_all(hooks_server, context, "c", [{"n": 1}])
    await _publish_all(hooks_server, CTX, channel_name, [{"other": "context"}])
    await until(lambda: len(receiver.requests) >= 4, what="4 deliveries")
    await sleep(0.3)
    got = [(e["channel"], e["id"]) for e in receiver.events()]
    assert sorted(got) == [("a", 3), ("b", 1), ("b", 2), ("c", 1)]
    assert [i for ch, i in got if ch == "b"] == [1, 2]
    status = await until_async(
        lambda: _status_if(hooks_server, sub["id"], lambda s: s["lag"] == 0
                           and s["channels"].get("b", {}).get("cursor") == 2),
        what="all cursors up to date")
    assert {ch: s["cursor"] for ch, s in status["channels"].items()} == {"a": 3, "b": 2, "c": 1}
    assert status["channel"] == "*" and status["cursor"] is None


@pytest_twisted.ensureDeferred
async def test_deleted_subscription_is_gone_and_no_longer_delivered(
        hooks_server, receiver, channel_name):
    sub = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                           url=receiver.url, start="latest")
    r = await request("DELETE", hooks_server.url(f"/subscriptions/{sub['id']}"))
    assert r.code == 204 and r.body == b""
    assert (await get(hooks_server.url(f"/subscriptions/{sub['id']}"))).code == 404
    assert (await request("DELETE", hooks_server.url(f"/subscriptions/{sub['id']}"))).code == 404
    await _publish_all(hooks_server, CTX, channel_name, [{"i": 1}])
    await sleep(0.5)
    assert receiver.requests == []


@pytest_twisted.ensureDeferred
async def test_another_process_takes_over_from_the_stored_cursor_after_kill_9(
        deployment, tmp_path_factory, receiver, channel_name):
    database = _database(deployment, "webhooks_takeover")
    args = [*database, "--pool-size", "3", "--webhook-allow-private",
            "--webhook-retry-scale", str(SCALE), "--webhook-lease", "2"]
    workdir = tmp_path_factory.mktemp("takeover")
    servers = [ServerProcess(args, workdir).start(wait=False),
               ServerProcess(args, workdir).start(wait=False)]
    try:
        for s in servers:
            s.wait_ready()
        a = servers[0]
        sub = await _subscribe(a, context=CTX, channel=channel_name, url=receiver.url,
                               start="earliest")
        await _publish_all(a, CTX, channel_name, [{"i": i} for i in range(1, 4)])
        status = await until_async(
            lambda: _status_if(a, sub["id"], lambda s: s["cursor"] == 3), what="cursor 3")
        owner_pid = int(status["owner"].split(":")[1])
        (owner,) = [s for s in servers if s.proc.pid == owner_pid]
        (survivor,) = [s for s in servers if s is not owner]

        receiver.hold = True  # event 4 will be in flight when its deliverer dies
        await _publish_all(survivor, CTX, channel_name, [{"i": 4}])
        await until(lambda: len(receiver.requests) == 4, what="event 4 in flight")
        owner.kill()
        receiver.hold = False
        await _publish_all(survivor, CTX, channel_name, [{"i": 5}, {"i": 6}])
        await until(lambda: receiver.ids()[-1:] == [6], timeout=20, what="event 6 after takeover")
        await sleep(0.3)
        ids = receiver.ids()
        assert ids == [1, 2, 3, 4, 4, 5, 6], ids  # nothing missed; only the in-flight one twice
        status = await until_async(
            lambda: _status_if(survivor, sub["id"], lambda s: s["cursor"] == 6), what="cursor 6")
        assert status["owner"].split(":")[1] == str(survivor.proc.pid)
    finally:
        for s in servers:
            s.stop()


@pytest_twisted.ensureDeferred
async def test_private_addresses_are_refused_unless_allowed(
        strict_server, hooks_server, channel_name):
    for url in ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://192.168.0.1/",
                "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/",
                "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/",
                "http://localhost:8080/hook", "http://2130706433/", "https://100.64.0.1/"]:
        r = await request("POST", strict_server.url("/subscriptions"),
                          json_body={"context": CTX, "channel": channel_name, "url": url,
                                     "start": "latest"})
        assert r.code == 400, (url, r)
        error = r.json()["error"]
        assert "not a public address" in error or "resolve" in error or (
            url.startswith("http://[") and "IPv6 literal" in error), r
    public = await _subscribe(strict_server, context=CTX, channel=channel_name,
                              url="https://93.184.215.14/hook", start="latest")
    assert (await request("DELETE", strict_server.url(f"/subscriptions/{public['id']}"))).code == 204
    allowed = await _subscribe(hooks_server, context=CTX, channel=channel_name,
                               url="http://127.0.0.1:9/hook", start="latest")
    assert (await request("DELETE", hooks_server.url(f"/subscriptions/{allowed['id']}"))).code == 204


@pytest_twisted.ensureDeferred
async def test_bad_input_is_a_400_or_404_with_a_json_error(hooks_server, channel_name):
    good = {"context": CTX, "channel": channel_name, "url": "http://127.0.0.1:9/",
            "start": "latest"}
    bodies: list[Any] = [
        b"", b"{", b"[]", b'"x"', b"NaN", b"\xff\xfe",
        good | {"extra": 1},
        {k: v for k, v in good.items() if k != "context"},
        {k: v for k, v in good.items() if k != "url"},
        {k: v for k, v in good.items() if k != "start"},
        good | {"context": 5}, good | {"channel": ["a"]}, good | {"url": None},
        good | {"context": "bad/name"}, good | {"channel": "sp ace"}, good | {"context": "*"},
        good | {"channel": "x" * 129},
        good | {"url": "ftp://127.0.0.1/"}, good | {"url": "file:///etc/passwd"},
        good | {"url": "127.0.0.1:9"}, good | {"url": "http:///path"},
        good | {"url": "http://user:pw@127.0.0.1/"}, good | {"url": "http://[::1/"},
        good | {"url": "http://127.0.0.1:99999/"}, good | {"url": "http://exa mple.com/"},
        good | {"url": "http://\u00e9.example/"}, good | {"url": "http://h/" + "x" * 3000},
        good | {"secret": "plain-text"}, good | {"secret": "whsec_!!!"},
        good | {"secret": "whsec_c2hvcnQ="}, good | {"secret": 12},
        good | {"start": "soon"}, good | {"start": 0}, good | {"start": -1},
        good | {"start": 1.5}, good | {"start": True}, good | {"start": 2**63},
        good | {"channel": "*", "start": 3},
    ]
    for body in bodies:
        data = body if isinstance(body, bytes) else None
        r = await request("POST", hooks_server.url("/subscriptions"), data=data,
                          json_body=None if data is not None else body)
        assert r.code == 400, (body, r)
        assert isinstance(r.json()["error"], str)
    for method, path in [("GET", "/subscriptions/999999"), ("GET", "/subscriptions/abc"),
                         ("GET", "/subscriptions/99999999999999999999999"),
                         ("DELETE", "/subscriptions/999999"), ("DELETE", "/subscriptions/-1"),
                         ("POST", "/subscriptions/999999/enable"),
                         ("POST", "/subscriptions/x/enable")]:
        r = await request(method, hooks_server.url(path))
        assert r.code == 404, (method, path, r)
        assert isinstance(r.json()["error"], str)
    r = await request("PUT", hooks_server.url("/subscriptions"), data=b"{}")
    assert r.code == 405 and "error" in r.json()


@pytest_twisted.ensureDeferred
async def test_a_cleanly_stopped_process_releases_its_subscriptions(
        deployment, tmp_path_factory, receiver, channel_name):
    """SIGTERM: the process gives its leases up before its database connections
    close, so another process takes over at once, not a lease later."""
    proc = _server(deployment, tmp_path_factory, "webhooks_release", "--webhook-allow-private",
                   "--webhook-lease", "600")
    proc.start()
    try:
        sub = await _subscribe(proc, context=CTX, channel=channel_name, url=receiver.url,
                               start="latest")
        await until_async(lambda: _status_if(proc, sub["id"], lambda s: s["owner"]),
                          what="an owner")
    finally:
        code = proc.stop()
    assert code == 0, proc.log_tail()
    conn = psycopg2.connect(deployment.dsn("webhooks_release"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT owner, lease_until FROM webhook_subscriptions WHERE id = %s",
                        (sub["id"],))
            assert cur.fetchone() == (None, None), proc.log_tail()
    finally:
        conn.close()
    assert "could not release" not in proc.log_tail(200)
