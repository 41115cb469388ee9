"""``GET /metrics`` after a scripted workload, against a real server process.

The workload (publishes, a consumer with a redelivery and a dead letter, a
webhook that fails and one that never connects, retention, held long polls,
an SSE client, requests to unknown paths) is sent through helpers that
tally every request this test makes; each metric is then compared with what
the test computed itself from what it did, never with another answer of
the server.  The exposition is parsed with prometheus-client's own parser.

The server has a database of its own: it is the only process to prune and
to deliver webhooks there, so what it counts is all there is.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Iterator, Optional

import psycopg2
import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from tests.client import Response, request
from tests.servers import ServerProcess, cpu_seconds, free_port, vm_rss_kb
from tests.sse_client import open_stream
from tests.webhook_receiver import Receiver, sleep, until, until_async

CTX = "metrics"
POOL_SIZE = 3
EVENTS = "/events/<context>/<channel>"
CONSUMER = "/consumers/<context>/<channel>/<name>"


def _database(postgres: Any, name: str) -> str:
    conn = psycopg2.connect(postgres.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return postgres.dsn(name)


def _server(postgres: Any, tmp_path_factory: Any, db: str, *args: str) -> ServerProcess:
    return ServerProcess(
        ["--dsn", _database(postgres, db), "--pool-size", str(POOL_SIZE), "--webhook-allow-private",
         "--webhook-retry-scale", "0.05", "--retention-interval", "0.2", *args],
        tmp_path_factory.mktemp(db))


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = _server(postgres, tmp_path_factory, "metrics_main")
    proc.start()
    yield proc
    proc.stop()


class Scrape:
    """One exposition, parsed: samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a counter or bucket never incremented."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.samples

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


class Client:
    """Every request of the test goes through here and is tallied by
    (route pattern, method, status), as the server should count it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.tally: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: What the test published: requests that reached the store, their
        #: events, events stored, replays, and notifications they cause.
        self.publishes = self.batch_events = self.stored = self.replays = self.notifications = 0

    async def call(self, method: str, path: str, route: str, *, body: Any = None,
                   headers: Optional[dict[str, str]] = None, expect: Optional[int] = None) -> Response:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        r = await request(method, self.server.url(path), data=data, headers=headers)
        self.tally[(route, method, str(r.code))] += 1
        if expect is not None:
            assert r.code == expect, (method, path, r)
        return r

    async def publish(self, channel: str, payload: Any, key: Optional[str] = None,
                      replay: bool = False) -> Response:
        headers = {"X-EVENT-ISSUER": "metrics"}
        if key is not None:
            headers["Idempotency-Key"] = key
        r = await self.call("POST", f"/events/{CTX}/{channel}", EVENTS, body=payload, headers=headers,
                            expect=201)
        count = len(payload) if isinstance(payload, list) else 1
        self.publishes += 1
        self.batch_events += count
        if replay:
            assert r.header("Idempotent-Replayed") == "true"
            self.replays += 1
        else:
            self.stored += count
            self.notifications += 1
        return r

    async def scrape(self) -> Scrape:
        r = await self.call("GET", "/metrics", "/metrics", expect=200)
        assert r.header("Content-Type").startswith("text/plain"), r.headers
        return Scrape(r.body.decode())


def held(call: Any) -> defer.Deferred:
    """A request left open: it answers a Response, or None if it failed (it
    is cancelled, or the test failed first and the server went away)."""
    d = defer.ensureDeferred(call)
    d.addErrback(lambda _: None)
    return d


def deltas(before: Scrape, after: Scrape, name: str) -> dict[frozenset[tuple[str, str]], float]:
    old = before.labelled(name)
    return {k: v - old.get(k, 0.0) for k, v in after.labelled(name).items() if v != old.get(k, 0.0)}


@pytest_twisted.ensureDeferred
async def test_a_scrape_after_a_workload_shows_every_metric_as_the_test_counted_it(server):
    c = Client(server)
    before = await c.scrape()

    # -- publishes: single, batch, keyed and its replay --------------------------------------
    for n in range(3):
        await c.publish("pub", {"n": n})
    await c.publish("pub", [{"b": i} for i in range(4)])
    await c.publish("pub", {"once": 1}, key="k-1")
    await c.publish("pub", {"once": 1}, key="k-1", replay=True)

    # -- requests that match no route, or are refused before their handler ------------------
    await c.call("GET", "/nope", "unmatched", expect=404)
    await c.call("GET", f"/events/{CTX}/a/b/c/d", "unmatched", expect=404)
    await c.call("DELETE", f"/events/{CTX}/pub", EVENTS, expect=405)
    await c.call("GET", f"/events/{CTX}/pub", EVENTS, headers={"Authorization": "Bearer ebt_x"}, expect=401)

    # -- a consumer: a redelivery, a dead letter, an ack, one in flight, one waiting --------
    await c.call("PUT", f"/consumers/{CTX}/work/w", CONSUMER, body={"max_deliveries": 2}, expect=201)
    c.notifications += 1
    for n in range(5):
        await c.publish("work", {"n": n})
    nxt = f"/consumers/{CTX}/work/w/next?timeout=0"
    first = (await c.call("POST", nxt, CONSUMER + "/next", expect=200)).json()
    await c.call("POST", f"/consumers/{CTX}/work/w/nack", CONSUMER + "/nack", body={"lease": first["lease"]}, expect=204)
    again = (await c.call("POST", nxt, CONSUMER + "/next", expect=200)).json()
    assert (again["event"]["id"], again["deliveries"]) == (1, 2)  # a redelivery
    await c.call("POST", f"/consumers/{CTX}/work/w/nack", CONSUMER + "/nack", body={"lease": again["lease"]}, expect=204)
    c.notifications += 2  # every nack announces a state change
    second = (await c.call("POST", nxt, CONSUMER + "/next", expect=200)).json()
    assert second["event"]["id"] == 2  # event 1 is dead
    await c.call("POST", f"/consumers/{CTX}/work/w/ack", CONSUMER + "/ack", body={"lease": second["lease"]}, expect=204)
    c.notifications += 1  # an ack in ordered mode too
    third = (await c.call("POST", nxt, CONSUMER + "/next", expect=200)).json()
    assert third["event"]["id"] == 3  # held: in flight
    # Ordered: nothing more can be leased while 3 is in flight, so this one waits.
    waiting = held(request("POST", server.url(f"/consumers/{CTX}/work/w/next?timeout=60"), persistent=False))

    # -- webhooks: one fails twice then delivers, one never connects --------------------------
    receiver = Receiver().start()
    receiver.fail_first = 2
    sub = (await c.call("POST", "/subscriptions", "/subscriptions", expect=201,
                        body={"context": CTX, "channel": "hook", "url": receiver.url, "start": "earliest"})).json()
    for n in range(3):
        await c.publish("hook", {"n": n})
    closed = f"http://127.0.0.1:{free_port()}/nobody"
    dead_sub = (await c.call("POST", "/subscriptions", "/subscriptions", expect=201,
                             body={"context": CTX, "channel": "nowhere", "url": closed, "start": "earliest"})).json()
    for n in range(2):
        await c.publish("nowhere", {"n": n})

    async def delivered() -> bool:
        state = (await c.call("GET", f"/subscriptions/{sub['id']}", "/subscriptions/<sub_id>", expect=200)).json()
        return state["lag"] == 0 and state["cursor"] == 3
    await until_async(delivered, timeout=30, what="the webhook to deliver its three events")
    assert len(receiver.requests) == 5  # two failures, three deliveries

    # -- retention: 5 events, keep 2 ------------------------------------------------------------
    for n in range(5):
        await c.publish("old", {"n": n})
    await c.call("PATCH", f"/channels/{CTX}/old", "/channels/<context>/<channel>",
                 body={"retention": {"max_events": 2}}, expect=200)

    async def pruned() -> bool:
        info = (await c.call("GET", f"/channels/{CTX}/old", "/channels/<context>/<channel>", expect=200)).json()
        return info["first_id"] == 4
    await until_async(pruned, timeout=30, what="retention to delete 3 events")

    # -- held requests: a long poll, an SSE stream, the consumer's next above ------------------
    peek = held(request("GET", server.url(f"/events/{CTX}/quiet?peek=0&timeout=60"), persistent=False))
    stream = await open_stream(server.port, f"/events/{CTX}/quiet/stream")
    await until(lambda: ": connected" in stream.raw.decode(), 10, "the stream to open")
    # A long poll that times out: one request of at least a second.
    await c.call("GET", f"/events/{CTX}/quiet?peek=0&timeout=1", EVENTS, expect=204)

    async def everything_held() -> Optional[Scrape]:
        s = await c.scrape()
        held = (s("eventbus_longpoll_waiters"), s("eventbus_sse_streams"), s("eventbus_consumer_next_waiting"))
        heard = s("eventbus_notifications_received_total") - before("eventbus_notifications_received_total")
        # The database's gauges are read at most every few seconds: the
        # first scrape read them before the workload.
        fresh = s.has("eventbus_consumer_lag_events", context=CTX, channel="work", consumer="w")
        return s if held == (1, 1, 1) and heard >= c.notifications and fresh else None
    after = await until_async(everything_held, timeout=30, what="the held requests and the notifications")
    rss_kb = vm_rss_kb(server.proc.pid)
    fds = len(os.listdir(f"/proc/{server.proc.pid}/fd"))
    cpu = cpu_seconds(server.proc.pid)
    tally = c.tally.copy()
    tally[("/metrics", "GET", "200")] -= 1  # a scrape counts once it is answered: not in itself

    # HTTP: every request the test made, by route pattern, method and status; no raw path.
    requests = {tuple(sorted(k)): v for k, v in deltas(before, after, "eventbus_http_requests_total").items()}
    expected = {tuple(sorted({"route": r, "method": m, "code": s}.items())): n for (r, m, s), n in tally.items()}
    assert requests == expected
    routes = {dict(k)["route"] for k in after.labelled("eventbus_http_requests_total")}
    assert all(r.startswith("/") or r == "unmatched" for r in routes) and not any(f"/{CTX}/" in r for r in routes)
    per_route = collections.Counter()
    for (route, _, _), n in tally.items():
        per_route[route] += n
    for route, n in per_route.items():
        counted = after("eventbus_http_request_duration_seconds_count", route=route) - before(
            "eventbus_http_request_duration_seconds_count", route=route)
        assert counted == n, route
    slow = after("eventbus_http_request_duration_seconds_count", route=EVENTS) - after(
        "eventbus_http_request_duration_seconds_bucket", route=EVENTS, le="0.5")
    assert slow >= 1  # the long poll that timed out after a second

    # Publishes and group commits (sequential requests: one append per group).
    def delta(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)
    assert delta("eventbus_events_published_total") == c.stored
    assert delta("eventbus_publish_batch_size_count") == c.publishes
    assert delta("eventbus_publish_batch_size_sum") == c.batch_events
    assert delta("eventbus_publish_batch_size_bucket", le="2.0") == c.publishes - 1  # the batch of 4
    assert delta("eventbus_append_group_size_sum") == c.publishes
    assert delta("eventbus_append_group_size_count") == c.publishes
    assert delta("eventbus_append_commit_duration_seconds_count") == c.publishes
    assert delta("eventbus_append_commit_duration_seconds_sum") > 0
    assert delta("eventbus_idempotent_replays_total") == c.replays == 1
    assert delta("eventbus_events_pruned_total") == 3

    # The held requests, and the LISTEN connection (every NOTIFY of our own commits comes back).
    assert (after("eventbus_longpoll_waiters"), after("eventbus_sse_streams"),
            after("eventbus_consumer_next_waiting")) == (1, 1, 1)
    assert delta("eventbus_notifications_received_total") == c.notifications
    assert after("eventbus_listener_connected") == 1
    assert delta("eventbus_listener_reconnects_total") == 0
    assert delta("eventbus_db_unavailable_total") == 0
    assert after("eventbus_db_pool_connections", state="busy") + after(
        "eventbus_db_pool_connections", state="idle") == POOL_SIZE

    # The consumer: events 3, 4, 5 to handle (3 in flight), event 1 dead.
    w = {"context": CTX, "channel": "work", "consumer": "w"}
    assert after("eventbus_consumer_lag_events", **w) == 3
    assert after("eventbus_consumer_in_flight", **w) == 1
    assert after("eventbus_consumer_dead_events", **w) == 1
    assert delta("eventbus_redeliveries_total", **w) == 1
    assert delta("eventbus_dead_lettered_total", **w) == 1

    # Webhooks: two answers 500 then three 2xx; the unreachable one only fails.
    assert delta("eventbus_webhook_attempts_total", outcome="http_error") == 2
    assert delta("eventbus_webhook_attempts_total", outcome="success") == 3
    assert delta("eventbus_webhook_attempts_total", outcome="network") >= 1
    assert delta("eventbus_webhook_attempts_total", outcome="timeout") == 0
    assert delta("eventbus_webhook_attempts_total", outcome="refused") == 0
    attempts = sum(delta("eventbus_webhook_attempts_total", outcome=o)
                   for o in ("success", "http_error", "network", "timeout", "refused"))
    assert delta("eventbus_webhook_attempt_duration_seconds_count") == attempts
    assert after("eventbus_webhook_lag_events", subscription=str(sub["id"])) == 0
    assert after("eventbus_webhook_lag_events", subscription=str(dead_sub["id"])) == 2
    assert after("eventbus_webhook_subscriptions", status="active") == 2
    assert after("eventbus_webhook_subscriptions", status="disabled") == 0

    # The process, as /proc sees it.
    assert 0.5 < after("process_resident_memory_bytes") / (rss_kb * 1024) < 1.5
    assert abs(after("process_open_fds") - fds) <= 5
    assert 0 < after("process_cpu_seconds_total") <= cpu + 0.05

    # Every metric has the prefix and no channel or issuer label, but the consumers' and webhooks'.
    ours = [name for name in after.families if not name.startswith(("process_", "python_"))]
    assert ours and all(name.startswith("eventbus_") for name in ours)
    for (name, labels), _ in after.samples.items():
        if not name.startswith("eventbus_consumer_") and name not in (
                "eventbus_redeliveries_total", "eventbus_dead_lettered_total"):
            assert not {"channel", "issuer", "context"} & {k for k, _ in labels}, name

    # The held requests end: the client that left its long poll (499) and its
    # stream (200, the status it had) are counted once they are gone.
    peek.cancel()
    await stream.close()
    await c.call("POST", f"/consumers/{CTX}/work/w/ack", CONSUMER + "/ack", body={"lease": third["lease"]}, expect=204)
    assert (await waiting).code == 200  # the ack made event 4 leasable

    async def released() -> Optional[Scrape]:
        s = await c.scrape()
        return s if (s("eventbus_longpoll_waiters"), s("eventbus_sse_streams")) == (0, 0) else None
    end = await until_async(released, timeout=30, what="the held requests to end")
    assert end("eventbus_http_requests_total", route=EVENTS, method="GET", code="499") - after(
        "eventbus_http_requests_total", route=EVENTS, method="GET", code="499") == 1
    stream_route = EVENTS + "/stream"
    assert end("eventbus_http_requests_total", route=stream_route, method="GET", code="200") - before(
        "eventbus_http_requests_total", route=stream_route, method="GET", code="200") == 1
    assert end("eventbus_consumer_next_waiting") == 0
    await receiver.disappear()


@pytest.fixture(scope="module")
def labelled_server(postgres, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = _server(postgres, tmp_path_factory, "metrics_contexts", "--metrics-context-labels")
    proc.start()
    yield proc
    proc.stop()


@pytest_twisted.ensureDeferred
async def test_context_labels_split_the_event_counts_by_context_only_when_asked(server, labelled_server):
    for proc, labelled in ((server, False), (labelled_server, True)):
        c = Client(proc)
        before = await c.scrape()
        for context, n in (("alpha", 2), ("beta", 3)):
            for i in range(n):
                await c.call("POST", f"/events/{context}/ch", EVENTS, body={"i": i},
                             headers={"X-EVENT-ISSUER": "x", "Idempotency-Key": f"{context}-{i}"}, expect=201)
        await c.call("POST", f"/events/beta/ch", EVENTS, body={"i": 0},
                     headers={"X-EVENT-ISSUER": "x", "Idempotency-Key": "beta-0"}, expect=201)
        after = await c.scrape()
        published = deltas(before, after, "eventbus_events_published_total")
        replays = deltas(before, after, "eventbus_idempotent_replays_total")
        if labelled:
            assert published == {frozenset({("context", "alpha")}): 2, frozenset({("context", "beta")}): 3}
            assert replays == {frozenset({("context", "beta")}): 1}
        else:
            assert published == {frozenset(): 5} and replays == {frozenset(): 1}


@pytest_twisted.ensureDeferred
async def test_a_disabled_subscription_is_counted_as_disabled_with_its_undelivered_events(server):
    """A deliverer disables a subscription after ``--webhook-disable-after`` of
    failures (days by default): here the test writes what it would write."""
    c = Client(server)
    before = await c.scrape()
    closed = f"http://127.0.0.1:{free_port()}/nobody"
    sub = (await c.call("POST", "/subscriptions", "/subscriptions", expect=201,
                        body={"context": CTX, "channel": "disabled", "url": closed, "start": "earliest"})).json()
    for n in range(3):
        await c.publish("disabled", {"n": n})
    conn = psycopg2.connect(server.args[server.args.index("--dsn") + 1])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("UPDATE webhook_subscriptions SET disabled_at = now() WHERE id = %s", (sub["id"],))
    conn.close()

    async def disabled() -> Optional[Scrape]:
        s = await c.scrape()  # the database's gauges are up to 5 s old
        return s if s("eventbus_webhook_subscriptions", status="disabled") == before(
            "eventbus_webhook_subscriptions", status="disabled") + 1 else None
    after = await until_async(disabled, timeout=30, what="the subscription to be reported disabled")
    assert after("eventbus_webhook_subscriptions", status="active") == before(
        "eventbus_webhook_subscriptions", status="active")
    assert after("eventbus_webhook_lag_events", subscription=str(sub["id"])) == 3
