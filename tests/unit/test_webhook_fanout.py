"""Bounded webhook fan-out without a database or a network.

The real sender, agent and connection pool run over a memory reactor whose
connections the test completes and answers by hand; delivery turns run
against fake stores and a fake sender whose answers the test gives.
"""
from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure

from eventbus.config import DEFAULTS, Options
from eventbus.errors import InvalidInput
from eventbus.model import Claimed, Event
from eventbus.notifier import Notifier
from eventbus.webhooks.addresses import parse_url
from eventbus.webhooks.delivery import TURN_S, OwnedSubscription
from eventbus.webhooks.pool import FileLimit, files_reserve
from eventbus.webhooks.sender import FILES_WAIT_S, REQUEST_TIMEOUT_S, Sender
from eventbus.webhooks.service import WebhookService
from eventbus.webhooks.signing import new_secret

KEY = b"k" * 32
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class _Resolver:
    def resolveHostName(self, receiver, host, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", "127.0.0.1", portNumber))
        receiver.resolutionComplete()


class _Net:
    """A real Sender on a memory reactor; the test plays the receivers."""

    def __init__(self, concurrency: int = 4) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.nameResolver = _Resolver()
        self.sender = Sender(self.reactor, allow_private=True, concurrency=concurrency)
        self.connections: list[tuple[Any, StringTransport]] = []

    def attempt(self, url: str = "http://receiver.test/hook", msg_id: str = "1/c/ch/1") -> list:
        result: list = []
        d = defer.ensureDeferred(self.sender.attempt(url, KEY, msg_id, b'{"id": 1}'))
        d.addBoth(result.append)
        return result

    def accept(self) -> tuple[Any, StringTransport]:
        """Complete the next connection the sender asked the reactor for."""
        host, port, factory, *_ = self.reactor.tcpClients[len(self.connections)]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return protocol, transport

    @staticmethod
    def msg_id(transport: StringTransport) -> str:
        """The webhook-id of the last request written to ``transport``."""
        head = transport.value().rsplit(b"POST ", 1)[1].split(b"\r\n\r\n")[0].decode()
        (value,) = [line.split(": ", 1)[1] for line in head.split("\r\n")
                    if line.lower().startswith("webhook-id:")]
        return value

    def open_sockets(self) -> int:
        """Sockets the sender asked for and that were not closed."""
        closed = sum(1 for _, t in self.connections if t.disconnecting or t.disconnected)
        return len(self.reactor.tcpClients) - closed


# -- item 2: the time limit says what happened ------------------------------------------
def test_a_receiver_that_never_answers_is_no_response_within_10_s_not_a_cancelled_error():
    net = _Net()
    result = net.attempt()
    protocol, transport = net.accept()
    assert transport.value().startswith(b"POST /hook HTTP/1.1")
    net.reactor.advance(REQUEST_TIMEOUT_S - 0.1)
    assert result == []
    net.reactor.advance(0.2)
    assert result == [(None, f"no response within {REQUEST_TIMEOUT_S:g} s")]
    assert transport.disconnected  # the connection is given up, not reused


def test_an_attempt_is_timed_from_when_it_gets_its_turn_not_while_it_waits():
    net = _Net(concurrency=1)
    first = net.attempt(msg_id="1/c/a/1")
    second = net.attempt(msg_id="1/c/b/1")
    protocol, transport = net.accept()
    net.reactor.advance(REQUEST_TIMEOUT_S - 1)
    protocol.dataReceived(OK)
    assert first == [(200, None)]
    # The second waited 9 s for the only slot; it now has its own 10 s.
    assert net.msg_id(transport) == "1/c/b/1"
    net.reactor.advance(REQUEST_TIMEOUT_S - 1)
    assert second == []
    protocol.dataReceived(OK)
    assert second == [(200, None)]


# -- keep-alive ---------------------------------------------------------------------------
def test_connections_to_the_same_receiver_are_reused():
    net = _Net()
    for n in range(3):
        result = net.attempt(msg_id=f"1/c/ch/{n}")
        if n == 0:
            protocol, transport = net.accept()
        protocol.dataReceived(OK)
        assert result == [(200, None)]
    assert len(net.reactor.tcpClients) == 1
    assert transport.value().count(b"POST /hook") == 3


def test_a_request_failing_on_a_reused_connection_before_any_answer_goes_again_on_a_new_one():
    net = _Net()
    first = net.attempt(msg_id="1/c/ch/1")
    protocol, transport = net.accept()
    protocol.dataReceived(OK)
    assert first == [(200, None)]
    second = net.attempt(msg_id="1/c/ch/2")
    assert transport.value().count(b"POST /hook") == 2
    # The receiver had closed the idle connection: no byte of an answer.
    protocol.connectionLost(Failure(ConnectionDone()))
    assert second == [] and len(net.reactor.tcpClients) == 2
    fresh, fresh_transport = net.accept()
    sent_again = fresh_transport.value()
    assert net.msg_id(fresh_transport) == "1/c/ch/2" and sent_again.endswith(b'{"id": 1}')
    fresh.dataReceived(OK)
    assert second == [(200, None)]


def test_a_failure_after_part_of_an_answer_or_on_a_new_connection_is_a_failed_attempt():
    net = _Net()
    result = net.attempt()
    protocol, _ = net.accept()
    protocol.connectionLost(Failure(ConnectionDone()))  # a new connection: not retried
    assert result == [(None, "connection closed before a complete response")]
    first = net.attempt()
    protocol, _ = net.accept()
    protocol.dataReceived(OK)
    assert first == [(200, None)]
    partial = net.attempt()
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Le")  # an answer had begun
    protocol.connectionLost(Failure(ConnectionDone()))
    assert partial == [(None, "connection closed before a complete response")]
    assert len(net.reactor.tcpClients) == 2


def test_the_pool_closes_an_idle_connection_before_opening_one_beyond_its_limit():
    net = _Net(concurrency=2)
    for host in ("a", "b"):
        result = net.attempt(url=f"http://{host}.test/")
        protocol, _ = net.accept()
        protocol.dataReceived(OK)
        assert result == [(200, None)]
    assert net.open_sockets() == 2  # both idle, kept for reuse
    result = net.attempt(url="http://c.test/")
    # The oldest idle one (a) is being closed; no third socket until it is.
    (a, a_transport), (b, b_transport) = net.connections
    assert a_transport.disconnecting and not b_transport.disconnecting
    assert len(net.reactor.tcpClients) == 2
    a.connectionLost(Failure(ConnectionDone()))
    assert len(net.reactor.tcpClients) == 3 and net.open_sockets() == 2
    c, _ = net.accept()
    c.dataReceived(OK)
    assert result == [(200, None)]
    assert net.sender.pool.peak == 2


def test_attempts_beyond_the_process_bound_wait_their_turn_first_come_first_served():
    net = _Net(concurrency=2)
    results = [net.attempt(url=f"http://h{n}.test/", msg_id=f"1/c/ch/{n}") for n in range(5)]
    assert len(net.reactor.tcpClients) == 2
    order = []
    for _ in range(5):
        protocol, transport = net.accept()
        order.append(net.msg_id(transport))
        assert net.open_sockets() <= 2
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
    assert order == [f"1/c/ch/{n}" for n in range(5)]
    assert all(r == [(200, None)] for r in results)
    assert net.sender.pool.peak == 2


# -- near the open-files limit ---------------------------------------------------------------
def test_near_the_open_files_limit_an_attempt_waits_without_failing_and_idle_connections_close():
    net = _Net()
    files = {"open": 10}
    net.sender.files = FileLimit(net.reactor, own=lambda: net.sender.pool.sockets,
                                 count=lambda: files["open"], limit=lambda: 1024)
    first = net.attempt()
    protocol, transport = net.accept()
    protocol.dataReceived(OK)
    assert first == [(200, None)]
    files["open"] = 1024 - files_reserve(1024) + 1  # clients took the rest
    net.reactor.advance(1)
    waiting = net.attempt()
    assert transport.disconnecting  # the idle connection gives its descriptor back
    net.reactor.advance(REQUEST_TIMEOUT_S * 3)
    assert waiting == [] and len(net.reactor.tcpClients) == 1  # waits; never a failure
    files["open"] = 100
    net.reactor.advance(FILES_WAIT_S)
    protocol, _ = net.accept()
    protocol.dataReceived(OK)
    assert waiting == [(200, None)]


# -- turns within a subscription ---------------------------------------------------------------
class _Store:
    """Channels (their heads) and the subscriptions' cursors, in memory."""

    def __init__(self, channels: dict[str, int]) -> None:
        self.heads = channels
        self.by_sub: dict[tuple[int, str], int] = {}

    def cursors(self, sid: int = 1) -> dict[str, int]:
        return {ch: c for (s, ch), c in self.by_sub.items() if s == sid}

    async def pending_channels(self, sid, context):
        return [ch for ch, head in self.heads.items() if head > self.by_sub.get((sid, ch), 0)]

    async def cursor(self, sid, channel, owner):
        return self.by_sub.setdefault((sid, channel), 0), 0

    async def bounds(self, context, channel):
        return 1, self.heads.get(channel, 0)

    async def delivered(self, sid, channel, owner, event_id, status):
        self.by_sub[sid, channel] = event_id
        return True

    async def failed(self, sid, channel, owner, status, error):
        return 1, 0.0

    async def page(self, context, channel, after, upto, limit):
        last = min(self.heads.get(channel, 0), after + limit)
        return [Event(id=i, timestamp=0.0, issuer="t", payload="{}") for i in range(after + 1, last + 1)]


class _HeldSender:
    """Attempts wait until the test answers them, oldest first."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, defer.Deferred]] = []
        self.peak = 0

    def attempt(self, url, key, msg_id, body, missed=0):
        d: defer.Deferred = defer.Deferred()
        self.pending.append((msg_id, d))
        self.peak = max(self.peak, len(self.pending))
        return d

    def answer(self, index: int = 0, status: int = 200) -> str:
        msg_id, d = self.pending.pop(index)
        d.callback((status, None) if status < 300 else (status, f"HTTP {status}"))
        return msg_id


def _service(clock, store, sender, concurrency=DEFAULTS.webhook_concurrency,
             channel_concurrency=4) -> WebhookService:
    notifier = Notifier(clock, None)  # type: ignore[arg-type]
    service = WebhookService(
        clock, store, store, notifier, disable_after=DEFAULTS.webhook_disable_after,
        allow_private=True, retry_scale=1.0, lease=DEFAULTS.webhook_lease,
        concurrency=concurrency, channel_concurrency=channel_concurrency)
    service.sender = sender  # type: ignore[assignment]
    return service


def _own(service: WebhookService, sid: int = 1, channel: str = "*") -> OwnedSubscription:
    owned = OwnedSubscription(service, Claimed(id=sid, context="ctx", channel=channel,
                                               url="http://h/", secret=new_secret()))
    owned.start()
    return owned


def _owned(clock, store, sender, channel_concurrency=4) -> OwnedSubscription:
    return _own(_service(clock, store, sender, channel_concurrency=channel_concurrency))


def test_channels_of_a_subscription_take_turns_a_few_at_a_time_each_in_order():
    clock = Clock()
    channels = {f"ch{n:02}": 3 for n in range(10)}
    store, sender = _Store(channels), _HeldSender()
    _owned(clock, store, sender)
    delivered: list[tuple[str, int]] = []
    while sender.pending:
        assert len(sender.pending) <= 4
        clock.advance(TURN_S)  # every turn has lasted long enough to give way
        _, _, channel, event_id = sender.answer().split("/")
        delivered.append((channel, int(event_id)))
    assert sender.peak == 4
    assert sorted(delivered) == sorted((ch, i) for ch in channels for i in (1, 2, 3))
    for ch in channels:  # each channel in its own order
        assert [i for c, i in delivered if c == ch] == [1, 2, 3]
    # Fair: no channel got its second event before every channel had its first.
    firsts = [n for n, (_, i) in enumerate(delivered) if i == 1]
    seconds = [n for n, (_, i) in enumerate(delivered) if i == 2]
    assert max(firsts) < min(seconds)
    assert store.cursors() == {ch: 3 for ch in channels}


def test_a_failing_channel_waits_out_its_retry_delay_without_holding_a_turn():
    clock = Clock()
    store, sender = _Store({"bad": 1, "good": 5}), _HeldSender()
    _owned(clock, store, sender, channel_concurrency=1)
    assert [m for m, _ in sender.pending] == ["1/ctx/bad/1"]
    sender.answer(status=500)
    for n in range(1, 6):  # the good channel goes on while bad one waits
        assert [m for m, _ in sender.pending] == [f"1/ctx/good/{n}"]
        sender.answer()
    assert sender.pending == []
    clock.advance(2)  # the first retry delay is about 1 s
    assert [m for m, _ in sender.pending] == ["1/ctx/bad/1"]
    sender.answer()
    assert store.cursors() == {"bad": 1, "good": 5}


def test_the_process_takes_at_most_its_concurrency_in_turns_over_all_subscriptions():
    clock = Clock()
    store, sender = _Store({f"ch{n:02}": 2 for n in range(10)}), _HeldSender()
    service = _service(clock, store, sender, concurrency=6)
    for sid in (1, 2, 3):  # each may have 4 channels in flight: 12 > 6
        _own(service, sid=sid)
    answered = 0
    while sender.pending:
        assert len(sender.pending) <= 6
        sender.answer()
        answered += 1
    assert sender.peak == 6 and answered == 3 * 10 * 2
    assert all(store.cursors(sid) == dict.fromkeys(store.heads, 2) for sid in (1, 2, 3))


def test_a_subscription_with_many_lagging_channels_does_not_starve_another():
    net = _Net(concurrency=4)
    store = _Store({f"ch{n:03}": 1 for n in range(40)} | {"lone": 1})
    service = _service(net.reactor, store, net.sender, concurrency=4)
    _own(service, sid=1)
    _own(service, sid=2, channel="lone")
    sent = []
    while len(sent) < 42:
        protocol, transport = net.accept()
        sent.append(net.msg_id(transport))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
    # The busy subscription has at most 4 attempts queued ahead of the lone one.
    assert sent.index("2/ctx/lone/1") <= 4, sent
    assert store.cursors(2) == {"lone": 1} and len(store.cursors(1)) == 41


# -- options and URLs ------------------------------------------------------------------------
def test_concurrency_options_default_and_refuse_nonsense():
    options = Options()
    options.parseOptions([])
    assert options.settings().webhook_concurrency == 64
    assert options.settings().webhook_subscription_concurrency == 4
    options = Options()
    options.parseOptions(["--webhook-concurrency", "8", "--webhook-subscription-concurrency", "2"])
    assert (options.settings().webhook_concurrency, options.settings().webhook_subscription_concurrency) == (8, 2)
    for args in (["--webhook-concurrency", "0"], ["--webhook-subscription-concurrency", "0"],
                 ["--webhook-concurrency", "100001"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(args)


@pytest.mark.parametrize("url", ["http://h:0/", "https://h:00/x", "http://127.0.0.1:0/",
                                 "http://h:65536/", "http://h:-1/"])
def test_a_url_with_port_0_or_out_of_range_is_refused(url):
    with pytest.raises(InvalidInput, match="port must be from 1 to 65535"):
        parse_url(url)


def test_every_port_from_1_to_65535_is_accepted():
    assert parse_url("http://h:1/")[2] == 1
    assert parse_url("https://h:65535/")[2] == 65535


def test_a_subscription_waiting_for_the_process_holds_no_more_workers_than_queued_channels():
    clock = Clock()
    store, sender = _Store({"a": 1, "b": 1, "c": 1}), _HeldSender()
    service = _service(clock, store, sender, concurrency=1, channel_concurrency=1000)
    owned = _own(service)
    assert [m for m, _ in sender.pending] == ["1/ctx/a/1"]
    # "b" and "c" wait for the process's only turn: a worker each, no more.
    assert len(owned._workers) == 3
    sender.answer()
    sender.answer()
    sender.answer()
    assert store.cursors() == {"a": 1, "b": 1, "c": 1} and owned._workers == set()
