"""Webhook pieces without a database or a network: signing, address policy,
the checked endpoint, the request timeout, the retry schedule."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from eventbus.config import DEFAULTS
from eventbus.errors import InvalidInput
from eventbus.model import Claimed
from eventbus.notifier import Notifier
from eventbus.storage.notify import decode
from eventbus.webhooks.addresses import AddressRefused, CheckedEndpoint, parse_url, refusal
from eventbus.webhooks.delivery import BACKOFF_S, JITTER, OwnedSubscription, retry_delay
from eventbus.webhooks.sender import REQUEST_TIMEOUT_S, Sender
from eventbus.webhooks.service import WebhookService
from eventbus.webhooks.signing import new_secret, secret_key, sign


def webhook_service(clock, subscriptions, events, notifier) -> WebhookService:
    return WebhookService(
        clock, subscriptions, events, notifier,
        disable_after=DEFAULTS.webhook_disable_after, allow_private=False,
        retry_scale=1.0, lease=DEFAULTS.webhook_lease,
        concurrency=DEFAULTS.webhook_concurrency,
        channel_concurrency=DEFAULTS.webhook_subscription_concurrency,
    )


def test_signature_matches_the_standard_webhooks_test_vector():
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_generated_secrets_are_whsec_base64_of_32_random_bytes():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_")
    assert len(secret_key(a)) == 32
    for bad in ["", "secret", "whsec_", "whsec_not base64!", "whsec_c2hvcnQ=",
                "whsec_" + base64.b64encode(b"x" * 65).decode()]:
        with pytest.raises(InvalidInput):
            secret_key(bad)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
    "fc00::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::1",
    "64:ff9b::a00:1", "2001:db8::1",
])
def test_non_public_addresses_are_refused(address):
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert refusal(address) is None


def test_url_parsing_gives_scheme_host_and_port():
    assert parse_url("https://Example.com/x?y=1") == ("https", "example.com", 443)
    # IPv6 literals cannot be encoded by the delivery client: refused up front.
    with pytest.raises(InvalidInput, match="IPv6"):
        parse_url("http://[2001:db8::1]:8080/")
    assert parse_url("HTTP://h") == ("http", "h", 80)


class _Resolver:
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    def resolveHostName(self, receiver, host, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        receiver.resolutionBegan(None)
        for a in self.addresses:
            cls = IPv6Address if ":" in a else IPv4Address
            receiver.addressResolved(cls("TCP", a, portNumber))
        receiver.resolutionComplete()


def _endpoint(addresses: list[str], allow_private: bool = False,
              scheme: bytes = b"http") -> tuple[MemoryReactorClock, CheckedEndpoint]:
    reactor = MemoryReactorClock()
    reactor.nameResolver = _Resolver(addresses)
    return reactor, CheckedEndpoint(reactor, scheme, "hooks.example", 8080, allow_private)


def test_delivery_refuses_a_host_that_now_resolves_to_a_private_address():
    # Any non-public address among the answers refuses the whole host.
    reactor, endpoint = _endpoint(["93.184.215.14", "10.0.0.7"])
    d = endpoint.connect(Factory.forProtocol(Protocol))
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(AddressRefused)
    assert "10.0.0.7" in str(failure[0].value)
    assert reactor.tcpClients == []


def test_delivery_connects_to_exactly_the_checked_address():
    reactor, endpoint = _endpoint(["93.184.215.14"], scheme=b"https")
    endpoint.connect(Factory.forProtocol(Protocol))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("93.184.215.14", 8080)]
    reactor, endpoint = _endpoint(["127.0.0.1"], allow_private=True)
    endpoint.connect(Factory.forProtocol(Protocol))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 8080)]


class _SilentHTTP:
    """An HTTP client whose requests are never answered."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def request(self, method, url, **kwargs):
        self.calls.append((method, url, kwargs))
        return defer.Deferred()


def test_an_attempt_without_an_answer_fails_after_10_s_with_a_signed_request():
    clock = Clock()
    clock.advance(1_700_000_000)
    service = Sender(clock, allow_private=False, concurrency=DEFAULTS.webhook_concurrency)
    service.http = _SilentHTTP()  # type: ignore[assignment]
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    result = []
    defer.ensureDeferred(service.attempt("http://h/x", key, "1/c/ch/7", b"{}")).addCallback(
        result.append)
    clock.advance(REQUEST_TIMEOUT_S - 0.1)
    assert result == []
    clock.advance(0.2)
    assert result == [(None, f"no response within {REQUEST_TIMEOUT_S:g} s")]
    ((method, url, kwargs),) = service.http.calls
    headers = {k.decode().lower(): v[0].decode() for k, v in kwargs["headers"].getAllRawHeaders()}
    assert method == "POST" and kwargs["allow_redirects"] is False
    assert headers["webhook-id"] == "1/c/ch/7"
    assert headers["webhook-timestamp"] == "1700000000"
    mac = hmac.new(key, b"1/c/ch/7.1700000000.{}", hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()


def test_retry_delays_grow_with_jitter_and_scale():
    for failures in range(1, 10):
        nominal = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1] * 0.5
        for _ in range(20):
            assert (1 - JITTER) * nominal <= retry_delay(failures, 0.5) <= (1 + JITTER) * nominal
    assert BACKOFF_S == (1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)


class _RefusingHTTP:
    """An HTTP client that cannot even build the request (as treq raises for
    a host its IDNA encoder refuses, an IPv6 literal for one)."""

    def request(self, method, url, **kwargs):
        raise ValueError("Codepoint U+003A at position 1 of '::1' not allowed")


def test_an_attempt_that_cannot_be_sent_is_a_counted_failure_not_a_crash():
    service = Sender(Clock(), allow_private=False, concurrency=DEFAULTS.webhook_concurrency)
    service.http = _RefusingHTTP()  # type: ignore[assignment]
    result = []
    defer.ensureDeferred(service.attempt("http://[2606:4700::1111]/", b"k" * 32, "1/c/ch/1",
                                         b"{}")).addBoth(result.append)
    assert result == [(None, "ValueError: Codepoint U+003A at position 1 of '::1' not allowed")]


@pytest.mark.parametrize("url", ["http://a_b/", "http://a..b/x", "http://%41/", "http://-a-/",
                                 "https://" + "a" * 300 + ".example/"])
def test_a_host_the_delivery_client_cannot_encode_is_refused_at_once(url):
    with pytest.raises(InvalidInput):
        parse_url(url)


class _Subscriptions:
    """The webhook store's deliverer side, for one subscription with no work."""

    def __init__(self) -> None:
        self.cursors: list[str] = []

    async def pending_channels(self, sid, context):
        return []

    async def cursor(self, sid, channel, owner):
        self.cursors.append(channel)
        return 0


class _EmptyStore:
    async def page(self, *args, **kwargs):
        return []


def test_a_consumer_state_change_starts_no_delivery_loop():
    """Head 0 (an ack, nack, retry or PUT of a durable consumer) announces
    no event: a '*' subscription must not grow a loop, and a cursor row, for
    every channel name a consumer is configured on."""
    clock = Clock()
    notifier = Notifier(clock, None)  # type: ignore[arg-type]
    subs = _Subscriptions()
    service = webhook_service(clock, subs, _EmptyStore(), notifier)
    owned = OwnedSubscription(
        service, Claimed(id=1, context="ctx", channel="*", url="http://h/", secret=new_secret()))
    owned.start()
    notifier.on_notification(decode("ctx/no-events-here/0"))
    assert owned.loops == {} and subs.cursors == []
    notifier.notify("ctx", "published", 1)
    assert list(owned.loops) == ["published"] and subs.cursors == ["published"]
    owned.stop()
    assert not notifier._contexts and not notifier._channels
