"""Delivering a held subscription: one loop per channel, one POST at a time.

Invariant: for each channel of a subscription the events are POSTed in id
order and the cursor moves past an event only after a 2xx for it, so
delivery is in order and at least once; every cursor write is fenced by the
owner check of :mod:`eventbus.storage.webhooks`, so a process that lost its
lease stops instead of moving a cursor.

An :class:`OwnedSubscription` is a wake-up subscriber of the notifier: a
publish on one of its channels pokes that channel's :class:`ChannelDelivery`
loop, which reads the events after its cursor (:meth:`EventStore.page`),
POSTs them through the :class:`Sender` and, once caught up, sleeps until the
next poke: delivery is woken by LISTEN/NOTIFY, never by polling.  Failed
attempts are retried after :data:`BACKOFF_S` (with jitter); a channel that
has failed for longer than ``--webhook-disable-after`` disables its
subscription.

Requests carry the Standard Webhooks headers (:mod:`.signing`) and go out
through an agent whose endpoints apply the address policy of
:mod:`.addresses` on every attempt.

Layer rule: the webhooks package; no SQL (it goes through the stores), no
HTTP server code.
"""

from __future__ import annotations

import random
from http.cookiejar import CookieJar
from typing import TYPE_CHECKING, Any, cast

import treq
from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers

from eventbus import __version__
from eventbus.model import ALL_CHANNELS, MAX_ID, Claimed, Event, render_event
from eventbus.notifier import Subscriber, Subscription, Wake, WakeKind
from eventbus.retry import retrying, sleep
from eventbus.webhooks.addresses import AddressRefused, CheckedEndpointFactory
from eventbus.webhooks.signing import secret_key, sign

if TYPE_CHECKING:
    from eventbus.webhooks.service import WebhookService

log = Logger()

#: A delivery attempt (resolve, connect, send, response headers) gets this long.
REQUEST_TIMEOUT_S = 10.0
#: Delays after the 1st, 2nd, ... failure of one event; the last one repeats.
BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)
#: Each delay is multiplied by a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
#: Wait before a delivery loop starts over after an unexpected error.
ERROR_RETRY_S = 5.0
#: Events read from the store per round trip.
BATCH = 100
#: Response bodies are read (and dropped) up to this size.
MAX_RESPONSE_BODY = 64 * 1024
USER_AGENT = f"eventbus-webhooks/{__version__}".encode()


def retry_delay(failures: int, scale: float = 1.0) -> float:
    """Seconds before the next attempt after ``failures`` failed ones in a row."""
    base = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
    return base * scale * random.uniform(1 - JITTER, 1 + JITTER)


# -- one attempt -------------------------------------------------------------------
class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line per outgoing connection


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


class _NoCookies(CookieJar):
    """Receivers' cookies are not sent back to them."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


def describe(failure: Failure) -> str:
    """A short human text for a failed attempt, kept in the status."""
    e = failure.value
    if isinstance(e, (ResponseNeverReceived, ResponseFailed)) and e.reasons:
        return describe(e.reasons[0])
    if isinstance(e, defer.TimeoutError):
        return f"no response within {REQUEST_TIMEOUT_S:g} s"
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (error.TimeoutError, error.TCPTimedOutError)):
        return "connection timed out"
    if isinstance(e, (error.ConnectionLost, error.ConnectionDone)):
        return "connection closed before a complete response"
    if isinstance(e, AddressRefused):
        return str(e)
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


class Sender:
    """POSTs signed events, one attempt at a time."""

    def __init__(self, reactor: Any, allow_private: bool) -> None:
        self.reactor = reactor
        # One connection per attempt: every attempt resolves and checks the
        # host again, and no attempt fails on a kept-alive connection that the
        # receiver closed meanwhile (HTTP/1.0 servers close after each answer
        # without saying so, which Twisted's pool does not notice in time).
        agent = Agent.usingEndpointFactory(
            reactor,
            CheckedEndpointFactory(reactor, allow_private),
            pool=_QuietPool(reactor, persistent=False),
        )
        self.http = HTTPClient(agent, cookiejar=cast(Any, _NoCookies()))

    async def attempt(self, url: str, key: bytes, msg_id: str, body: bytes) -> tuple[int | None, str | None]:
        """POST one event once: (status, None) on a 2xx, else (status or None, error)."""
        timestamp = int(self.reactor.seconds())
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"User-Agent": [USER_AGENT],
                b"webhook-id": [msg_id.encode()],
                b"webhook-timestamp": [str(timestamp).encode()],
                b"webhook-signature": [sign(key, msg_id, timestamp, body).encode()],
            }
        )
        try:
            # Inside the try: a request that cannot even be built is a failed
            # attempt like any other (counted, shown, disabled in the end).
            request = self.http.request(
                "POST", url, data=body, headers=headers, allow_redirects=False, unbuffered=True
            )
            request.addTimeout(REQUEST_TIMEOUT_S, self.reactor)
            response = await request
        except defer.CancelledError:  # the loop is being stopped (a timeout is a TimeoutError)
            raise
        except Exception:
            return None, describe(Failure())
        _drain(response, self.reactor)
        if 200 <= response.code < 300:
            return response.code, None
        return response.code, f"HTTP {response.code}"


def _drain(response: Any, reactor: Any) -> None:
    """Read and drop a response body in the background, so the connection is
    closed cleanly; a body that is too large or too slow is cut off."""
    seen = [0]

    def count(data: bytes) -> None:
        seen[0] += len(data)
        if seen[0] > MAX_RESPONSE_BODY:
            raise ValueError("response body too large")

    d = treq.collect(response, count)
    d.addTimeout(REQUEST_TIMEOUT_S, reactor)
    d.addErrback(lambda _: None)


# -- a held subscription -------------------------------------------------------------
class OwnedSubscription(Subscriber):
    """A subscription this process holds: its wake-ups and one loop per channel."""

    def __init__(self, service: WebhookService, sub: Claimed) -> None:
        self.service = service
        self.sub = sub
        self.key = secret_key(sub.secret)
        self.wildcard = sub.channel == ALL_CHANNELS
        self.loops: dict[str, ChannelDelivery] = {}
        self._subscription: Subscription | None = None
        self._discovering: defer.Deferred[None] | None = None
        self.stopped = False

    def start(self) -> None:
        channel = None if self.wildcard else self.sub.channel
        self._subscription = self.service.notifier.subscribe(self.sub.context, channel, self)
        if self.wildcard:
            self._discover()
        else:
            self._loop(self.sub.channel)

    def stop(self) -> None:
        self.stopped = True
        if self._subscription is not None:
            self._subscription.cancel()
        if self._discovering is not None and not self._discovering.called:
            self._discovering.cancel()
        for loop in self.loops.values():
            loop.stop()

    def woken(self, wake: Wake) -> None:
        # A consumer state change announces no event.
        if self.stopped or wake.kind is WakeKind.CHANGED:
            return
        if wake.kind is WakeKind.RESYNC:  # anything may have changed
            for loop in self.loops.values():
                loop.poke()
            if self.wildcard:
                self._discover()
        elif wake.channel is not None:
            self._loop(wake.channel).poke()

    def _loop(self, channel: str) -> ChannelDelivery:
        loop = self.loops.get(channel)
        if loop is None:
            loop = self.loops[channel] = ChannelDelivery(self, channel)
            loop.start()
        return loop

    def _discover(self) -> None:
        """Start loops for the channels of a '*' subscription that have work."""
        if self._discovering is None or self._discovering.called:
            self._discovering = defer.ensureDeferred(self._discover_channels())
            self._discovering.addErrback(lambda f: f.trap(defer.CancelledError))

    async def _discover_channels(self) -> None:
        channels = await retrying(
            self.service.reactor,
            lambda: self.service.subscriptions.pending_channels(self.sub.id, self.sub.context),
            what=f"channel discovery of webhook subscription {self.sub.id}",
        )
        if not self.stopped:
            for channel in channels:
                self._loop(channel)


class ChannelDelivery:
    """Delivers one channel of one subscription, event after event."""

    def __init__(self, owned: OwnedSubscription, channel: str) -> None:
        self.owned = owned
        self.channel = channel
        self._dirty = True
        self._wake: defer.Deferred[None] | None = None
        self._task: defer.Deferred[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self._task = defer.ensureDeferred(self._run())
        self._task.addErrback(self._ended)

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    def poke(self) -> None:
        """New events may exist: read again (now, or after the current read)."""
        self._dirty = True
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    def _ended(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("webhook delivery loop ended", failure)

    async def _run(self) -> None:
        what = f"webhook delivery of {self.owned.sub.id}/{self.channel}"
        while not self._stopped:
            try:
                await retrying(self.owned.service.reactor, self._deliver_channel, what=what)
                return
            except defer.CancelledError:
                raise
            except Exception:
                log.failure("{what} failed; starting over", what=what)
                await sleep(self.owned.service.reactor, ERROR_RETRY_S)

    async def _deliver_channel(self) -> None:
        """Deliver until the subscription is lost or disabled (returns) or forever."""
        service, sub = self.owned.service, self.owned.sub
        cursor = await service.subscriptions.cursor(sub.id, self.channel, service.owner)
        if cursor is None:
            service.lost(sub.id)
            return
        while not self._stopped:
            self._dirty = False
            events = await service.events.page(sub.context, self.channel, cursor, MAX_ID, BATCH)
            if not events:
                if not self._dirty:  # nothing published since the read started
                    self._wake = defer.Deferred()
                    await self._wake
                continue
            for event in events:
                if not await self._deliver(event):
                    return
                cursor = event.id

    async def _deliver(self, event: Event) -> bool:
        """POST one event until a 2xx; False once the subscription is not ours."""
        service, sub = self.owned.service, self.owned.sub
        body = render_event(sub.context, self.channel, event)
        msg_id = f"{sub.id}/{sub.context}/{self.channel}/{event.id}"
        while not self._stopped:
            status, problem = await service.sender.attempt(sub.url, self.owned.key, msg_id, body)
            if problem is None:
                assert status is not None
                if await service.subscriptions.delivered(
                    sub.id, self.channel, service.owner, event.id, status
                ):
                    return True
                service.lost(sub.id)
                return False
            counted = await service.subscriptions.failed(sub.id, self.channel, service.owner, status, problem)
            if counted is None:
                service.lost(sub.id)
                return False
            failures, failing_for = counted
            if failing_for > service.disable_after:
                reason = (
                    f"disabled after failing for {failing_for:.0f} s ({failures}"
                    f" attempts at {self.channel} event {event.id}; the limit is"
                    f" {service.disable_after:g} s); last error: {problem}"
                )
                log.warn("webhook subscription {sid}: {reason}", sid=sub.id, reason=reason)
                await service.subscriptions.disable(sub.id, service.owner, reason)
                service.lost(sub.id)
                return False
            delay = retry_delay(failures, service.retry_scale)
            log.info(
                "webhook {msg_id} failed ({problem}); attempt {n} in {delay:.3g} s",
                msg_id=msg_id,
                problem=problem,
                n=failures + 1,
                delay=delay,
            )
            await sleep(service.reactor, delay)
        return False
