"""Sending one signed event to a receiver: one attempt, bounded per process.

Invariant: at most ``concurrency`` attempts are in flight in the process
(``--webhook-concurrency``), granted first come, first served, and at most
as many sockets to receivers are open (:class:`~.pool.ConnectionPool`).
An attempt waits for its turn, and while the process is near its open-files
limit (:class:`~.pool.FileLimit`), *before* it starts: waiting is never a
failed attempt.  Once started, an attempt that gets no response headers
within :data:`REQUEST_TIMEOUT_S` fails with "no response within 10 s".

Requests carry the Standard Webhooks headers (:mod:`.signing`) and go out
through an agent whose new connections apply the address policy of
:mod:`.addresses`.

Layer rule: the webhooks package; no SQL, no HTTP server code.
"""

from __future__ import annotations

import time
from http.cookiejar import CookieJar
from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from eventbus import __version__
from eventbus.metrics import WebhookMetrics
from eventbus.metrics.values import WEBHOOK_OUTCOMES
from eventbus.retry import sleep
from eventbus.webhooks.addresses import AddressRefused, CheckedEndpointFactory
from eventbus.webhooks.pool import ConnectionPool, FileLimit, files_reserve
from eventbus.webhooks.signing import sign

log = Logger()

#: Sending a request and getting the response headers, once the attempt has
#: its turn, gets this long (resolving and connecting have their own limits,
#: :mod:`.addresses`).
REQUEST_TIMEOUT_S = 10.0
NO_RESPONSE = f"no response within {REQUEST_TIMEOUT_S:g} s"
#: Response bodies are read (and dropped) up to this size.
MAX_RESPONSE_BODY = 64 * 1024
#: While near the open-files limit, look again this often.
FILES_WAIT_S = 0.25
USER_AGENT = f"eventbus-webhooks/{__version__}".encode()
#: How an attempt ended, as counted (:data:`eventbus.metrics.values.WEBHOOK_OUTCOMES`).
SUCCESS, HTTP_ERROR, NETWORK, TIMEOUT, REFUSED = WEBHOOK_OUTCOMES


class _NoCookies(CookieJar):
    """Receivers' cookies are not sent back to them."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


@implementer(IBodyProducer)
class _Body:
    """A request body that can be sent again (on a new connection)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:  # noqa: N802
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _cancelled(failure: Failure) -> bool:
    if failure.check(defer.CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return any(_cancelled(reason) for reason in reasons)


def classify(failure: Failure) -> str:
    """The outcome a failed attempt is counted under (``webhook_attempts_total``):
    ``timeout`` (no connection or no answer in time), ``refused`` (the address
    policy refused the receiver's address), else ``network``."""
    e = failure.value
    if isinstance(e, (ResponseNeverReceived, ResponseFailed)) and e.reasons:
        return classify(e.reasons[0])
    if isinstance(e, (defer.TimeoutError, error.TimeoutError, error.TCPTimedOutError)):
        return TIMEOUT
    if isinstance(e, AddressRefused):
        return REFUSED
    return NETWORK


def describe(failure: Failure) -> str:
    """A short human text for a failed attempt, kept in the status."""
    e = failure.value
    if isinstance(e, (ResponseNeverReceived, ResponseFailed)) and e.reasons:
        return describe(e.reasons[0])
    if isinstance(e, defer.TimeoutError):
        return NO_RESPONSE
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
    """POSTs signed events, at most ``concurrency`` attempts at once."""

    def __init__(
        self, reactor: Any, allow_private: bool, concurrency: int, metrics: WebhookMetrics | None = None
    ) -> None:
        self.reactor = reactor
        #: Attempts counted by outcome, and how long they took.
        self.metrics = metrics if metrics is not None else WebhookMetrics()
        self.pool = ConnectionPool(reactor, concurrency)
        self.files = FileLimit(reactor, own=lambda: self.pool.sockets)
        self.slots = defer.DeferredSemaphore(concurrency)
        agent = Agent.usingEndpointFactory(
            reactor, CheckedEndpointFactory(reactor, allow_private), pool=cast(Any, self.pool)
        )
        self.http = HTTPClient(agent, cookiejar=cast(Any, _NoCookies()))
        self._files_waiting = False

    async def attempt(
        self, url: str, key: bytes, msg_id: str, body: bytes, missed: int = 0
    ) -> tuple[int | None, str | None]:
        """POST one event once: (status, None) on a 2xx, else (status or None, error).
        ``missed``: events skipped before this one (retention deleted them),
        sent as ``Events-Missed`` when there are any.

        Waits for its turn first; raises CancelledError if cancelled (the
        delivery is being stopped)."""
        await self.slots.acquire()
        release = True
        try:
            await self._room_for_files()
            started = time.perf_counter()
            response, problem, outcome = await self._send(url, key, msg_id, body, missed)
            if response is not None:
                outcome = SUCCESS if 200 <= response.code < 300 else HTTP_ERROR
            self.metrics.attempted(outcome, time.perf_counter() - started)
            if response is None:
                return None, problem
            release = False  # the slot is held until the body is read
            _drain(response, self.reactor).addBoth(lambda _: self.slots.release())
        finally:
            if release:
                self.slots.release()
        if 200 <= response.code < 300:
            return response.code, None
        return response.code, f"HTTP {response.code}"

    async def _send(
        self, url: str, key: bytes, msg_id: str, body: bytes, missed: int
    ) -> tuple[Any, str | None, str]:
        """(the response, None, SUCCESS) or (None, what went wrong, its outcome)."""
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
        if missed:
            headers.addRawHeader(b"Events-Missed", b"%d" % missed)
        try:
            # Inside the try: a request that cannot even be built is a failed
            # attempt like any other (counted, shown, disabled in the end).
            request = self.http.request(
                "POST", url, data=_Body(body), headers=headers, allow_redirects=False, unbuffered=True
            )
        except Exception:
            failure = Failure()
            return None, describe(failure), classify(failure)
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            request.cancel()

        timer = self.reactor.callLater(REQUEST_TIMEOUT_S, expire)
        try:
            return await request, None, SUCCESS
        except Exception:
            # Cancelling a request fails it with CancelledError, or with a
            # ResponseNeverReceived that wraps one: ours after the timeout,
            # or the delivery's being stopped.
            failure = Failure()
            if timed_out:
                return None, NO_RESPONSE, TIMEOUT
            if _cancelled(failure):
                raise defer.CancelledError() from None
            return None, describe(failure), classify(failure)
        finally:
            if timer.active():
                timer.cancel()

    async def _room_for_files(self) -> None:
        """Wait while the process is near its open-files limit."""
        while self.files.near():
            if not self._files_waiting:
                self._files_waiting = True
                state = self.files.open_and_limit()
                opened, limit = state if state is not None else (0, 0)
                log.warn(
                    "webhook delivery waits: {open} of {limit} files open, the last"
                    " {reserve} are kept for clients",
                    open=opened,
                    limit=limit,
                    reserve=files_reserve(limit),
                )
            self.pool.close_idle()
            await sleep(self.reactor, FILES_WAIT_S)
        if self._files_waiting:
            self._files_waiting = False
            log.info("webhook delivery resumes: open files are below the reserve again")

    def close(self) -> None:
        """Close the idle connections (at shutdown)."""
        self.pool.close_idle()


class _Drain(Protocol):
    """Reads and drops a response body; cuts off one too large or too slow."""

    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done
        self.seen = 0

    def dataReceived(self, data: bytes) -> None:
        self.seen += len(data)
        if self.seen > MAX_RESPONSE_BODY:
            self.cut()

    def cut(self) -> None:
        if self.transport is not None:
            cast(Any, self.transport).stopProducing()  # closes the connection
        if not self.done.called:
            self.done.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


def _drain(response: Any, reactor: Any) -> defer.Deferred[None]:
    """Read the body in the background, so the connection can be reused;
    fires when it is read or cut off."""
    done: defer.Deferred[None] = defer.Deferred()
    if response.length == 0:
        done.callback(None)
        return done
    drain = _Drain(done)
    timer = reactor.callLater(REQUEST_TIMEOUT_S, drain.cut)
    response.deliverBody(drain)

    def finished(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(finished)
