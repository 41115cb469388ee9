"""Every route family against every action, in memory: a request is served
exactly when its token holds a scope for what the route needs, else a 403
that names the scope (or a 401 without a valid token).

The API is driven with ``StubTreq`` over fakes that answer like an empty
bus; the gate is the real one, with the real token cache over a fake store.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock

from eventbus import auth
from eventbus.auth import Action
from eventbus.http.access import Gate
from eventbus.http.api import make_root
from eventbus.http.streams import EventStreams
from eventbus.metrics import Metrics
from eventbus.metrics.exposition import Exposition
from eventbus.model import ChannelInfo, ConsumerStatus, Event, SubscriptionState
from eventbus.tokens import Holds, TokenCache, TokenService
from tests.unit.test_tokens import FakeTokenStore, done

BASE = "http://bus.test"
EVENT = Event(1, 1700000000.0, "unit", '{"a": 1}')
STATUS = ConsumerStatus("billing", "ordered", 30.0, 5, 0, 0, 0, 0)


def subscription(channel: str) -> SubscriptionState:
    return SubscriptionState(7, "mkp", channel, "https://example.com/h", 1.0, None, None, None)


class FakeEvents:
    async def append(self, context, channel, issuer, texts):
        return [Event(i + 1, 1700000000.0, issuer, t) for i, t in enumerate(texts)]

    async def head(self, *a):
        return 0

    async def bounds(self, *a):
        return 1, 0

    async def page(self, *a):
        return []

    async def event(self, *a):
        return EVENT

    async def first_after(self, *a):
        return EVENT

    async def ping(self):
        return None


class FakeNotifier:
    def recent(self, *a):
        return []

    async def next_event(self, *a):
        return EVENT


class FakeConsumers:
    async def next(self, *a):
        return None

    async def ack(self, *a):
        return None

    nack = retry = delete = ack

    async def configure(self, *a):
        return True, STATUS

    async def status(self, *a):
        return STATUS

    async def of_channel(self, *a):
        return [STATUS]

    async def dead(self, *a):
        return [], False  # no dead letters, no more pages


class FakeChannels:
    """Channels as the store keeps them: every one known, none with settings;
    records the patterns a list was filtered by."""

    def __init__(self) -> None:
        self.patterns: list[Any] = []

    async def list(self, context, after, limit, patterns=None):
        self.patterns.append(patterns)
        return [ChannelInfo("mkp", "INVOICE", 3, 0, 1.0, 2.0)]

    async def get(self, context, channel):
        return ChannelInfo(context, channel, 3, 0, 1.0, 2.0)

    async def configure(self, context, channel, changes):
        return None


class FakeWebhooks:
    def __init__(self, channel: str = "INVOICE") -> None:
        self.channel = channel

    async def create(self, context, channel, url, secret, start):
        return subscription(channel), "whsec_x"

    async def states(self, sid=None):
        return [subscription(self.channel), subscription("*")] if sid is None else [subscription(self.channel)]

    async def delete(self, sid):
        return True

    async def enable(self, sid):
        return True


class Api:
    def __init__(self, mode: str = auth.REQUIRED, webhook_channel: str = "INVOICE") -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tokens = FakeTokenStore(self.clock)
        self.cache = TokenCache(self.clock, self.tokens, Holds(100))  # type: ignore[arg-type]
        events: Any = FakeEvents()
        notifier: Any = FakeNotifier()
        self.channels = FakeChannels()
        root = make_root(
            database=events, events=events, conditional=events, notifier=notifier,
            streams=EventStreams(events, notifier, self.clock, 15.0),
            consumers=FakeConsumers(),  # type: ignore[arg-type]
            webhooks=FakeWebhooks(webhook_channel),  # type: ignore[arg-type]
            max_batch=1000, max_wait=300.0, tokens=TokenService(self.tokens),  # type: ignore[arg-type]
            gate=Gate(mode, self.cache, self.cache.holds, ["https://app.example.com"]),
            channels=self.channels,  # type: ignore[arg-type]
            metrics=Exposition(Metrics()),
        )
        self.root = root
        self.treq = StubTreq(root)

    def token(self, *scopes: str, issuers: Optional[tuple[str, ...]] = None) -> str:
        token = self.tokens.add(f"t{len(self.tokens.rows)}", scopes, issuers=issuers)
        done(self.cache.load())
        return token

    def call(self, method: str, path: str, token: Optional[str] = None, body: Any = None,
             headers: Optional[dict] = None) -> tuple[int, Any, Any]:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        d = self.treq.request(method, BASE + path, headers=headers, data=data)
        self.treq.flush()
        response = done(d)
        content = done(self.treq.content(response))
        self.treq.flush()
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = content
        return response.code, response.headers, parsed


SUB = {"context": "mkp", "channel": "INVOICE", "url": "https://example.com/h", "start": "latest"}
LEASE = {"lease": "1.abc"}
#: (method, path, body, actions that may do it): one row per route.
ROUTES = [
    ("POST", "/events/mkp/INVOICE", {"a": 1}, {Action.PUBLISH}),
    ("POST", "/events/mkp/INVOICE", [{"a": 1}, {"b": 2}], {Action.PUBLISH}),
    ("GET", "/events/mkp/INVOICE", None, {Action.READ}),
    ("GET", "/events/mkp/INVOICE?start=0", None, {Action.READ}),
    ("GET", "/events/mkp/INVOICE?peek=0&timeout=0", None, {Action.READ}),
    ("GET", "/events/mkp/INVOICE?peek=0&timeout=5", None, {Action.READ}),
    ("GET", "/events/mkp/INVOICE/1", None, {Action.READ}),
    ("GET", "/consumers/mkp/INVOICE", None, {Action.CONSUME, Action.MANAGE}),
    ("PUT", "/consumers/mkp/INVOICE/billing", {}, {Action.MANAGE}),
    ("GET", "/consumers/mkp/INVOICE/billing", None, {Action.CONSUME, Action.MANAGE}),
    ("DELETE", "/consumers/mkp/INVOICE/billing", None, {Action.MANAGE}),
    ("POST", "/consumers/mkp/INVOICE/billing/next?timeout=0", None, {Action.CONSUME}),
    ("POST", "/consumers/mkp/INVOICE/billing/ack", LEASE, {Action.CONSUME}),
    ("POST", "/consumers/mkp/INVOICE/billing/nack", LEASE, {Action.CONSUME}),
    ("GET", "/consumers/mkp/INVOICE/billing/dead", None, {Action.CONSUME, Action.MANAGE}),
    ("POST", "/consumers/mkp/INVOICE/billing/dead/3/retry", None, {Action.MANAGE}),
    ("POST", "/subscriptions", SUB, {Action.MANAGE}),
    ("GET", "/subscriptions/7", None, {Action.MANAGE}),
    ("DELETE", "/subscriptions/7", None, {Action.MANAGE}),
    ("POST", "/subscriptions/7/enable", None, {Action.MANAGE}),
    ("GET", "/channels/mkp/INVOICE", None, {Action.READ}),
    ("PATCH", "/channels/mkp/INVOICE", {"retention": {"max_events": 10}}, {Action.MANAGE}),
    ("POST", "/tokens", {"name": "new", "scopes": ["read:a/b"]}, set()),
    ("GET", "/tokens", None, set()),
    ("GET", "/tokens/t0", None, set()),
    ("DELETE", "/tokens/t0", None, set()),
    ("GET", "/metrics", None, {Action.METRICS}),
]
#: Actions granted only on every context and channel, named alone as a scope.
WHOLE = {Action.ADMIN: "admin", Action.METRICS: "metrics"}
ISSUER = {"X-EVENT-ISSUER": "unit"}


def _id(value: Any) -> Any:
    if isinstance(value, Action):
        return value.value
    if isinstance(value, tuple):
        return f"{value[0]} {value[1]}"
    return None


@pytest.mark.parametrize("route", ROUTES, ids=_id)
@pytest.mark.parametrize("action", list(Action), ids=_id)
def test_each_route_serves_exactly_the_actions_it_needs(route, action):
    method, path, body, allowed = route
    api = Api()
    token = api.token(WHOLE.get(action, f"{action.value}:mkp/INVOICE"))
    code, headers, answer = api.call(method, path, token, body, ISSUER)
    if action in allowed or action is Action.ADMIN:
        assert code not in (401, 403, 500), (code, answer)
    else:
        assert code == 403, (code, answer)
        needed = next(iter(sorted(allowed, key=list(Action).index)), Action.ADMIN)
        scope = WHOLE.get(needed, f"{needed.value}:mkp/INVOICE")
        assert scope in answer["error"]


@pytest.mark.parametrize("route", ROUTES, ids=_id)
def test_each_route_refuses_a_scope_on_another_channel(route):
    method, path, body, allowed = route
    api = Api()
    token = api.token(*(f"{a.value}:mkp/ORDER" for a in Action if a not in WHOLE),
                      *(f"{a.value}:other/*" for a in Action if a not in WHOLE))
    code, _, answer = api.call(method, path, token, body, ISSUER)
    assert code == 403, (code, answer)


@pytest.mark.parametrize("route", ROUTES, ids=_id)
def test_each_route_answers_401_with_a_challenge_without_a_valid_token(route):
    method, path, body, _ = route
    api = Api()
    code, headers, answer = api.call(method, path, None, body, ISSUER)
    assert code == 401 and "error" in answer
    assert headers.getRawHeaders("WWW-Authenticate") == ['Bearer realm="eventbus"']
    code, headers, answer = api.call(method, path, auth.new_token(), body, ISSUER)
    assert code == 401
    assert headers.getRawHeaders("WWW-Authenticate") == ['Bearer realm="eventbus", error="invalid_token"']


def test_health_needs_no_token():
    code, _, answer = Api().call("GET", "/health")
    assert code == 200 and answer == {"status": "ok"}


def test_wildcards_in_scopes():
    api = Api()
    token = api.token("read:mkp/*", "publish:*/INVOICE")
    assert api.call("GET", "/events/mkp/ANY", token)[0] == 200
    assert api.call("GET", "/events/other/ANY", token)[0] == 403
    assert api.call("POST", "/events/any/INVOICE", token, {"a": 1}, ISSUER)[0] == 201
    assert api.call("POST", "/events/any/ORDER", token, {"a": 1}, ISSUER)[0] == 403


def test_a_star_subscription_needs_a_star_scope():
    api = Api()
    one = api.token("manage:mkp/INVOICE")
    every = api.token("manage:mkp/*")
    star = dict(SUB, channel="*")
    code, _, answer = api.call("POST", "/subscriptions", one, star)
    assert code == 403 and "manage:mkp/*" in answer["error"]
    assert api.call("POST", "/subscriptions", every, star)[0] == 201


def test_lists_show_only_the_subscriptions_the_token_may_manage():
    api = Api()
    one = api.token("manage:mkp/INVOICE")
    every = api.token("manage:mkp/*")
    reader = api.token("read:*/*")
    assert [s["channel"] for s in api.call("GET", "/subscriptions", one)[2]] == ["INVOICE"]
    assert [s["channel"] for s in api.call("GET", "/subscriptions", every)[2]] == ["INVOICE", "*"]
    assert api.call("GET", "/subscriptions", reader)[2] == []


def test_issuer_binding_on_publish():
    api = Api()
    one = api.token("publish:*/*", issuers=("JERPi",))
    two = api.token("publish:*/*", issuers=("JERPi", "Other"))
    code, _, event = api.call("POST", "/events/mkp/INVOICE", one, {"a": 1})
    assert code == 201 and event["issuer"] == "JERPi"
    assert api.call("POST", "/events/mkp/INVOICE", one, {"a": 1}, {"X-EVENT-ISSUER": "JERPi"})[0] == 201
    assert api.call("POST", "/events/mkp/INVOICE", one, {"a": 1}, {"X-JISS-ISSUER": "Evil"})[0] == 403
    assert api.call("POST", "/events/mkp/INVOICE", one, [{"a": 1}], {"X-EVENT-ISSUER": "Evil"})[0] == 403
    assert api.call("POST", "/events/mkp/INVOICE", two, {"a": 1})[0] == 400
    assert api.call("POST", "/events/mkp/INVOICE", two, {"a": 1}, {"X-EVENT-ISSUER": "Other"})[0] == 201


def test_the_three_ways_to_present_a_token_in_their_order():
    api = Api()
    reader = api.token("read:*/*")
    writer = api.token("publish:*/*")
    assert api.call("GET", "/events/c/ch", None, None, {"Cookie": f"eventbus_token={reader}"})[0] == 200
    assert api.call("GET", f"/events/c/ch?access_token={reader}")[0] == 200
    # the header wins over the cookie, the cookie over the query parameter
    assert api.call("GET", f"/events/c/ch?access_token={reader}", writer)[0] == 403
    assert api.call("GET", f"/events/c/ch?access_token={reader}", None, None,
                    {"Cookie": f"eventbus_token={writer}"})[0] == 403
    # the query parameter is for GET only
    code, _, answer = api.call("POST", f"/events/c/ch?access_token={writer}", None, {"a": 1}, ISSUER)
    assert code == 400 and "access_token" in answer["error"]
    assert api.call("GET", "/events/c/ch", None, None, {"Authorization": "Basic dXNlcjpwYXNz"})[0] == 401


def test_a_token_authenticated_read_is_private_and_not_stored():
    api = Api()
    code, headers, _ = api.call("GET", "/events/c/ch", api.token("read:*/*"))
    assert code == 200 and headers.getRawHeaders("Cache-Control") == ["private, no-store"]


def test_a_cookie_authenticated_write_from_another_origin_is_refused():
    api = Api()
    writer = api.token("publish:*/*")
    cookie = {"Cookie": f"eventbus_token={writer}", **ISSUER}
    assert api.call("POST", "/events/c/ch", None, {"a": 1},
                    {**cookie, "Origin": "https://evil.example"})[0] == 403
    assert api.call("POST", "/events/c/ch", None, {"a": 1},
                    {**cookie, "Origin": "https://app.example.com"})[0] == 201
    assert api.call("POST", "/events/c/ch", None, {"a": 1}, {**cookie, "Origin": "http://bus.test"})[0] == 201
    assert api.call("POST", "/events/c/ch", None, {"a": 1}, cookie)[0] == 201


def test_local_mode_lets_loopback_in_unless_a_proxy_forwarded_it():
    api = Api(mode=auth.LOCAL)  # StubTreq's peer is 127.0.0.1
    assert api.call("POST", "/events/c/ch", None, {"a": 1}, ISSUER)[0] == 201
    assert api.call("POST", "/tokens", None, {"name": "x", "scopes": ["admin"]})[0] == 201
    for proxy in ("Forwarded", "X-Forwarded-For", "X-Real-IP"):
        code, headers, _ = api.call("GET", "/events/c/ch", None, None, {proxy: "for=10.0.0.1"})
        assert code == 401, proxy
    # a token sent is a token checked, even from loopback
    assert api.call("GET", "/events/c/ch", auth.new_token())[0] == 401
    assert api.call("GET", "/events/c/ch", api.token("publish:*/*"))[0] == 403


def test_off_mode_checks_nothing():
    api = Api(mode=auth.OFF)
    assert api.call("GET", "/events/c/ch", None, None, {"X-Forwarded-For": "10.0.0.1"})[0] == 200
    assert api.call("GET", "/events/c/ch", auth.new_token())[0] == 200


def test_tokens_api_shows_the_secret_once_and_never_the_digest():
    api = Api()
    admin = api.token("admin")
    code, headers, created = api.call("POST", "/tokens", admin,
                                      {"name": "ci", "scopes": ["publish:mkp/*"], "issuers": ["JERPi"],
                                       "expires_in": 60})
    assert code == 201 and headers.getRawHeaders("Location") == ["/tokens/ci"]
    secret = created["token"]
    assert auth.TOKEN_RE.fullmatch(secret)
    assert created["scopes"] == ["publish:mkp/*"] and created["issuers"] == ["JERPi"]
    listed = api.call("GET", "/tokens", admin)[2]
    shown = api.call("GET", "/tokens/ci", admin)[2]
    for text in (json.dumps(listed), json.dumps(shown)):
        assert secret not in text and auth.digest(secret) not in text
    assert shown["expires"] == pytest.approx(created["created"] + 60)
    assert api.call("POST", "/tokens", admin, {"name": "ci", "scopes": ["read:a/b"]})[0] == 409
    assert api.call("POST", "/tokens", admin, {"name": "x", "scopes": ["write:a/b"]})[0] == 400
    assert api.call("POST", "/tokens", admin, {"name": "x", "scopes": ["read:a/b"], "extra": 1})[0] == 400
    assert api.call("GET", "/tokens/nobody", admin)[0] == 404
    assert api.call("DELETE", "/tokens/ci", admin)[0] == 204
    assert api.call("DELETE", "/tokens/ci", admin)[0] == 404
    # an admin of one context is no admin of tokens
    assert api.call("GET", "/tokens", api.token("admin:mkp/*"))[0] == 403


def test_a_cors_preflight_from_a_listed_origin_is_answered():
    api = Api()
    code, headers, _ = api.call("OPTIONS", "/events/c/ch", None, None, {
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-event-issuer"})
    assert code == 204
    assert headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://app.example.com"]
    assert headers.getRawHeaders("Access-Control-Allow-Credentials") == ["true"]
    assert "Authorization" in headers.getRawHeaders("Access-Control-Allow-Headers")[0]
    code, headers, _ = api.call("OPTIONS", "/events/c/ch", None, None, {
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert not headers.hasHeader("Access-Control-Allow-Origin")
