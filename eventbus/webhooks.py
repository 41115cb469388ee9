"""Webhook delivery: claims subscriptions, POSTs their events, signs, retries.

Each process runs one :class:`WebhookService`.  Every ``lease/3`` seconds it
renews its leases and claims the free ones (see :mod:`eventbus.webhookstore`
for why a lease row and not an advisory lock); for each subscription it owns
it runs one delivery loop per channel.  A loop reads the events after its
cursor with :meth:`Store.page`, POSTs them one at a time and moves the cursor
only after a 2xx, so delivery is in id order and at least once.  An idle loop
sleeps until :meth:`Notifier.watch` tells it about a publish: delivery is
woken by LISTEN/NOTIFY, never by polling.

Requests carry Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``).  They go out through an agent
whose endpoints resolve the host themselves, refuse non-public addresses
(unless ``--webhook-allow-private``) and connect to exactly the address they
checked, so a DNS answer that changes between check and connect cannot point
a webhook at the inside network.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import random
import secrets
import socket
from http.cookiejar import CookieJar
from typing import Any, Optional
from urllib.parse import urlsplit

import hyperlink
import treq
from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import defer, error, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from eventbus.errors import BadRequest, Unavailable
from eventbus.model import MAX_ID, Event, render_event
from eventbus.notifier import Notifier
from eventbus.store import Store
from eventbus.webhookstore import ALL_CHANNELS, Claimed, Start, SubscriptionState, WebhookStore

log = Logger()

#: A delivery attempt (resolve, connect, send, response headers) gets this long.
REQUEST_TIMEOUT_S = 10.0
RESOLVE_TIMEOUT_S = 5.0
#: Delays after the 1st, 2nd, ... failure of one event; the last one repeats.
BACKOFF_S = (1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)
#: Each delay is multiplied by a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.2
DEFAULT_DISABLE_AFTER_S = 86400.0
#: How long a claim on a subscription holds without renewal; renewed every third of it.
DEFAULT_LEASE_S = 15.0
#: Wait before a delivery loop retries after the database was away.
DB_RETRY_S = 1.0
#: Wait before a delivery loop retries after an unexpected error.
ERROR_RETRY_S = 5.0
#: Events read from the store per round trip.
BATCH = 100
#: Response bodies are read (and dropped) up to this size.
MAX_RESPONSE_BODY = 64 * 1024
MAX_URL_LEN = 2048
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
#: Key sizes the Standard Webhooks specification allows.
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
USER_AGENT = b"eventbus-webhooks/0.1"

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The webhook's host is (or resolves to) an address we may not connect to."""


# -- secrets and signatures ------------------------------------------------------
def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the decoded bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise BadRequest(f"secret must be {SECRET_PREFIX!r} followed by base64 of"
                         f" {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"secret is not {SECRET_PREFIX!r} followed by valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise BadRequest(f"secret must encode {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes,"
                         f" got {len(key)}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: HMAC-SHA256 over ``id.timestamp.body``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


# -- URLs and addresses ----------------------------------------------------------
def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable webhook URL; 400 otherwise."""
    if len(url) > MAX_URL_LEN:
        raise BadRequest(f"url is longer than {MAX_URL_LEN} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise BadRequest("url must be ASCII (punycode, percent-encoding) without"
                         " spaces or control characters")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
        parsed = hyperlink.EncodedURL.from_text(url)
        if host and not _is_ip(host):
            # What the delivery client does to every URL; a host it cannot
            # encode (a_b, a..b) could never be delivered to.
            parsed.to_uri()
    except ValueError as e:
        raise BadRequest(f"url is not a valid URL: {e}") from None
    if scheme not in ("http", "https"):
        raise BadRequest("url must be an http or https URL")
    if not host:
        raise BadRequest("url has no host")
    if ":" in host:
        # treq/hyperlink cannot encode IPv6 literal hosts for the request,
        # so such a subscription could never be delivered.
        raise BadRequest("url with an IPv6 literal host is not supported; use a host name")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("url must not contain credentials")
    return scheme, host, port or (443 if scheme == "https" else 80)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refusal(address: str) -> Optional[str]:
    """Why we may not connect to this IP address without --webhook-allow-private."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    candidates: list[Any] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 addresses carried inside IPv6 ones reach the IPv4 network.
        candidates += [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    for candidate in candidates:
        if candidate is not None and (not candidate.is_global or candidate.is_multicast):
            return f"{address} is not a public address"
    return None


def resolve(reactor: Any, host: str, port: int) -> defer.Deferred:
    """The IP addresses of ``host`` (a name or a literal), as strings, in order."""
    result: defer.Deferred = defer.Deferred()
    found: list[str] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution: Any) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            if address.host not in found:
                found.append(address.host)

        def resolutionComplete(self) -> None:
            if not result.called:
                result.callback(found)

    reactor.nameResolver.resolveHostName(Receiver(), host, port)
    return result.addTimeout(RESOLVE_TIMEOUT_S, reactor)


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """Resolves, checks every address, then connects to a checked one."""

    def __init__(self, reactor: Any, scheme: bytes, host: str, port: int,
                 allow_private: bool) -> None:
        self.reactor = reactor
        self.scheme = scheme
        self.host = host
        self.port = port
        self.allow_private = allow_private

    def connect(self, factory: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        addresses = await resolve(self.reactor, self.host, self.port)
        if not addresses:
            raise AddressRefused(f"{self.host} does not resolve")
        if not self.allow_private:
            for address in addresses:
                reason = refusal(address)
                if reason:
                    raise AddressRefused(f"refused to connect to {self.host}: {reason}")
        failure: Optional[Exception] = None
        for address in addresses:
            cls = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint: Any = cls(self.reactor, address, self.port, timeout=REQUEST_TIMEOUT_S)
            if self.scheme == b"https":
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
            try:
                return await endpoint.connect(factory)
            except defer.CancelledError:
                raise
            except Exception as e:
                failure = e
        assert failure is not None
        raise failure


@implementer(IAgentEndpointFactory)
class _CheckedEndpointFactory:
    def __init__(self, reactor: Any, allow_private: bool) -> None:
        self.reactor = reactor
        self.allow_private = allow_private

    def endpointForURI(self, uri: Any) -> _CheckedEndpoint:
        return _CheckedEndpoint(self.reactor, uri.scheme, uri.host.decode("ascii"),
                                uri.port, self.allow_private)


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


# -- the service ---------------------------------------------------------------
class WebhookService(service.Service):
    """Delivers the subscriptions this process holds a lease on."""

    name = "webhooks"

    def __init__(self, reactor: Any, store: Store, notifier: Notifier, *,
                 disable_after: float = DEFAULT_DISABLE_AFTER_S,
                 allow_private: bool = False, retry_scale: float = 1.0,
                 lease: float = DEFAULT_LEASE_S) -> None:
        self.reactor = reactor
        self.store = store
        self.subscriptions = WebhookStore(store)
        self.notifier = notifier
        self.disable_after = disable_after
        self.allow_private = allow_private
        self.retry_scale = retry_scale
        self.lease = lease
        #: Names this process in ``owner`` columns (and in the status).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # One connection per attempt: every attempt resolves and checks the
        # host again, and no attempt fails on a kept-alive connection that the
        # receiver closed meanwhile (HTTP/1.0 servers close after each answer
        # without saying so, which Twisted's pool does not notice in time).
        agent = Agent.usingEndpointFactory(
            reactor, _CheckedEndpointFactory(reactor, allow_private),
            pool=_QuietPool(reactor, persistent=False))
        self.http = HTTPClient(agent, cookiejar=_NoCookies())
        self._owned: dict[int, _Owned] = {}
        self._scanner: Optional[task.LoopingCall] = None
        self._scanning: Optional[defer.Deferred] = None
        self._rescan = False

    # -- for the API -------------------------------------------------------------
    async def create(self, context: str, channel: str, url: str, secret: Optional[str],
                     start: Start) -> tuple[SubscriptionState, str]:
        """Validate the URL (and its addresses) and the secret, store, start delivering."""
        _, host, port = parse_url(url)
        if secret is None:
            secret = new_secret()
        secret_key(secret)
        if not self.allow_private:
            await self._check_host(host, port)
        state = await self.subscriptions.create(context, channel, url, secret, start)
        self.scan_soon()
        return state, secret

    async def states(self, sid: Optional[int] = None) -> list[SubscriptionState]:
        return await self.subscriptions.states(sid)

    async def delete(self, sid: int) -> bool:
        deleted = await self.subscriptions.delete(sid)
        if deleted and sid in self._owned:
            self._drop(sid)
        return deleted

    async def enable(self, sid: int) -> bool:
        enabled = await self.subscriptions.enable(sid)
        if enabled:
            self.scan_soon()
        return enabled

    async def _check_host(self, host: str, port: int) -> None:
        try:
            addresses = await resolve(self.reactor, host, port)
        except defer.TimeoutError:
            raise BadRequest(f"url refused: {host} did not resolve within"
                             f" {RESOLVE_TIMEOUT_S:g} s") from None
        if not addresses:
            raise BadRequest(f"url refused: {host} does not resolve")
        for address in addresses:
            reason = refusal(address)
            if reason:
                raise BadRequest(f"url refused: {host} resolves to {address}, which is not"
                                 " a public address (the server allows it only with"
                                 " --webhook-allow-private)")

    # -- life cycle --------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._scanner = task.LoopingCall(self.scan_soon)
        self._scanner.clock = self.reactor
        self._scanner.start(self.lease / 3, now=True)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._scanner is not None and self._scanner.running:
            self._scanner.stop()
        if self._scanning is not None:
            await self._scanning
        for sid in list(self._owned):
            self._drop(sid)
        try:
            await self.subscriptions.release(self.owner)
        except Exception as e:
            log.warn("could not release webhook leases ({error}); they expire in"
                     " {lease} s", error=e, lease=self.lease)

    # -- claiming ------------------------------------------------------------------
    def scan_soon(self) -> None:
        """Renew and claim leases now (or right after the scan in progress)."""
        if not self.running:
            return
        if self._scanning is not None:
            self._rescan = True
            return
        self._scanning = defer.ensureDeferred(self._scan_while_asked())

    async def _scan_while_asked(self) -> None:
        try:
            while self.running:
                self._rescan = False
                try:
                    await self._scan()
                except Unavailable as e:
                    log.warn("webhook lease renewal failed: {error}", error=e)
                except Exception:
                    log.failure("webhook lease renewal failed")
                if not self._rescan:
                    break
        finally:
            self._scanning = None

    async def _scan(self) -> None:
        claimed = await self.subscriptions.claim(self.owner, self.lease)
        if not self.running:
            return
        held = {c.id: c for c in claimed}
        for sid in list(self._owned):
            if sid not in held:
                log.info("no longer delivering webhook subscription {sid}", sid=sid)
                self._drop(sid)
        for sid, sub in held.items():
            if sid not in self._owned:
                log.info("delivering webhook subscription {sid} ({context}/{channel})",
                         sid=sid, context=sub.context, channel=sub.channel)
                self._owned[sid] = owned = _Owned(self, sub)
                owned.start()

    def _drop(self, sid: int) -> None:
        owned = self._owned.pop(sid, None)
        if owned is not None:
            owned.stop()

    def lost(self, sid: int) -> None:
        """A write found the subscription not ours (taken over, deleted or disabled).

        Called from inside a delivery loop: the drop happens on the next
        reactor turn, after that loop has returned.
        """
        self.reactor.callLater(0, self._drop, sid)

    # -- delivering ----------------------------------------------------------------
    def retry_delay(self, failures: int) -> float:
        base = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
        return base * self.retry_scale * random.uniform(1 - JITTER, 1 + JITTER)

    async def attempt(self, url: str, key: bytes, msg_id: str,
                      body: bytes) -> tuple[Optional[int], Optional[str]]:
        """POST one event once: (status, None) on a 2xx, else (status or None, error)."""
        timestamp = int(self.reactor.seconds())
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [USER_AGENT],
            b"webhook-id": [msg_id.encode()],
            b"webhook-timestamp": [str(timestamp).encode()],
            b"webhook-signature": [sign(key, msg_id, timestamp, body).encode()],
        }
        try:
            # Inside the try: a request that cannot even be built is a failed
            # attempt like any other (counted, shown, disabled in the end).
            request = self.http.request("POST", url, data=body, headers=headers,
                                        allow_redirects=False, unbuffered=True)
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


class _Owned:
    """A subscription this process holds: its watch and one loop per channel."""

    def __init__(self, service: WebhookService, sub: Claimed) -> None:
        self.service = service
        self.sub = sub
        self.key = secret_key(sub.secret)
        self.wildcard = sub.channel == ALL_CHANNELS
        self.loops: dict[str, _ChannelLoop] = {}
        self._unwatch: Any = None
        self._discovering: Optional[defer.Deferred] = None
        self.stopped = False

    def start(self) -> None:
        self._unwatch = self.service.notifier.watch(
            self.sub.context, None if self.wildcard else self.sub.channel, self._woken)
        if self.wildcard:
            self._discover()
        else:
            self._loop(self.sub.channel)

    def stop(self) -> None:
        self.stopped = True
        if self._unwatch is not None:
            self._unwatch()
        if self._discovering is not None and not self._discovering.called:
            self._discovering.cancel()
        for loop in self.loops.values():
            loop.stop()

    def _woken(self, context: str, channel: Optional[str], head: Optional[int]) -> None:
        # head 0 announces no event (a durable consumer's state changed).
        if self.stopped or head == 0:
            return
        if channel is None:  # after a LISTEN outage: anything may have changed
            for loop in self.loops.values():
                loop.poke()
            if self.wildcard:
                self._discover()
        else:
            self._loop(channel).poke()

    def _loop(self, channel: str) -> "_ChannelLoop":
        loop = self.loops.get(channel)
        if loop is None:
            loop = self.loops[channel] = _ChannelLoop(self, channel)
            loop.start()
        return loop

    def _discover(self) -> None:
        """Start loops for the channels of a '*' subscription that have work."""
        if self._discovering is None or self._discovering.called:
            self._discovering = defer.ensureDeferred(self._discover_until_done())
            self._discovering.addErrback(lambda f: f.trap(defer.CancelledError))

    async def _discover_until_done(self) -> None:
        while not self.stopped:
            try:
                channels = await self.service.subscriptions.pending_channels(
                    self.sub.id, self.sub.context)
            except Exception as e:
                log.warn("listing channels for webhook subscription {sid} failed:"
                         " {error}", sid=self.sub.id, error=e)
                await task.deferLater(self.service.reactor, DB_RETRY_S, lambda: None)
                continue
            for channel in channels:
                self._loop(channel)
            return


class _ChannelLoop:
    """Delivers one channel of one subscription, event after event."""

    def __init__(self, owned: _Owned, channel: str) -> None:
        self.owned = owned
        self.channel = channel
        self._dirty = True
        self._wake: Optional[defer.Deferred] = None
        self._task: Optional[defer.Deferred] = None
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
        reactor = self.owned.service.reactor
        while not self._stopped:
            try:
                await self._deliver_channel()
                return
            except Unavailable as e:
                log.warn("webhook delivery of {sid}/{channel} waits for the database:"
                         " {error}", sid=self.owned.sub.id, channel=self.channel, error=e)
                await task.deferLater(reactor, DB_RETRY_S, lambda: None)
            except defer.CancelledError:
                raise
            except Exception:
                log.failure("webhook delivery of {sid}/{channel} failed; retrying",
                            sid=self.owned.sub.id, channel=self.channel)
                await task.deferLater(reactor, ERROR_RETRY_S, lambda: None)

    async def _deliver_channel(self) -> None:
        """Deliver until the subscription is lost or disabled (returns) or forever."""
        service, sub = self.owned.service, self.owned.sub
        cursor = await service.subscriptions.cursor(sub.id, self.channel, service.owner)
        if cursor is None:
            service.lost(sub.id)
            return
        while not self._stopped:
            self._dirty = False
            events = await service.store.page(sub.context, self.channel, cursor, MAX_ID,
                                              BATCH)
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
            status, problem = await service.attempt(sub.url, self.owned.key, msg_id, body)
            if problem is None:
                assert status is not None
                if await service.subscriptions.delivered(sub.id, self.channel,
                                                         service.owner, event.id, status):
                    return True
                service.lost(sub.id)
                return False
            counted = await service.subscriptions.failed(sub.id, self.channel,
                                                         service.owner, status, problem)
            if counted is None:
                service.lost(sub.id)
                return False
            failures, failing_for = counted
            if failing_for > service.disable_after:
                reason = (f"disabled after failing for {failing_for:.0f} s ({failures}"
                          f" attempts at {self.channel} event {event.id}; the limit is"
                          f" {service.disable_after:g} s); last error: {problem}")
                log.warn("webhook subscription {sid}: {reason}", sid=sub.id, reason=reason)
                await service.subscriptions.disable(sub.id, service.owner, reason)
                service.lost(sub.id)
                return False
            delay = service.retry_delay(failures)
            log.info("webhook {msg_id} failed ({problem}); attempt {n} in {delay:.3g} s",
                     msg_id=msg_id, problem=problem, n=failures + 1, delay=delay)
            await task.deferLater(service.reactor, delay, lambda: None)
        return False
