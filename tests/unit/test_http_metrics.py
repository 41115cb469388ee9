"""HTTP requests as the metrics count them: by route pattern (never a raw
path), method and status, once each, whether answered, refused on the wire
or left by their client.  The real site and channel are driven byte by
byte over an in-memory transport (as in test_site.py); the real API with
its gate, over fakes (as in test_access.py)."""
from __future__ import annotations

import re
import pytest
from twisted.internet.task import Clock

import eventbus.http.api  # noqa: F401  (every resource's routes registered)
from eventbus.http.router import Router, route_of
from eventbus.http.site import EventBusSite
from eventbus.metrics.values import UNMATCHED
from tests.unit.test_access import Api
from tests.unit.test_site import DEADLINE_S, connect, site, statuses


class Request:
    def __init__(self, method: str, path: str) -> None:
        self.method = method.encode()
        self.path = path.encode()


def every_route() -> list[tuple[str, str]]:
    rules = {(rule.rule, method) for router in Router.every for rule in router.url_map.iter_rules()
             for method in sorted(rule.methods or ())}
    return sorted(rules)


@pytest.mark.parametrize("pattern, method", every_route())
def test_a_request_is_labelled_with_the_pattern_of_the_route_its_path_matches(pattern, method):
    path = re.sub(r"<[^>]+>", "x1", pattern)
    assert route_of(Request(method, path)) == pattern
    assert route_of(Request("BREW", path)) == pattern  # a 405 names its route too


@pytest.mark.parametrize("path, pattern", [("/ui", "/ui"), ("/ui/", "/ui/"), ("/ui/console.css", "/ui/<file>"),
                                           ("/ui/no-such-file.js", "/ui/<file>")])
def test_the_consoles_files_are_labelled_with_the_consoles_patterns(path, pattern):
    for method in ("GET", "HEAD", "POST"):
        assert route_of(Request(method, path)) == pattern


@pytest.mark.parametrize("path", ["/", "/nope", "/events", "/events/a/b/c/d", "/ui/x/y/z/w", "/metrics/x"])
def test_paths_that_match_no_route_share_one_label(path):
    assert route_of(Request("GET", path)) == UNMATCHED


def counted(s: EventBusSite) -> dict[tuple[str, str, str], float]:
    return {k: c.value for k, c in s.metrics.requests.items()}


def api_site(api: Api) -> EventBusSite:
    s = EventBusSite(api.root, max_body=10_000, access_log="off", request_timeout=30, max_connections=10,
                     reactor=Clock())
    s.startFactory()
    return s


def test_served_and_refused_requests_count_under_their_routes_pattern():
    api = Api()
    s = api_site(api)
    token = api.token("admin")
    sent = [
        (f"GET /events/mkp/INVOICE/1 HTTP/1.1\r\nAuthorization: Bearer {token}\r\n", "200"),
        ("GET /events/mkp/INVOICE/1 HTTP/1.1\r\n", "401"),  # refused by the gate, before routing
        (f"DELETE /events/mkp/INVOICE HTTP/1.1\r\nAuthorization: Bearer {token}\r\n", "405"),
        (f"BREW /events/mkp/INVOICE HTTP/1.1\r\nAuthorization: Bearer {token}\r\n", "405"),
        (f"GET /nowhere/at/all HTTP/1.1\r\nAuthorization: Bearer {token}\r\n", "404"),
        (f"GET /metrics HTTP/1.1\r\nAuthorization: Bearer {token}\r\n", "200"),
        ("GET /ui/ HTTP/1.1\r\n", "200"),  # the console: public, not a Klein app
        ("GET /ui/missing.js HTTP/1.1\r\n", "404"),
    ]
    for head, status in sent:
        channel, transport = connect(s)
        channel.dataReceived(head.encode() + b"Host: x\r\n\r\n")
        assert statuses(transport) == [status.encode()], transport.value()
    assert counted(s) == {
        ("/events/<context>/<channel>/<event_id>", "GET", "200"): 1,
        ("/events/<context>/<channel>/<event_id>", "GET", "401"): 1,
        ("/events/<context>/<channel>", "DELETE", "405"): 1,
        ("/events/<context>/<channel>", "other", "405"): 1,  # methods are a bounded label too
        (UNMATCHED, "GET", "404"): 1,
        ("/metrics", "GET", "200"): 1,
        ("/ui/", "GET", "200"): 1,
        ("/ui/<file>", "GET", "404"): 1,
    }
    assert sum(h.buckets()[-1][1] for h in s.metrics.durations.values()) == len(sent)


def test_a_request_is_counted_once_when_it_is_answered_not_again_when_its_connection_closes():
    s, _, _ = site()
    channel, transport = connect(s)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\nPOST /x HTTP/1.1\r\nHost: x\r\n\r\n")
    channel.connectionLost(None)
    assert counted(s) == {(UNMATCHED, "GET", "200"): 1, (UNMATCHED, "POST", "200"): 1}


def test_a_held_request_whose_client_leaves_counts_as_499_or_as_the_status_it_began_with():
    s, resource, _ = site()
    left, _ = connect(s)
    left.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    streaming, _ = connect(s)
    streaming.dataReceived(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    resource.held[1].write(b"the stream begins")
    assert counted(s) == {}  # nothing is answered yet
    left.connectionLost(None)
    streaming.connectionLost(None)
    assert counted(s) == {(UNMATCHED, "GET", "499"): 1, (UNMATCHED, "GET", "200"): 1}


def test_requests_refused_on_the_wire_count_with_the_status_they_got():
    s, _, clock = site(max_body=10)
    too_large, t1 = connect(s)
    too_large.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
    too_slow, t2 = connect(s)
    too_slow.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    clock.advance(DEADLINE_S)
    malformed, t3 = connect(s)
    malformed.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    assert [statuses(t) for t in (t1, t2, t3)] == [[b"413"], [b"408"], [b"400"]]
    for channel in (too_large, too_slow, malformed):
        channel.connectionLost(None)
    # Refused before the request reached routing: neither its route nor its method is known.
    assert counted(s) == {(UNMATCHED, "other", "413"): 1, (UNMATCHED, "other", "408"): 1,
                          (UNMATCHED, "other", "400"): 1}


def test_a_connection_that_closes_before_a_request_arrived_counts_nothing():
    s, _, _ = site()
    for data in (b"", b"GET /x HT", b"GET /x HTTP/1.1\r\nHost: x\r\n"):
        channel, _ = connect(s)
        if data:
            channel.dataReceived(data)
        channel.connectionLost(None)
    assert counted(s) == {}
