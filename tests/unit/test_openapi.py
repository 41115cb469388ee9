"""The OpenAPI document: valid OpenAPI 3.1, and exactly the routes the server has.

Every Klein route of every mounted API resource must be in the document
with its methods, and every path and method of the document must be a
route: the document is the single machine-readable truth, so neither may
drift.  Mounts that are not part of the API (static files) are named here.
"""
from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from treq.testing import StubTreq
from twisted.internet.task import Clock

from eventbus import auth
from eventbus.http import console, openapi
from eventbus.http.access import Gate
from eventbus.http.api import make_root
from eventbus.http.docs import content_security_policy, page
from eventbus.http.router import route_pattern
from eventbus.http.streams import EventStreams
from eventbus.metrics.exposition import Exposition
from eventbus.metrics.values import Metrics
from eventbus.tokens import Holds
from tests.unit.test_routing import RecordingNotifier, RecordingStore, _result

#: First path segments mounted on the root that are not part of the API
#: (the web console's static files under ``/ui/``, issue 13): the document
#: leaves them out, and says so in its description.
NON_API_MOUNTS = {console.PREFIX}
#: Resources the document describes that ``root()`` below does not mount
#: (none now): a server leaves the paths of unmounted resources out of its
#: document (``make_root`` mounts ``/metrics`` only with an exposition).
NOT_MOUNTED_YET: set[bytes] = set()
#: Methods werkzeug answers for every rule by itself (HEAD for GET).
IMPLICIT = {"HEAD", "OPTIONS"}


def root(mode: str = auth.LOCAL, max_wait: float = 300.0) -> Any:
    store: Any = RecordingStore()
    notifier: Any = RecordingNotifier()
    clock = Clock()
    from eventbus.consumers import Consumers

    return make_root(
        database=store, events=store, conditional=store, notifier=notifier,
        streams=EventStreams(store, notifier, clock, 15.0),
        consumers=Consumers(clock, store, store, notifier), webhooks=None,
        max_batch=1000, max_wait=max_wait, tokens=store, channels=store,
        gate=Gate(mode, None, Holds(10)), metrics=Exposition(Metrics()),
    )


def routes(api: Any) -> dict[str, set[str]]:
    """Every route of the mounted API resources: OpenAPI path -> methods."""
    found: dict[str, set[str]] = {}
    for router in {id(r): r for r in api.routers.values()}.values():
        for rule in router.url_map.iter_rules():
            path = route_pattern(rule.rule)
            found.setdefault(path, set()).update(m.lower() for m in rule.methods - IMPLICIT)
    return found


def described(document: dict) -> dict[str, set[str]]:
    return {path: {m for m in item if m != "parameters"} for path, item in document["paths"].items()}


@pytest.mark.parametrize("mode", auth.MODES)
def test_the_document_is_valid_openapi_3_1_in_every_access_mode(mode):
    document = openapi.document(max_wait=300, max_batch=1000, auth_mode=mode)
    assert document["openapi"].startswith("3.1")
    validate(document)


def served_document(api: Any) -> dict:
    code, _, body = call(api, "/openapi.json")
    assert code == 200
    return json.loads(body)


def test_every_route_is_described_and_every_described_path_is_a_route():
    api = root()
    assert set(api.apps) - set(api.routers) == NON_API_MOUNTS, "a mount that is neither API nor named here"
    document = served_document(api)
    assert "`/ui/`" in document["info"]["description"] and not any(p.startswith("/ui") for p in document["paths"])
    assert routes(api) == described(document)


def test_only_the_resources_not_mounted_yet_are_left_out_of_the_served_document():
    whole = described(openapi.document(max_wait=300, max_batch=1000, auth_mode=auth.LOCAL))
    served = described(served_document(root()))
    assert {openapi.first_segment(path) for path in set(whole) - set(served)} == NOT_MOUNTED_YET
    assert set(served) <= set(whole)


def test_a_server_without_metrics_leaves_metrics_out_of_its_document():
    store: Any = RecordingStore()
    notifier: Any = RecordingNotifier()
    from eventbus.consumers import Consumers

    api = make_root(
        database=store, events=store, conditional=store, notifier=notifier,
        streams=EventStreams(store, notifier, Clock(), 15.0),
        consumers=Consumers(Clock(), store, store, notifier), webhooks=None,
        max_batch=1000, max_wait=300, gate=Gate(auth.LOCAL, None, Holds(10)),
    )
    paths = served_document(api)["paths"]
    assert "/metrics" not in paths and "/tokens" not in paths and "/events/{context}/{channel}" in paths
    assert routes(api) == described({"paths": paths})


def test_the_metrics_route_is_described_as_the_prometheus_text_format():
    operation = openapi.document(max_wait=300, max_batch=1000, auth_mode=auth.REQUIRED)["paths"]["/metrics"]["get"]
    assert list(operation["responses"]["200"]["content"])[0] == "text/plain; version=0.0.4"
    assert {"200", "401", "403"} <= set(operation["responses"])


def test_the_coverage_check_sees_a_missing_route_and_a_missing_method():
    """The comparison above must be able to fail."""
    api = root()
    document = described(served_document(api))
    served = routes(api)
    assert served == document
    served["/events/{context}/{channel}/{event_id}"] = {"get", "delete"}
    assert served != document
    del served["/events/{context}/{channel}/{event_id}"]
    assert served != document


def test_every_operation_states_its_errors_and_the_request_id_header():
    document = openapi.document(max_wait=300, max_batch=1000, auth_mode=auth.REQUIRED)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert {"400", "503"} <= statuses, (path, method)
            assert any(s.startswith("2") for s in statuses)
            public = path in openapi.PUBLIC_PATHS
            assert ({"401", "403"} <= statuses) is not public, (path, method)
            assert (operation["security"] == []) is public
            for answer in operation["responses"].values():
                if "$ref" not in answer:
                    assert "X-Request-Id" in answer["headers"], (path, method)


def test_the_served_document_states_the_running_servers_cap_on_every_timeout():
    document = json.loads(openapi.rendered(max_wait=2.5, max_batch=7, auth_mode=auth.REQUIRED))
    walk = document["paths"]["/events/{context}/{channel}"]["get"]["parameters"][-1]["schema"]["oneOf"][1]
    assert walk["properties"]["timeout"]["maximum"] == 2.5
    assert walk["properties"]["timeout"]["default"] == 2.5
    nxt = document["paths"]["/consumers/{context}/{channel}/{name}/next"]["post"]["parameters"][-1]
    assert nxt["schema"]["maximum"] == 2.5
    batch = document["paths"]["/events/{context}/{channel}"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["oneOf"][1]["maxItems"] == 7
    # In required mode no operation but the public ones can be called without a token.
    assert all({} not in op["security"] for item in document["paths"].values() for op in item.values())


def call(api: Any, path: str) -> tuple[int, Any, bytes]:
    treq = StubTreq(api)
    response = _result(treq.get("http://bus.test" + path))
    body = _result(treq.content(response))
    return response.code, response.headers, body


@pytest.mark.parametrize("mode", [auth.REQUIRED, auth.LOCAL])
def test_the_document_and_the_docs_page_need_no_token(mode):
    api = root(mode, max_wait=4)
    code, headers, body = call(api, "/openapi.json")
    assert code == 200 and headers.getRawHeaders("Content-Type") == ["application/json"]
    document = json.loads(body)
    nxt = document["paths"]["/consumers/{context}/{channel}/{name}/next"]["post"]["parameters"][-1]
    assert nxt["schema"]["maximum"] == 4
    code, headers, body = call(api, "/docs")
    assert code == 200 and headers.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    assert b'fetch("openapi.json"' in body
    # Nothing is loaded from elsewhere: no URL with a host in the page.
    assert not re.search(rb"(src|href)=\"(https?:)?//", body)
    assert headers.getRawHeaders("Content-Security-Policy") == [content_security_policy(page()).decode()]
    # Whereas an API route still needs one in required mode.
    assert call(api, "/events/c/ch/1")[0] == (401 if mode == auth.REQUIRED else 404)


def test_the_pages_policy_allows_exactly_its_own_script_and_style():
    policy = content_security_policy(b"<style>a{}</style><script>go()</script>")
    assert b"script-src 'sha256-" in policy and b"style-src 'sha256-" in policy
    assert b"'unsafe-inline'" not in policy and b"connect-src 'self'" in policy
    assert content_security_policy(b"<script>other()</script>") != policy


# -- the document's patterns and the server's validators agree ------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from eventbus.auth import parse_scope  # noqa: E402
from eventbus.http.openapi import components, schemas  # noqa: E402
from eventbus.model import check_issuer, check_name  # noqa: E402
from eventbus.webhooks.addresses import parse_url  # noqa: E402
from eventbus.webhooks.signing import secret_key  # noqa: E402

PATTERNS = {
    "name": (components.NAME_REGEX, 128, lambda v: check_name("name", v)),
    "issuer": (components.ISSUER_REGEX, 128, lambda v: check_issuer(v, "issuer")),
    "scope": (components.SCOPE_REGEX, 10_000, parse_scope),
    "url": (schemas.URL_REGEX, 2048, parse_url),
    "secret": (schemas._WHSEC, 10_000, secret_key),
}


@pytest.mark.parametrize("kind", PATTERNS)
def test_every_value_the_documents_pattern_allows_is_accepted(kind):
    pattern, longest, check = PATTERNS[kind]

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.from_regex(pattern, fullmatch=True).filter(lambda v: 1 <= len(v) <= longest))
    def accepted(value: str) -> None:
        check(value)

    accepted()
