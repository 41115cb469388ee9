"""Server-Sent Events: a channel followed live over one long response.

One :class:`EventStreams` per server owns the SSE framing and the loop that
feeds each open stream.  The route in :mod:`eventbus.api` parses the request
and hands over here; this module never speaks SQL (it reads through the store)
and never wakes anyone (it waits through the notifier).

The loop of one stream:

* read the events after the cursor from the store, a page at a time, and only
  once the client has drained what it was sent (a push producer registered on
  the request is paused by the transport when its buffer fills), so a slow
  client costs at most one page of memory and nothing is dropped: the
  database is the buffer;
* when a page comes back short, take what the notifier's memory (the tail)
  holds after the cursor;
* when that is empty too the stream has caught up: it joins its channel's
  broadcast group (:mod:`eventbus.broadcast`), which writes each new event,
  rendered once for all members, and the keep-alive comments.  The stream
  leaves the group when its client stops reading (the producer is paused),
  and its loop carries on from its cursor: the tail, else pages from the
  store, at the client's pace.  So a thousand streams on one channel cost one
  rendering and a thousand writes per event, not a thousand wake-ups.

A client that disconnects cancels the handler (Klein wires ``notifyFinish``
to ``cancel``): the cancellation reaches whichever Deferred the loop awaits
(its membership of a group, whose canceller drops it; a store read; a retry
timer; the producer's pause), and the ``finally`` unregisters the producer.
Nothing else is held per stream.

Database outages: opening a stream reads the store before the ``200`` is
sent, so an outage then is a ``503`` like on every endpoint.  Once the stream
is open, an outage does not end it: the read is retried every
:data:`OUTAGE_RETRY_S` seconds (in a group: the notifier retries the group's
read every second), keep-alive comments continue, and the stream carries on
from its cursor when the database is back.  (Ending it would only
make every client reconnect at once into the same outage.)
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from eventbus.broadcast import Broadcaster
from eventbus.errors import Unavailable
from eventbus.model import MAX_ID, Event, render_events
from eventbus.notifier import Notifier
from eventbus.pacer import Pacer
from eventbus.store import Store
from eventbus.wire import BodyWriter

log = Logger()

#: Seconds of silence after which a keep-alive comment is sent (--heartbeat).
DEFAULT_HEARTBEAT_S = 15.0
#: Events per store read.  Smaller than the history endpoint's page: an SSE
#: stream is long-lived and a slow one holds up to a page in memory, so this
#: bounds what many slow clients cost (100 events of 10 KB: 1 MB each).
PAGE_EVENTS = 100
#: Delay between retries of a store read while the database is unavailable.
OUTAGE_RETRY_S = 1.0

CONTENT_TYPE = b"text/event-stream"
#: Sent first, so the status line and headers leave at once (EventSource's
#: ``open``, ``curl -N``) even on a quiet channel; a comment, not a message.
OPENING = b": connected\n\n"
HEARTBEAT = b": keepalive\n\n"

T = TypeVar("T")


def frames(context: str, channel: str, events: list[Event]) -> list[bytes]:
    """One SSE message per event: ``id``, ``event`` and ``data`` lines.

    The payload is kept as published, so the JSON may contain line breaks
    (only as whitespace between tokens: JSON strings cannot hold raw control
    characters).  SSE ends a field at CR, LF or CRLF, so each line becomes its
    own ``data:`` field; the client joins them with LF, which is the same
    JSON value.  (A batch shares one rendering template.)
    """
    return [_message(e.id, body) for e, body in zip(events, render_events(context, channel, events))]


def _message(event_id: int, body: bytes) -> bytes:
    if b"\n" in body or b"\r" in body:
        data = b"".join(b"data: " + line + b"\n" for line in body.splitlines())
    else:
        data = b"data: " + body + b"\n"
    return b"id: %d\nevent: event\n%s\n" % (event_id, data)


class EventStreams:
    """Serves every SSE stream of one server process."""

    def __init__(self, store: Store, notifier: Notifier, reactor: IReactorTime,
                 heartbeat: float = DEFAULT_HEARTBEAT_S) -> None:
        self.store = store
        self.notifier = notifier
        self.reactor = reactor
        self.heartbeat = heartbeat
        self.broadcaster = Broadcaster(notifier, reactor, frames, heartbeat, HEARTBEAT)
        self._open: set[_Stream] = set()

    def open_streams(self) -> int:
        """Number of streams currently being served (for tests and health)."""
        return len(self._open)

    def paused_streams(self) -> int:
        """Streams held back by their client (for tests)."""
        return sum(1 for s in self._open if s.pacer.paused)

    async def serve(self, request: IRequest, context: str, channel: str,
                    after: Optional[int]) -> None:
        """Stream the channel's events with id > ``after`` (None: from its head).

        Runs until the client disconnects.  Errors before the first byte
        (an outage: 503) propagate to the API's error rendering.
        """
        if after is None:
            # Only what is published from now on; the notifier wait that
            # follows catches anything committed since this read.
            after = await self.store.head(context, channel)
            first: list[Event] = []
        else:
            first = await self.store.page(context, channel, after, MAX_ID + 1, PAGE_EVENTS)
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if request.method == b"HEAD":
            return
        stream = _Stream(self, request, context, channel, after)
        self._open.add(stream)
        request.registerProducer(stream.pacer, True)
        stream.writer.no_delay()
        try:
            stream.write(OPENING)
            await stream.run(first)
        except defer.CancelledError:
            raise
        except Exception:
            # The 200 is out, so no error response is possible: cut the
            # connection; the client reconnects with Last-Event-ID.
            log.failure("SSE stream of {context}/{channel} failed; closing it",
                        context=context, channel=channel)
            if request.channel is not None:
                request.unregisterProducer()
                request.channel.transport.abortConnection()
                await request.notifyFinish()
        finally:
            self._open.discard(stream)
            # After a disconnect the request has no channel left to tell.
            if request.producer is not None and request.channel is not None:
                request.unregisterProducer()


class _Stream:
    """The state of one open stream: where it is, and when it last wrote."""

    def __init__(self, streams: EventStreams, request: IRequest, context: str,
                 channel: str, cursor: int) -> None:
        self.streams = streams
        self.request = request
        self.context = context
        self.channel = channel
        self.cursor = cursor
        self.pacer = Pacer()
        self.writer = BodyWriter(request)
        #: Writes without noting the time (a broadcast group notes it once
        #: for all its members).
        self.send = self.writer.write
        self.last_write = streams.reactor.seconds()

    def write(self, data: bytes) -> None:
        self.send(data)
        self.last_write = self.streams.reactor.seconds()

    @property
    def paused(self) -> bool:
        """The client takes nothing more for now (or is gone)."""
        return self.pacer.held

    def write_events(self, events: list[Event]) -> None:
        self.write(b"".join(frames(self.context, self.channel, events)))
        self.cursor = events[-1].id

    async def run(self, page: list[Event]) -> None:
        store, notifier = self.streams.store, self.streams.notifier
        broadcaster = self.streams.broadcaster
        ctx, chan = self.context, self.channel
        while True:
            behind = len(page) == PAGE_EVENTS
            if page:
                self.write_events(page)
            await self.pacer.ready()
            if not behind:
                # Near the head: what the notifier already holds in memory
                # (one read or one publish serves every stream), else the
                # group, which follows the channel from exactly our cursor
                # (so nothing the memory lacks is skipped).
                page = notifier.recent(ctx, chan, self.cursor, PAGE_EVENTS)
                if page:
                    continue
                left = broadcaster.join(ctx, chan, self)
                if left is not None:
                    # Until our client stops reading; then on by ourselves.
                    await left
                    page = []
                    continue
                # The group is already past us: read what we miss.
            page = await self._retrying(store.page, ctx, chan, self.cursor,
                                        MAX_ID + 1, PAGE_EVENTS)

    async def _retrying(self, read: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await read(*args)``, retried through database outages."""
        reactor = self.streams.reactor
        failed = False
        while True:
            try:
                result = await read(*args)
            except Unavailable as e:
                if not failed:
                    log.warn("SSE stream of {context}/{channel} waits for the database:"
                             " {error}", context=self.context, channel=self.channel,
                             error=e.message)
                failed = True
            else:
                if failed:
                    log.info("SSE stream of {context}/{channel} resumes",
                             context=self.context, channel=self.channel)
                return result
            if reactor.seconds() - self.last_write >= self.streams.heartbeat:
                self.write(HEARTBEAT)
            await task.deferLater(reactor, OUTAGE_RETRY_S, lambda: None)
