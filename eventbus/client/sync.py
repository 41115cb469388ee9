"""``Client``: the event bus from blocking code (scripts, workers), on httpx.

Invariant: every method is one of :mod:`.calls` sent over one connection
pool; only calls marked safe to repeat are sent again (a bounded number
of times, with backoff) after a connection error, a ``503`` or a ``429``.
A publish is one of them because it carries an ``Idempotency-Key`` (a
fresh one per call unless given): the server answers a repeat with the
event it stored the first time, so a retry never stores a duplicate.

Layer rule: the client library; the standard library and httpx only (never
the server's modules).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from eventbus.client import calls
from eventbus.client.calls import Answer, Call
from eventbus.client.errors import EventBusError, NotFound, Unreachable, error_for
from eventbus.client.model import Event
from eventbus.client.resume import Resume, ended
from eventbus.client.sync_parts import Channels, Consumer, Subscriptions, Tokens
from eventbus.client.wire import ArrayReader, SSEReader, backoff

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:33002"
#: Attempts of a call that is safe to repeat (the first included).
DEFAULT_ATTEMPTS = 6
#: Silence after which a stream is taken for dead (the server sends a
#: keep-alive every 15 s by default).
STREAM_SILENCE_S = 60.0


def settings(url: str | None, token: str | None, issuer: str | None) -> tuple[str, str | None, str | None]:
    """Arguments, else ``EVENTBUS_URL``, ``EVENTBUS_TOKEN``, ``EVENTBUS_ISSUER``."""
    url = url or os.environ.get("EVENTBUS_URL") or DEFAULT_URL
    token = token if token is not None else os.environ.get("EVENTBUS_TOKEN") or None
    issuer = issuer if issuer is not None else os.environ.get("EVENTBUS_ISSUER") or None
    return url.rstrip("/"), token, issuer


class Client:
    """A blocking client of one event bus (thread-safe: one pool of connections)."""

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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.token, self.issuer = settings(url, token, issuer)
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_batch = max_batch
        self.max_body = max_body
        self.stream_silence = stream_silence
        headers = {"User-Agent": "eventbus-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self.subscriptions = Subscriptions(self)
        self.channels = Channels(self)
        self.tokens = Tokens(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------
    def send(self, call: Call[T]) -> T:
        """Send a call and read its answer; repeat it while that may help and is harmless."""
        attempt = 0
        while True:
            try:
                return call.parse(self._answer(call))
            except EventBusError as e:
                attempt += 1
                if not (e.retryable and call.retry and attempt < self.attempts):
                    raise
                time.sleep(backoff(attempt - 1))

    def _answer(self, call: Call[Any]) -> Answer:
        timeout = httpx.Timeout(self.timeout, read=self.timeout + call.hold)
        try:
            response = self._http.request(
                call.method,
                call.path,
                params=call.params,
                headers=call.headers,
                content=call.body,
                timeout=timeout,
            )
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from None
        return Answer(response.status_code, response.headers, response.content)

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
    ) -> Event:
        """Publish one event (a mapping, or a JSON object's text sent as it
        is); the stored event.  Safe to retry: see the module's docstring."""
        headers = calls.publish_headers(
            issuer or self.issuer, idempotency_key or calls.new_key(), expected_last_id
        )
        event: Event = self.send(calls.publish(context, channel, calls.encode(payload), headers))
        return event

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
    ) -> list[Event]:
        """Publish events atomically, with consecutive ids.  A list over the
        server's limits is refused (:class:`~eventbus.client.errors.TooLarge`)
        unless ``split=True``: then it goes as several atomic batches, each
        with its own key (``<key>.<n>``) and, with ``expected_last_id``,
        each expecting the last id the one before it left."""
        stored: list[Event] = []
        for key, expected, run in self._runs(payloads, idempotency_key, expected_last_id, split):
            headers = calls.publish_headers(issuer or self.issuer, key, expected)
            call = calls.publish(context, channel, calls.array(run), headers, many=True)
            stored += self.send(call)
            if expected is not None:
                expected_last_id = stored[-1].id
        return stored

    def _runs(
        self,
        payloads: Sequence[Mapping[str, Any] | str | bytes],
        key: str | None,
        expected: int | None,
        split: bool,
    ) -> Iterator[tuple[str, int | None, list[bytes]]]:
        encoded = [calls.encode(p) for p in payloads]
        runs = list(calls.batches(encoded, self.max_batch, self.max_body)) if split else [encoded]
        key = key or calls.new_key()
        for n, run in enumerate(runs):
            yield (key if len(runs) == 1 else f"{key}.{n}"), expected, run

    def event(self, context: str, channel: str, event_id: int) -> Event:
        """One event by id (:class:`~eventbus.client.errors.NotFound` if there is none)."""
        return self.send(calls.event(context, channel, event_id))

    def peek(
        self,
        context: str,
        channel: str,
        cursor: int,
        *,
        timeout: float = calls.DEFAULT_TIMEOUT_S,
        on_expired: str = "error",
    ) -> Event | None:
        """The first event after ``cursor``, waiting up to ``timeout`` seconds
        for one (None if none came).  Events after the cursor that retention
        deleted: :class:`~eventbus.client.errors.Expired`, or with
        ``on_expired="earliest"`` the first stored one (its ``missed`` says
        how many were deleted)."""
        return self.send(calls.peek(context, channel, cursor, timeout, on_expired))

    def history(
        self,
        context: str,
        channel: str,
        *,
        start: float | dt.datetime | str | None = None,
        limit: int | None = None,
    ) -> Iterator[Event]:
        """The channel's stored events in id order (from ``start``, a unix
        time or an ISO-8601 instant; the first ``limit``), read as the
        server streams them: constant memory whatever the channel's size."""
        path = calls.channel_path("events", context, channel)
        params = calls.history_params(start, limit)
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.status_code != 200:
                    raise error_for(response.status_code, response.read())
                reader = ArrayReader()
                for chunk in response.iter_bytes():
                    for raw, value in reader.feed(chunk):
                        yield Event.from_json(raw, value)
                for raw, value in reader.close():
                    yield Event.from_json(raw, value)
        except httpx.TransportError as e:
            raise unreachable(self.url, e) from None
        except ValueError as e:
            raise Unreachable(f"the history of {context}/{channel} was cut: {e}") from None

    def follow(
        self, context: str, channel: str, *, after: int = 0, on_expired: str = "raise"
    ) -> Iterator[Event]:
        """Every event after ``after``, forever: catches up, then waits for new
        ones; reconnects (with backoff) across network errors and server
        restarts without skipping or repeating one (:mod:`.resume`)."""
        return self._follow(Resume(context, channel, after, on_expired))

    def stream(
        self, context: str, channel: str, *, last_event_id: int | None = None, on_expired: str = "raise"
    ) -> Iterator[Event]:
        """The channel's SSE stream: events after ``last_event_id``, or (None)
        those published from now on; reconnects with ``Last-Event-ID``."""
        after = self.head(context, channel) if last_event_id is None else last_event_id
        return self._follow(Resume(context, channel, after, on_expired))

    def head(self, context: str, channel: str) -> int:
        """The channel's last id (0 for a channel never written)."""
        try:
            return int(self.channels.get(context, channel)["last_id"])
        except NotFound:
            return 0

    def _follow(self, resume: Resume) -> Iterator[Event]:
        timeout = httpx.Timeout(self.timeout, read=self.stream_silence)
        while True:
            path, params, headers = resume.request()
            try:
                with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        raise error_for(response.status_code, response.read())
                    reader = SSEReader()
                    for chunk in response.iter_bytes():
                        for message in reader.feed(chunk):
                            event = resume.take(message)
                            if event is not None:
                                yield event
                error: EventBusError = ended()
            except httpx.TransportError as e:
                error = unreachable(self.url, e)
            except EventBusError as e:
                if not e.retryable:
                    raise
                error = e
            time.sleep(resume.retry_in(error))

    # -- the rest of the API --------------------------------------------------------
    def consumer(self, context: str, channel: str, name: str, **config: Any) -> Consumer:
        """A durable consumer; ``config`` (mode, start, lease,
        max_deliveries), if any, is applied (``PUT``) before its first use."""
        return Consumer(self, context, channel, name, config)

    def consumers(self, context: str, channel: str) -> list[dict[str, Any]]:
        """The state of every consumer of a channel."""
        result: list[dict[str, Any]] = self.send(calls.consumers(context, channel))
        return result

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.send(calls.health())
        return result

    def restore(self, context: str, channel: str, events: Iterable[str], after: int) -> dict[str, Any]:
        """Restore exported events (their JSON texts) into a channel whose last id is ``after``."""
        return self.channels.restore(context, channel, list(events), after)


def unreachable(url: str, error: Exception) -> Unreachable:
    kind = type(error).__name__
    detail = str(error) or kind
    if isinstance(error, httpx.ConnectError):
        detail = f"cannot connect to {url}: {detail}"
    elif isinstance(error, httpx.TimeoutException):
        detail = f"no answer from {url} in time ({kind})"
    else:
        detail = f"connection to {url} failed: {detail}"
    return Unreachable(detail)
