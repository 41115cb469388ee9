"""``TxClient``: the event bus from Twisted programs, on treq.

The same methods and names as :class:`~eventbus.client.sync.Client`; each
returns a Deferred (``await`` it under ``ensureDeferred``), and
``history``/``follow``/``stream`` are async iterators (``async for``).

Invariant: as the blocking client's (the calls of :mod:`.calls`, repeated
only when harmless, a publish always with an ``Idempotency-Key``); and a
long answer is read through :class:`Body`, which pauses the connection
while more than :data:`~eventbus.client.txbody.HIGH_WATER` bytes wait for the caller, so a slow
``async for`` costs constant memory.

Layer rule: the client library; the standard library, Twisted and treq
only (never the server's modules).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
)
from twisted.web.iweb import IResponse

from eventbus.client import calls
from eventbus.client.calls import Answer, Call
from eventbus.client.errors import EventBusError, NotFound, Unreachable, error_for
from eventbus.client.model import Event
from eventbus.client.resume import Resume, ended
from eventbus.client.sync import DEFAULT_ATTEMPTS, STREAM_SILENCE_S, settings
from eventbus.client.tx_parts import TxChannels, TxConsumer, TxSubscriptions, TxTokens
from eventbus.client.txbody import NO_ANSWER, Body, read_all, unreachable
from eventbus.client.wire import ArrayReader, SSEReader, backoff

T = TypeVar("T")


class TxClient:
    """A Twisted client of one event bus."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        issuer: str | None = None,
        timeout: float = 30.0,
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        max_batch: int = calls.MAX_BATCH,
        max_body: int = calls.MAX_BODY,
        stream_silence: float = STREAM_SILENCE_S,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.url, self.token, self.issuer = settings(url, token, issuer)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_batch = max_batch
        self.max_body = max_body
        self.stream_silence = stream_silence
        self._headers = {"User-Agent": "eventbus-client"}
        if self.token:
            self._headers["Authorization"] = f"Bearer {self.token}"
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 16
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self.subscriptions = TxSubscriptions(self)
        self.channels = TxChannels(self)
        self.tokens = TxTokens(self)

    def close(self) -> defer.Deferred[None]:
        """Close the kept-alive connections."""
        return self._pool.closeCachedConnections()

    # -- sending ------------------------------------------------------------------
    def send(self, call: Call[T]) -> defer.Deferred[T]:
        return defer.ensureDeferred(self._send(call))

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                return call.parse(await self._answer(call))
            except EventBusError as e:
                attempt += 1
                if not (e.retryable and call.retry and attempt < self.attempts):
                    raise
                await self.sleep(backoff(attempt - 1))

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        return deferLater(self.reactor, seconds, lambda: None)

    async def _answer(self, call: Call[Any]) -> Answer:
        d: defer.Deferred[Any] = self._request(call.method, call.path, call.params, call.headers, call.body)
        d.addCallback(lambda response: defer.ensureDeferred(read_all(response)))
        d.addTimeout(self.timeout + call.hold, self.reactor)
        try:
            status, headers, body = await d
        except NO_ANSWER as e:
            raise unreachable(self.url, e) from None
        return Answer(status, headers, body)

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> defer.Deferred[IResponse]:
        d: defer.Deferred[Any] = self._http.request(
            method,
            self.url + path,
            params=dict(params) or None,
            headers={**self._headers, **headers},  # type: ignore[arg-type]
            data=body,
            allow_redirects=False,
            unbuffered=True,
            reactor=self.reactor,
        )
        return d

    async def _open(self, path: str, params: Mapping[str, str], headers: Mapping[str, str]) -> Body:
        """A GET whose answer is read as it comes (its status checked)."""
        d = self._request("GET", path, params, headers, None)
        d.addTimeout(self.timeout, self.reactor)
        try:
            response = await d
        except NO_ANSWER as e:
            raise unreachable(self.url, e) from None
        if response.code != 200:
            _, _, body = await read_all(response)
            raise error_for(response.code, body)
        reader = Body(self.reactor, self.stream_silence)
        response.deliverBody(reader)
        return reader

    # -- events -----------------------------------------------------------------
    def publish(
        self,
        context: str,
        channel: str,
        payload: Mapping[str, Any] | str | bytes,
        *,
        issuer: str | None = None,
        idempotency_key: str | None = None,
        expected_last_id: int | None = None,
    ) -> defer.Deferred[Event]:
        headers = calls.publish_headers(
            issuer or self.issuer, idempotency_key or calls.new_key(), expected_last_id
        )
        return self.send(calls.publish(context, channel, calls.encode(payload), headers))

    def publish_batch(
        self,
        context: str,
        channel: str,
        payloads: Sequence[Mapping[str, Any] | str | bytes],
        *,
        issuer: str | None = None,
        idempotency_key: str | None = None,
        expected_last_id: int | None = None,
        split: bool = False,
    ) -> defer.Deferred[list[Event]]:
        return defer.ensureDeferred(
            self._publish_batch(context, channel, payloads, issuer, idempotency_key, expected_last_id, split)
        )

    async def _publish_batch(
        self,
        context: str,
        channel: str,
        payloads: Sequence[Mapping[str, Any] | str | bytes],
        issuer: str | None,
        key: str | None,
        expected: int | None,
        split: bool,
    ) -> list[Event]:
        encoded = [calls.encode(p) for p in payloads]
        runs = list(calls.batches(encoded, self.max_batch, self.max_body)) if split else [encoded]
        key = key or calls.new_key()
        stored: list[Event] = []
        for n, run in enumerate(runs):
            headers = calls.publish_headers(
                issuer or self.issuer, key if len(runs) == 1 else f"{key}.{n}", expected
            )
            stored += await self._send(calls.publish(context, channel, calls.array(run), headers, many=True))
            if expected is not None:
                expected = stored[-1].id
        return stored

    def event(self, context: str, channel: str, event_id: int) -> defer.Deferred[Event]:
        return self.send(calls.event(context, channel, event_id))

    def peek(
        self,
        context: str,
        channel: str,
        cursor: int,
        *,
        timeout: float = calls.DEFAULT_TIMEOUT_S,
        on_expired: str = "error",
    ) -> defer.Deferred[Event | None]:
        return self.send(calls.peek(context, channel, cursor, timeout, on_expired))

    async def history(
        self,
        context: str,
        channel: str,
        *,
        start: float | dt.datetime | str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Event]:
        body = await self._open(
            calls.channel_path("events", context, channel), calls.history_params(start, limit), {}
        )
        reader = ArrayReader()
        try:
            while (chunk := await body.read()) is not None:
                for raw, value in reader.feed(chunk):
                    yield Event.from_json(raw, value)
            for raw, value in reader.close():
                yield Event.from_json(raw, value)
        except ValueError as e:
            raise Unreachable(f"the history of {context}/{channel} was cut: {e}") from None
        finally:
            body.abort()

    def follow(
        self, context: str, channel: str, *, after: int = 0, on_expired: str = "raise"
    ) -> AsyncIterator[Event]:
        return self._follow(Resume(context, channel, after, on_expired))

    async def stream(
        self, context: str, channel: str, *, last_event_id: int | None = None, on_expired: str = "raise"
    ) -> AsyncIterator[Event]:
        after = await self.head(context, channel) if last_event_id is None else last_event_id
        async for event in self._follow(Resume(context, channel, after, on_expired)):
            yield event

    async def head(self, context: str, channel: str) -> int:
        try:
            return int((await self.channels.get(context, channel))["last_id"])
        except NotFound:
            return 0

    async def _follow(self, resume: Resume) -> AsyncIterator[Event]:
        while True:
            path, params, headers = resume.request()
            body = None
            try:
                body = await self._open(path, params, headers)
                reader = SSEReader()
                while (chunk := await body.read()) is not None:
                    for message in reader.feed(chunk):
                        event = resume.take(message)
                        if event is not None:
                            yield event
                failure: EventBusError = ended()
            except EventBusError as e:
                if not e.retryable:
                    raise
                failure = e
            finally:
                if body is not None:
                    body.abort()
            await self.sleep(resume.retry_in(failure))

    # -- the rest of the API --------------------------------------------------------
    def consumer(self, context: str, channel: str, name: str, **config: Any) -> TxConsumer:
        return TxConsumer(self, context, channel, name, config)

    def consumers(self, context: str, channel: str) -> defer.Deferred[list[dict[str, Any]]]:
        return self.send(calls.consumers(context, channel))

    def health(self) -> defer.Deferred[dict[str, Any]]:
        return self.send(calls.health())
