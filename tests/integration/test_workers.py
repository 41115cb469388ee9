"""``--workers``: several server processes behind one port, supervised by a parent.

Ordering and durable consumers also run against ``--workers 2`` servers in
their own modules (``DEPLOYMENTS``); here: that both workers answer on the
one port and say which they are, that a publish through one wakes long
polls held by the other, webhooks, a killed worker restarted, an orphaned
worker stopping, and SIGTERM to the parent stopping everything cleanly:
held requests answered, webhook leases handed over, the embedded PostgreSQL
last.  Real processes, real sockets; nothing is timed.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor

from eventbus.storage.embedded import EmbeddedPostgres
from tests.client import get, publish, request
from tests.integration.test_embedded import TwistdProcess
from tests.servers import ServerProcess, free_port
from tests.webhook_receiver import Receiver, sleep, until, until_async

CTX = "workers"
#: Fresh connections tried before concluding that a worker never answers.
MAX_TRIES = 200
#: Longest a request to a killed worker's socket may wait for its successor.
RESTART_BOUND_S = 60


def children(pid: int) -> set[int]:
    """The processes ``pid`` started (its workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout} s")


async def answering_workers(server: ServerProcess, want: set[str]) -> set[str]:
    """Ask /health on fresh connections until every worker of ``want`` answered."""
    seen: set[str] = set()
    for _ in range(MAX_TRIES):
        r = await get(server.url("/health"), persistent=False)
        assert r.code == 200, r
        seen.add(r.header("X-Worker"))
        if want <= seen:
            break
    return seen


@pytest.fixture(scope="module")
def workers(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--dsn", dsn, "--workers", "2"], tmp_path_factory.mktemp("workers"))
    proc.start()
    wait_for(lambda: len(children(proc.proc.pid)) == 2, "two workers")
    yield proc
    proc.stop()


def _database(dsn: str, name: str) -> str:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return dsn.replace("dbname=eventbus", f"dbname={name}")


@pytest_twisted.ensureDeferred
async def test_both_workers_answer_on_the_one_port_and_name_themselves(workers):
    assert await answering_workers(workers, {"1", "2"}) == {"1", "2"}


@pytest_twisted.ensureDeferred
async def test_a_publish_through_one_worker_wakes_long_polls_held_by_the_other(workers, channel_name):
    """Peeks held on fresh connections land on both workers; a publish
    through either must wake them all, so some wake-ups cross processes."""
    crossed = False
    for round_no in range(10):
        channel = f"{channel_name}-{round_no}"
        held = [defer.ensureDeferred(get(workers.url(f"/events/{CTX}/{channel}?peek=0&timeout=30"),
                                         persistent=False)) for _ in range(8)]
        await sleep(0.5)
        assert not any(d.called for d in held)
        published = await publish(workers.base, CTX, channel, {"round": round_no})
        assert published.code == 201, published
        answers = await defer.gatherResults(held, consumeErrors=True)
        for r in answers:
            assert r.code == 200, r
            assert r.json() == published.json()
        if {r.header("X-Worker") for r in answers} - {published.header("X-Worker")}:
            crossed = True
            break
    assert crossed, "no long poll was ever held by the worker that did not publish"


@pytest_twisted.ensureDeferred
async def test_webhooks_are_delivered_in_order_by_one_worker_at_a_time(dsn, tmp_path_factory,
                                                                      channel_name):
    db = _database(dsn, "workers_hooks")
    proc = ServerProcess(["--dsn", db, "--workers", "2", "--webhook-allow-private",
                          "--webhook-lease", "600"], tmp_path_factory.mktemp("workers-hooks"))
    receiver = Receiver().start()
    proc.start()
    try:
        wait_for(lambda: len(children(proc.proc.pid)) == 2, "two workers")
        r = await request("POST", proc.url("/subscriptions"), json_body={
            "context": CTX, "channel": channel_name, "url": receiver.url, "start": "earliest"})
        assert r.code == 201, r
        sid = r.json()["id"]
        # Fresh connections: the publishes go through both workers.
        published = []
        for n in range(20):
            r = await request("POST", proc.url(f"/events/{CTX}/{channel_name}"), json_body={"n": n},
                              headers={"X-EVENT-ISSUER": "tests"}, persistent=False)
            assert r.code == 201, r
            published.append(r.json())
        await until(lambda: len(receiver.requests) >= 20, timeout=60, what="20 deliveries")
        assert receiver.events() == published
        status = (await get(proc.url(f"/subscriptions/{sid}"))).json()
        owner_pid = int(status["owner"].split(":")[1])
        assert owner_pid in children(proc.proc.pid), (status["owner"], children(proc.proc.pid))
    finally:
        code = proc.stop()
        receiver._listening.stopListening()
    assert code == 0, proc.log_tail()
    # SIGTERM to the parent: the owning worker handed its lease over.
    conn = psycopg2.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT owner, lease_until FROM webhook_subscriptions WHERE id = %s", (sid,))
            assert cur.fetchone() == (None, None), proc.log_tail(200)
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_restarted_and_the_port_answers_throughout(workers, channel_name):
    parent = workers.proc.pid
    before = children(parent)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Every request gets its answer, before, during and after the restart:
    # those that reach the dead worker's socket wait for its successor.
    for n in range(20):
        publishing = defer.ensureDeferred(request(
            "POST", workers.url(f"/events/{CTX}/{channel_name}"), json_body={"n": n},
            headers={"X-EVENT-ISSUER": "tests"}, persistent=False))
        # A bound, not a measure: without a successor the request would wait for ever.
        r = await publishing.addTimeout(RESTART_BOUND_S, reactor)
        assert r.code == 201 and r.json()["id"] == n + 1, r
    wait_for(lambda: len(children(parent)) == 2 and victim not in children(parent), "restarted worker")
    assert await answering_workers(workers, {"1", "2"}) == {"1", "2"}
    log = workers.log_path.read_text(errors="replace")
    assert f"(pid {victim}) was killed by signal 9; restarting it in" in log, workers.log_tail()


def test_workers_stop_when_their_parent_is_killed(dsn, tmp_path):
    proc = ServerProcess(["--dsn", dsn, "--workers", "2"], tmp_path)
    proc.start()
    try:
        wait_for(lambda: len(children(proc.proc.pid)) == 2, "two workers")
        pids = children(proc.proc.pid)
    finally:
        proc.kill()
    wait_for(lambda: not any(alive(p) for p in pids), "end of the orphaned workers")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    if path.exists():
        EmbeddedPostgres(path).stop(force=True)


@pytest_twisted.ensureDeferred
async def test_sigterm_answers_held_requests_then_stops_the_workers_then_postgres(
        tmp_path, data_dir, channel_name):
    """Under twistd, with the embedded PostgreSQL the parent runs."""
    pg = EmbeddedPostgres(data_dir)
    server = TwistdProcess(["--data-dir", str(data_dir), "--workers", "2"], tmp_path)
    server.start()
    try:
        wait_for(lambda: len(children(server.proc.pid)) == 2, "two workers")
        workers = children(server.proc.pid) - {p for p in children(server.proc.pid) if not alive(p)}
        assert pg.is_running()
        peeks = [defer.ensureDeferred(get(server.url(f"/events/{CTX}/{channel_name}?peek=0&timeout=120"),
                                          persistent=False)) for _ in range(4)]
        nexts = [defer.ensureDeferred(request(
            "POST", server.url(f"/consumers/{CTX}/{channel_name}/c/next?timeout=120"), persistent=False))
            for _ in range(4)]
        await until_async(lambda: _held(server, channel_name), timeout=60, what="held requests")
        await sleep(0.5)
        assert not any(d.called for d in peeks + nexts)
    finally:
        code = server.stop()
    # Answered, not dropped: every held request got a 204.
    for r in await defer.gatherResults(peeks + nexts, consumeErrors=True):
        assert r.code == 204, r
    assert code in (0, -signal.SIGTERM), f"exit code {code}:\n{server.log_tail()}"
    assert not pg.is_running(), "the embedded PostgreSQL outlived its server"
    assert not any(alive(p) for p in workers)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, server.log_tail(200)
    stopped = [log.index(f"(pid {p}) stopped: exited with status 0") for p in workers]
    assert max(stopped) < log.index("embedded PostgreSQL stopped"), server.log_tail(60)


async def _held(server: ServerProcess, channel: str) -> bool:
    # The consumer exists once a next has run its first leasing round.
    r = await get(server.url(f"/consumers/{CTX}/{channel}/c"))
    return r.code == 200


def test_workers_serve_tls_on_a_shared_ssl_endpoint(dsn, tmp_path):
    from tests.integration.test_tls import connect, self_signed

    key, cert = self_signed(tmp_path)
    port = free_port()
    proc = ServerProcess(["--dsn", dsn, "--workers", "2", "--listen",
                          f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"], tmp_path)
    proc.start()
    try:
        seen = set()
        for _ in range(MAX_TRIES):
            conn = connect(port, cert)
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200, r.read()
            seen.add(r.getheader("X-Worker"))
            conn.close()
            if seen == {"1", "2"}:
                break
        assert seen == {"1", "2"}
    finally:
        assert proc.stop() == 0, proc.log_tail()


@pytest_twisted.ensureDeferred
async def test_each_workers_token_cache_hears_a_creation_and_a_revocation(dsn, tmp_path, channel_name):
    """Each worker caches the tokens; the notifications keep every cache right."""
    from tests.tokens import bearer, create_token, token_cli_async

    proc = ServerProcess(["--dsn", dsn, "--workers", "2", "--auth", "required"], tmp_path)
    proc.start()
    try:
        url = proc.url(f"/events/{CTX}/{channel_name}")
        # Both workers have loaded their caches before the token exists.
        assert await answering_workers(proc, {"1", "2"}) == {"1", "2"}
        token = await create_token(f"w-{channel_name}", f"read:{CTX}/*", dsn=dsn)

        async def statuses() -> dict[str, set[int]]:
            seen: dict[str, set[int]] = {}
            for _ in range(MAX_TRIES):
                r = await get(url, headers=bearer(token), persistent=False)
                seen.setdefault(r.header("X-Worker"), set()).add(r.code)
                if len(seen) == 2:
                    break
            return seen

        assert await statuses() == {"1": {200}, "2": {200}}
        await token_cli_async("revoke", f"w-{channel_name}", dsn=dsn)
        await sleep(0.5)  # the notification's way to both workers
        for _ in range(40):
            seen = await statuses()
            if seen == {"1": {401}, "2": {401}}:
                break
            await sleep(0.5)
        assert seen == {"1": {401}, "2": {401}}
    finally:
        assert proc.stop() == 0, proc.log_tail()


def two_free_ports() -> int:
    """A loopback port P with P + 1 free too (--metrics-listen of two workers)."""
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports")


async def get_when_listening(url: str):
    """GET, retrying while nothing listens yet (a worker's metrics port opens
    right after its share of the main port)."""
    for _ in range(MAX_TRIES):
        try:
            return await get(url, persistent=False)
        except ConnectionRefusedError:
            await sleep(0.1)
    raise AssertionError(f"nothing listens at {url}")


@pytest_twisted.ensureDeferred
async def test_with_metrics_listen_each_worker_is_scraped_on_a_port_of_its_own(dsn, tmp_path, channel_name):
    port = two_free_ports()
    proc = ServerProcess(["--dsn", dsn, "--workers", "2", "--metrics-listen", f"tcp:{port}:interface=127.0.0.1"],
                         tmp_path)
    proc.start()
    try:
        assert await answering_workers(proc, {"1", "2"}) == {"1", "2"}
        # Published on fresh connections: the kernel spreads them over both workers.
        sent = 30
        for n in range(sent):
            r = await request("POST", proc.url(f"/events/{CTX}/{channel_name}"), json_body={"n": n},
                              headers={"X-EVENT-ISSUER": "tests"}, persistent=False)
            assert r.code == 201, r
        published = {}
        for worker in (1, 2):
            base = f"http://127.0.0.1:{port + worker - 1}"
            r = await get_when_listening(base + "/metrics")
            assert r.code == 200, r
            assert r.header("X-Worker") == str(worker)  # this port is this worker's alone
            assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
            published[worker] = sum(
                s.value for family in text_string_to_metric_families(r.body.decode()) for s in family.samples
                if s.name == "eventbus_events_published_total")
            assert (await get(base + f"/events/{CTX}/{channel_name}", persistent=False)).code == 404  # metrics only
        # Each worker counts what it stored: together, every publish, once.
        assert sum(published.values()) == sent, published
    finally:
        proc.stop()
