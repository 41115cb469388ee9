"""The blocking client's resources: consumers and their leases, channels,
subscriptions, tokens (``client.channels.list()``, ...).

Invariant: a :class:`Lease` used as a context manager is settled exactly
once: acked when its block ends normally, nacked when it raises, unless the
block settled it itself; ``Consumer.run`` settles every lease it takes the
same way, and stops only between leases.

Layer rule: the client library; the standard library and httpx only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from eventbus.client import calls
from eventbus.client.errors import Conflict, EventBusError
from eventbus.client.model import DeadEvent, Delivery, Event
from eventbus.client.wire import backoff

if TYPE_CHECKING:
    from eventbus.client.sync import Client

log = logging.getLogger("eventbus.client")


class Lease:
    """An event leased to this instance; ``with`` it to ack or nack it."""

    def __init__(self, consumer: Consumer, delivery: Delivery) -> None:
        self.consumer = consumer
        self.event: Event = delivery.event
        #: The lease's token.
        self.token = delivery.lease
        self.deliveries = delivery.deliveries
        #: Whether it was acked or nacked already.
        self.settled = False

    def ack(self) -> None:
        self.settled = True
        self.consumer.ack(self.token)

    def nack(self, delay: float | None = None) -> None:
        self.settled = True
        self.consumer.nack(self.token, delay)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if self.settled:
            return
        if error is None:
            self.ack()
        else:
            self.nack()

    def __repr__(self) -> str:
        return f"<Lease {self.event.context}/{self.event.channel}/{self.event.id} #{self.deliveries}>"


class Consumer:
    """A durable consumer of one channel (``/consumers/{context}/{channel}/{name}``)."""

    def __init__(
        self, client: Client, context: str, channel: str, name: str, config: Mapping[str, Any]
    ) -> None:
        self.client = client
        self.context = context
        self.channel = channel
        self.name = name
        self._config = dict(config)
        self._configured = not config
        self._stop = threading.Event()

    def configure(self, **config: Any) -> dict[str, Any]:
        """Create or update it (``PUT``); its state."""
        state: dict[str, Any] = self.client.send(
            calls.configure_consumer(self.context, self.channel, self.name, config)
        )
        self._configured = True
        return state

    def _ensure(self) -> None:
        if not self._configured:
            self.configure(**self._config)

    @overload
    def next(self) -> Lease: ...
    @overload
    def next(self, timeout: float) -> Lease | None: ...
    def next(self, timeout: float | None = None) -> Lease | None:
        """The next event leased to this instance; waits up to ``timeout``
        seconds (None if none came), or (no timeout) until there is one."""
        self._ensure()
        left = timeout
        while True:
            hold = calls.MAX_TIMEOUT_S if left is None else min(left, calls.MAX_TIMEOUT_S)
            started = time.monotonic()
            delivery = self.client.send(calls.next_lease(self.context, self.channel, self.name, hold))
            if delivery is not None:
                return Lease(self, delivery)
            if left is not None:
                left -= time.monotonic() - started
                if left <= 0:
                    return None

    def ack(self, lease: Lease | str) -> None:
        token = lease.token if isinstance(lease, Lease) else lease
        self.client.send(calls.ack(self.context, self.channel, self.name, token))

    def nack(self, lease: Lease | str, delay: float | None = None) -> None:
        token = lease.token if isinstance(lease, Lease) else lease
        self.client.send(calls.nack(self.context, self.channel, self.name, token, delay))

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.send(calls.consumer_state(self.context, self.channel, self.name))
        return result

    def dead(self) -> list[DeadEvent]:
        return self.client.send(calls.dead(self.context, self.channel, self.name))

    def retry(self, event_id: int) -> None:
        self.client.send(calls.retry_dead(self.context, self.channel, self.name, event_id))

    def delete(self) -> None:
        self.client.send(calls.delete_consumer(self.context, self.channel, self.name))

    def stop(self) -> None:
        """Make :meth:`run` return once its handlers are done with their events."""
        self._stop.set()

    def run(
        self,
        handler: Callable[[Event], object],
        concurrency: int = 1,
        *,
        poll: float = 5.0,
        limit: int | None = None,
    ) -> int:
        """Handle events with ``concurrency`` threads, each leasing one at a
        time: ack after ``handler(event)`` returns, nack when it raises.
        Returns (the number of events handled) after :meth:`stop`, after
        ``limit`` events, or raises the first error that retrying cannot
        cure (401, 403, 404...).  ``poll``: the longest a lease request is
        held, so also how long a stop may take."""
        self._stop.clear()
        lock = threading.Lock()
        count = [0, 0]  # taken, handled
        failure: list[BaseException] = []

        def take() -> bool:
            with lock:
                if self._stop.is_set() or (limit is not None and count[0] >= limit):
                    return False
                count[0] += 1
                return True

        def worker() -> None:
            attempt = 0
            while take():
                try:
                    lease = self.next(poll)
                    attempt = 0
                except EventBusError as e:
                    if not e.retryable:
                        failure.append(e)
                        self._stop.set()
                        return
                    self._stop.wait(backoff(attempt))
                    attempt += 1
                    lease = None
                if lease is None:
                    with lock:
                        count[0] -= 1
                    continue
                self._handle(handler, lease)
                with lock:
                    count[1] += 1

        threads = [
            threading.Thread(target=worker, name=f"eventbus-{self.name}-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except KeyboardInterrupt:
            self._stop.set()
            for t in threads:
                t.join()
            raise
        if failure:
            raise failure[0]
        return count[1]

    def _handle(self, handler: Callable[[Event], object], lease: Lease) -> None:
        try:
            with lease:
                handler(lease.event)
        except Conflict:
            log.warning("lease of %s lost before its ack; it will be delivered again", lease)
        except Exception:
            log.exception("handler failed on %s; nacked", lease)


class Subscriptions:
    """Webhook subscriptions (``/subscriptions``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(
        self, context: str, channel: str, url: str, start: str | int = "latest", secret: str | None = None
    ) -> dict[str, Any]:
        fields = {"context": context, "channel": channel, "url": url, "start": start, "secret": secret}
        result: dict[str, Any] = self.client.send(calls.subscribe(fields))
        return result

    def list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.send(calls.subscriptions())
        return result

    def get(self, sub_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.client.send(calls.subscription(sub_id))
        return result

    def delete(self, sub_id: int) -> None:
        self.client.send(calls.delete_subscription(sub_id))

    def enable(self, sub_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.client.send(calls.enable_subscription(sub_id))
        return result


class Channels:
    """Channels as resources (``/channels``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self, context: str | None = None, *, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every channel (of one context), following the pages' ``Link``."""
        after = None
        while True:
            page = self.client.send(calls.channel_page(context, after, page_size))
            yield from page.channels
            if page.next_after is None:
                return
            after = page.next_after

    def get(self, context: str, channel: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.send(calls.channel(context, channel))
        return result

    def configure(self, context: str, channel: str, **retention: Any) -> dict[str, Any]:
        """Set retention (``max_age``, ``max_events``; None: the server's default)."""
        result: dict[str, Any] = self.client.send(calls.configure_channel(context, channel, retention))
        return result

    def restore(self, context: str, channel: str, events: Sequence[str], after: int) -> dict[str, Any]:
        """Store exported events (JSON texts of event objects) with their ids
        and timestamps, atomically, into a channel whose last id is ``after``
        (0: a channel never written); needs ``admin``."""
        result: dict[str, Any] = self.client.send(calls.restore(context, channel, events, after))
        return result


class Tokens:
    """Access tokens (``/tokens``; ``admin``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        issuers: Sequence[str] | None = None,
        expires_in: float | None = None,
    ) -> dict[str, Any]:
        """Create one; the answer holds the ``token``, shown only here."""
        fields = {
            "name": name,
            "scopes": list(scopes),
            "issuers": issuers and list(issuers),
            "expires_in": expires_in,
        }
        result: dict[str, Any] = self.client.send(calls.create_token(fields))
        return result

    def list(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.send(calls.tokens())
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.send(calls.token(name))
        return result

    def revoke(self, name: str) -> None:
        self.client.send(calls.revoke_token(name))
