"""The Twisted client's resources: consumers and their leases, channels,
subscriptions, tokens; the same names as :mod:`.sync_parts`, returning Deferreds.

Invariant: as :mod:`.sync_parts`: a :class:`TxLease` used with ``async
with`` is settled exactly once (ack when the block ends normally, nack when
it raises, unless it settled itself); ``TxConsumer.run`` settles every
lease it takes the same way.

Layer rule: the client library; the standard library, Twisted and treq only.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from eventbus.client import calls
from eventbus.client.errors import Conflict, EventBusError
from eventbus.client.model import DeadEvent, Delivery, Event
from eventbus.client.wire import backoff

if TYPE_CHECKING:
    from eventbus.client.tx import TxClient

log = Logger()


class TxLease:
    """An event leased to this instance; ``async with`` it to ack or nack it."""

    def __init__(self, consumer: TxConsumer, delivery: Delivery) -> None:
        self.consumer = consumer
        self.event: Event = delivery.event
        self.token = delivery.lease
        self.deliveries = delivery.deliveries
        self.settled = False

    def ack(self) -> defer.Deferred[None]:
        self.settled = True
        return self.consumer.ack(self.token)

    def nack(self, delay: float | None = None) -> defer.Deferred[None]:
        self.settled = True
        return self.consumer.nack(self.token, delay)

    async def __aenter__(self) -> TxLease:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        if self.settled:
            return
        if error is None:
            await self.ack()
        else:
            await self.nack()

    def __repr__(self) -> str:
        return f"<TxLease {self.event.context}/{self.event.channel}/{self.event.id} #{self.deliveries}>"


class TxConsumer:
    """A durable consumer of one channel, for Twisted programs."""

    def __init__(
        self, client: TxClient, context: str, channel: str, name: str, config: Mapping[str, Any]
    ) -> None:
        self.client = client
        self.context = context
        self.channel = channel
        self.name = name
        self._config = dict(config)
        self._configured = not config
        self._stopping = False
        self._polls: set[defer.Deferred[Any]] = set()

    def configure(self, **config: Any) -> defer.Deferred[dict[str, Any]]:
        d = self.client.send(calls.configure_consumer(self.context, self.channel, self.name, config))

        def done(state: dict[str, Any]) -> dict[str, Any]:
            self._configured = True
            return state

        return d.addCallback(done)

    def next(self, timeout: float | None = None) -> defer.Deferred[TxLease | None]:
        """The next event leased to this instance; waits up to ``timeout``
        seconds (None if none came), or (no timeout) until there is one."""
        return defer.ensureDeferred(self._next(timeout))

    async def _next(self, timeout: float | None) -> TxLease | None:
        if not self._configured:
            await self.configure(**self._config)
        left = timeout
        while True:
            hold = calls.MAX_TIMEOUT_S if left is None else min(left, calls.MAX_TIMEOUT_S)
            started = self.client.reactor.seconds()
            delivery = await self.client.send(calls.next_lease(self.context, self.channel, self.name, hold))
            if delivery is not None:
                return TxLease(self, delivery)
            if left is not None:
                left -= self.client.reactor.seconds() - started
                if left <= 0:
                    return None

    def ack(self, lease: TxLease | str) -> defer.Deferred[None]:
        token = lease.token if isinstance(lease, TxLease) else lease
        return self.client.send(calls.ack(self.context, self.channel, self.name, token))

    def nack(self, lease: TxLease | str, delay: float | None = None) -> defer.Deferred[None]:
        token = lease.token if isinstance(lease, TxLease) else lease
        return self.client.send(calls.nack(self.context, self.channel, self.name, token, delay))

    def state(self) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.consumer_state(self.context, self.channel, self.name))

    def dead(self) -> defer.Deferred[list[DeadEvent]]:
        return self.client.send(calls.dead(self.context, self.channel, self.name))

    def retry(self, event_id: int) -> defer.Deferred[None]:
        return self.client.send(calls.retry_dead(self.context, self.channel, self.name, event_id))

    def delete(self) -> defer.Deferred[None]:
        return self.client.send(calls.delete_consumer(self.context, self.channel, self.name))

    def stop(self) -> None:
        """Make :meth:`run` return once its handlers are done (a lease request
        being held is cancelled)."""
        self._stopping = True
        for poll in list(self._polls):
            poll.cancel()

    def run(
        self,
        handler: Callable[[Event], object],
        concurrency: int = 1,
        *,
        poll: float = 5.0,
        limit: int | None = None,
    ) -> defer.Deferred[int]:
        """Handle events with ``concurrency`` loops, each leasing one at a
        time: ack after ``handler(event)`` (which may return a Deferred or
        a coroutine) succeeds, nack when it fails.  Fires with the number of
        events handled after :meth:`stop` or ``limit`` events, or fails with
        the first error that retrying cannot cure."""
        self._stopping = False
        taken = [0, 0]
        failure: list[BaseException] = []

        async def loop() -> None:
            attempt = 0
            while not self._stopping and (limit is None or taken[0] < limit):
                taken[0] += 1
                poll_d = self.next(poll)
                self._polls.add(poll_d)
                try:
                    lease = await poll_d
                    attempt = 0
                except defer.CancelledError:
                    lease = None
                except EventBusError as e:
                    if not e.retryable:
                        failure.append(e)
                        self.stop()
                        return
                    lease = None
                    await self.client.sleep(backoff(attempt))
                    attempt += 1
                finally:
                    self._polls.discard(poll_d)
                if lease is None:
                    taken[0] -= 1
                    continue
                await self._handle(handler, lease)
                taken[1] += 1

        async def all_loops() -> int:
            await defer.gatherResults(
                [defer.ensureDeferred(loop()) for _ in range(concurrency)], consumeErrors=True
            )
            if failure:
                raise failure[0]
            return taken[1]

        return defer.ensureDeferred(all_loops())

    async def _handle(self, handler: Callable[[Event], object], lease: TxLease) -> None:
        try:
            async with lease:
                result = handler(lease.event)
                if inspect.isawaitable(result):
                    await result
        except Conflict:
            log.warn("lease of {lease} lost before its ack; it will be delivered again", lease=repr(lease))
        except Exception:
            log.failure("handler failed on {lease}; nacked", lease=repr(lease))


class TxSubscriptions:
    """Webhook subscriptions (``/subscriptions``)."""

    def __init__(self, client: TxClient) -> None:
        self.client = client

    def create(
        self, context: str, channel: str, url: str, start: str | int = "latest", secret: str | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        fields = {"context": context, "channel": channel, "url": url, "start": start, "secret": secret}
        return self.client.send(calls.subscribe(fields))

    def list(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self.client.send(calls.subscriptions())

    def get(self, sub_id: int) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.subscription(sub_id))

    def delete(self, sub_id: int) -> defer.Deferred[None]:
        return self.client.send(calls.delete_subscription(sub_id))

    def enable(self, sub_id: int) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.enable_subscription(sub_id))


class TxChannels:
    """Channels as resources (``/channels``)."""

    def __init__(self, client: TxClient) -> None:
        self.client = client

    async def list(
        self, context: str | None = None, *, page_size: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        after = None
        while True:
            page = await self.client.send(calls.channel_page(context, after, page_size))
            for item in page.channels:
                yield item
            if page.next_after is None:
                return
            after = page.next_after

    def get(self, context: str, channel: str) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.channel(context, channel))

    def configure(self, context: str, channel: str, **retention: Any) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.configure_channel(context, channel, retention))

    def restore(
        self, context: str, channel: str, events: Sequence[str], after: int
    ) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.restore(context, channel, events, after))


class TxTokens:
    """Access tokens (``/tokens``; ``admin``)."""

    def __init__(self, client: TxClient) -> None:
        self.client = client

    def create(
        self,
        name: str,
        scopes: Sequence[str],
        issuers: Sequence[str] | None = None,
        expires_in: float | None = None,
    ) -> defer.Deferred[dict[str, Any]]:
        fields = {
            "name": name,
            "scopes": list(scopes),
            "issuers": issuers and list(issuers),
            "expires_in": expires_in,
        }
        return self.client.send(calls.create_token(fields))

    def list(self) -> defer.Deferred[list[dict[str, Any]]]:
        return self.client.send(calls.tokens())

    def get(self, name: str) -> defer.Deferred[dict[str, Any]]:
        return self.client.send(calls.token(name))

    def revoke(self, name: str) -> defer.Deferred[None]:
        return self.client.send(calls.revoke_token(name))
