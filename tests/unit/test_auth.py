"""The pure rules of access control (eventbus.auth), exhaustively: scopes,
matching, issuers, who is local, the token format and log redaction."""
from __future__ import annotations

import hashlib
import itertools

import pytest

from eventbus import auth
from eventbus.auth import ANY, LOCAL, OFF, REQUIRED, Action, Principal, Scope, parse_scope
from eventbus.errors import Forbidden, InvalidInput

ACTIONS = list(Action)
#: The actions a scope may grant on some contexts or channels only.
SCOPED = [a for a in Action if a is not Action.METRICS]
#: (scope pattern, request context, request channel, matches?)
PATTERNS = [
    ("mkp/INVOICE", "mkp", "INVOICE", True),
    ("mkp/*", "mkp", "INVOICE", True),
    ("*/INVOICE", "mkp", "INVOICE", True),
    ("*/*", "mkp", "INVOICE", True),
    ("mkp/INVOICE", "mkp", "ORDER", False),
    ("mkp/INVOICE", "other", "INVOICE", False),
    ("mkp/*", "other", "INVOICE", False),
    ("*/ORDER", "mkp", "INVOICE", False),
    # a request for every channel (a '*' webhook subscription) needs a '*' scope
    ("mkp/*", "mkp", "*", True),
    ("*/*", "mkp", "*", True),
    ("mkp/INVOICE", "mkp", "*", False),
    ("mkp/*", "other", "*", False),
]


@pytest.mark.parametrize("granted, wanted, pattern",
                         list(itertools.product(SCOPED, ACTIONS, PATTERNS)),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_a_scope_allows_exactly_its_action_or_admin_on_matching_names(granted, wanted, pattern):
    text, context, channel, matches = pattern
    scope = parse_scope(f"{granted.value}:{text}")
    expected = matches and (granted is wanted or granted is Action.ADMIN)
    assert scope.allows(wanted, context, channel) is expected
    principal = Principal(token="t", scopes=(scope,))
    assert principal.may(wanted, context, channel) is expected


@pytest.mark.parametrize("action", ACTIONS)
def test_admin_alone_allows_every_action_everywhere(action):
    scope = parse_scope("admin")
    assert scope == Scope(Action.ADMIN, ANY, ANY)
    assert str(scope) == "admin:*/*"
    assert scope.allows(action, "any", "thing") and scope.allows(action, "any", "*")


@pytest.mark.parametrize("wanted, pattern", list(itertools.product(ACTIONS, PATTERNS)),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_the_metrics_scope_allows_reading_metrics_and_nothing_else(wanted, pattern):
    _, context, channel, _ = pattern
    for text in ("metrics", "metrics:*/*"):
        scope = parse_scope(text)
        assert scope == Scope(Action.METRICS, ANY, ANY) and str(scope) == "metrics:*/*"
        assert scope.allows(wanted, context, channel) is (wanted is Action.METRICS)
        assert Principal(token="t", scopes=(scope,)).may(wanted, ANY, ANY) is (wanted is Action.METRICS)


@pytest.mark.parametrize("text", ["metrics:mkp/INVOICE", "metrics:mkp/*", "metrics:*/INVOICE", "metrics:",
                                  "metrics:*"])
def test_a_metrics_scope_on_part_of_the_bus_is_invalid_input(text):
    with pytest.raises(InvalidInput):
        parse_scope(text)


def test_only_a_metrics_or_admin_scope_on_everything_may_read_metrics():
    auth.require_metrics(Principal(token="m", scopes=(parse_scope("metrics"),)))
    auth.require_metrics(Principal(token="a", scopes=(parse_scope("admin"),)))
    auth.require_metrics(auth.UNRESTRICTED)
    for text in ("admin:ctx/*", "read:*/*", "manage:*/*", "publish:*/*", "consume:*/*"):
        with pytest.raises(Forbidden) as e:
            auth.require_metrics(Principal(token="a", scopes=(parse_scope(text),)))
        assert e.value.scope == "metrics"


@pytest.mark.parametrize("text", [
    "publish:mkp/INVOICE", "read:*/*", "consume:a.b:c-d_e/X", "manage:ctx/*", "admin:*/*",
    "admin:ctx/*", "read:" + "c" * 128 + "/ch",
])
def test_valid_scopes_parse_and_print_back(text):
    assert str(parse_scope(text)) == text


@pytest.mark.parametrize("text", [
    "", "publish", "publish:", "publish:ctx", "publish:ctx/", "publish:/ch", "write:a/b",
    "PUBLISH:a/b", "publish:a b/c", "publish:a/b/c", "publish:*/*/x", "publish:**/x",
    "publish:a*/b", "admin:", "read:" + "c" * 129 + "/ch", "publish mkp/INVOICE", " read:a/b",
])
def test_malformed_scopes_are_invalid_input(text):
    with pytest.raises(InvalidInput):
        parse_scope(text)


@pytest.mark.parametrize("value", [None, [], "read:a/b", [1], ["read:a/b", 2], ["read:a/b"] * 101])
def test_scope_lists_must_be_non_empty_lists_of_scopes(value):
    with pytest.raises(InvalidInput):
        auth.parse_scopes(value)


def test_a_scope_list_drops_repeats_and_keeps_order():
    assert [str(s) for s in auth.parse_scopes(["read:a/b", "publish:a/*", "read:a/b"])] == [
        "read:a/b", "publish:a/*"]


@pytest.mark.parametrize("value, expected", [
    (None, None), (["A"], ("A",)), (["A", "B", "A"], ("A", "B")), ([" A "], ("A",)),
])
def test_issuer_lists(value, expected):
    assert auth.parse_issuers(value) == expected


@pytest.mark.parametrize("value", [[], "A", [1], [""], ["a\nb"], ["i" * 129], ["x"] * 101])
def test_bad_issuer_lists_are_invalid_input(value):
    with pytest.raises(InvalidInput):
        auth.parse_issuers(value)


def test_require_names_the_first_scope_needed():
    principal = Principal(token="reader", scopes=(parse_scope("read:mkp/*"),))
    auth.require(principal, [Action.READ], "mkp", "X")
    with pytest.raises(Forbidden) as e:
        auth.require(principal, [Action.CONSUME, Action.MANAGE], "mkp", "X")
    assert e.value.scope == "consume:mkp/X"
    assert "consume:mkp/X" in e.value.message


def test_only_an_admin_scope_on_everything_may_manage_tokens():
    auth.require_admin(Principal(token="a", scopes=(parse_scope("admin"),)))
    auth.require_admin(auth.UNRESTRICTED)
    for text in ("admin:ctx/*", "manage:*/*", "read:*/*"):
        with pytest.raises(Forbidden):
            auth.require_admin(Principal(token="a", scopes=(parse_scope(text),)))


def test_the_unrestricted_principal_may_do_anything():
    for action in ACTIONS:
        assert auth.UNRESTRICTED.may(action, "x", "y") and auth.UNRESTRICTED.may_any(action)


def test_may_any_looks_for_the_action_or_admin():
    principal = Principal(token="t", scopes=(parse_scope("read:a/b"),))
    assert principal.may_any(Action.READ) and not principal.may_any(Action.MANAGE)
    assert Principal(token="t", scopes=(parse_scope("admin:a/*"),)).may_any(Action.MANAGE)


# -- issuers -----------------------------------------------------------------------
ANY_ISSUER = Principal(token="t")
ONE = Principal(token="t", issuers=("JERPi",))
TWO = Principal(token="t", issuers=("JERPi", "Other"))


@pytest.mark.parametrize("principal, sent, expected", [
    (auth.UNRESTRICTED, "X", "X"), (ANY_ISSUER, "X", "X"), (ONE, "JERPi", "JERPi"),
    (ONE, None, "JERPi"), (TWO, "Other", "Other"), (TWO, "JERPi", "JERPi"),
])
def test_the_issuer_a_publish_is_stored_under(principal, sent, expected):
    assert auth.publishing_issuer(principal, sent) == expected


@pytest.mark.parametrize("principal, sent, error", [
    (auth.UNRESTRICTED, None, InvalidInput), (ANY_ISSUER, None, InvalidInput),
    (TWO, None, InvalidInput), (ONE, "Other", Forbidden), (TWO, "jerpi", Forbidden),
])
def test_issuers_a_token_may_not_use(principal, sent, error):
    with pytest.raises(error):
        auth.publishing_issuer(principal, sent)


# -- who is local ----------------------------------------------------------------------
@pytest.mark.parametrize("host, loopback", [
    (None, True), ("127.0.0.1", True), ("127.255.3.4", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("10.0.0.1", False), ("192.168.1.5", False), ("::", False),
    ("0.0.0.0", False), ("8.8.8.8", False), ("fe80::1%eth0", False), ("localhost", False),
    ("garbage", False), ("", False),
])
def test_which_peers_are_loopback(host, loopback):
    assert auth.is_loopback(host) is loopback


@pytest.mark.parametrize("mode, host, proxied, needed", [
    (LOCAL, "127.0.0.1", False, False), (LOCAL, None, False, False), (LOCAL, "::1", False, False),
    (LOCAL, "127.0.0.1", True, True), (LOCAL, None, True, True), (LOCAL, "10.1.2.3", False, True),
    (REQUIRED, "127.0.0.1", False, True), (REQUIRED, None, False, True),
    (REQUIRED, "10.1.2.3", True, True),
    (OFF, "10.1.2.3", False, False), (OFF, "10.1.2.3", True, False),
])
def test_when_a_token_is_needed(mode, host, proxied, needed):
    assert auth.needs_token(mode, host, proxied) is needed


# -- the token -----------------------------------------------------------------------------
def test_tokens_are_the_prefix_and_32_random_bytes_in_base64url():
    tokens = {auth.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert auth.TOKEN_RE.fullmatch(token), token
        assert len(token) == 4 + 43


def test_the_digest_is_the_sha256_of_the_token():
    token = auth.new_token()
    assert auth.digest(token) == hashlib.sha256(token.encode()).hexdigest()
    assert auth.digest(token) != auth.digest(token[:-1] + "A" if token[-1] != "A" else token[:-1] + "B")


@pytest.mark.parametrize("name", ["ci", "a.b:c-d_e", "n" * 128])
def test_token_names(name):
    assert auth.check_token_name(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a/b", "n" * 129, None, 3, "é"])
def test_bad_token_names(name):
    with pytest.raises(InvalidInput):
        auth.check_token_name(name)


def test_redact_removes_query_tokens_and_anything_shaped_like_a_token():
    token = auth.new_token()
    line = (f'"GET /events/c/ch/stream?after=0&access_token={token}&x=1 HTTP/1.1" 200 - '
            f'"https://app/?ACCESS_TOKEN=secret" "agent" {token}')
    redacted = auth.redact(line)
    assert token not in redacted and "secret" not in redacted
    assert "after=0&access_token=[redacted]&x=1" in redacted
    assert auth.redact("GET /events/c/ch?peek=1") == "GET /events/c/ch?peek=1"
