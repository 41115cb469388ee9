"""Long responses: a channel's history as one JSON array, and SSE streams.

Invariant: a reading client costs the server about one page, whatever the
channel's size: every page is read from the database only once the client
has taken the previous one (a :class:`~eventbus.http.pacer.Pacer` registered
on the request), so the database is the buffer and nothing is dropped.

History (:func:`stream_history`) ends at the channel's head as of the
request, so it is a consistent prefix of the log even while publishers keep
writing.

One :class:`EventStreams` per server owns the SSE framing and the loop that
feeds each open stream.  The route in :mod:`eventbus.http.events` parses the
request and hands over here; this module never speaks SQL (it reads through
the event store) and never wakes anyone (it waits through the notifier).

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

Revocation: a stream opened with a token is a held request
(:func:`eventbus.http.access.held`); when its token is revoked or expires
the loop is cancelled like on a disconnect, and the stream ends with one
``event: error`` message (``data: {"error": "token revoked"}``) before the
response is finished and the connection closed.  (``EventSource`` then
reconnects, and is refused with a 401, which ends it.)

Database outages: opening a stream reads the store before the ``200`` is
sent, so an outage then is a ``503`` like on every endpoint.  Once the stream
is open, an outage does not end it: the read is retried every
:data:`OUTAGE_RETRY_S` seconds (in a group: the notifier retries the group's
read every second), keep-alive comments continue, and the stream carries on
from its cursor when the database is back.  (Ending it would only
make every client reconnect at once into the same outage.)

Layer rule: the HTTP layer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, cast

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from eventbus.errors import EventBusError
from eventbus.http import access
from eventbus.http.broadcast import Broadcaster
from eventbus.http.pacer import Pacer
from eventbus.http.render import JSON, error_body
from eventbus.http.wire import BodyWriter
from eventbus.model import MAX_ID, Event, render_event, render_events
from eventbus.notifier import Notifier
from eventbus.retry import retrying
from eventbus.storage.events import EventStore
from eventbus.storage.pages import PAGE_BYTES, PAGE_SIZE, Page

log = Logger()
T = TypeVar("T")

#: Events per store read.  Smaller than the history endpoint's page: an SSE
#: stream is long-lived and catches up in smaller steps.  Either page is also
#: cut at :data:`~eventbus.storage.pages.PAGE_BYTES` of payload, which is
#: what bounds a slow client's cost whatever the events' sizes.
PAGE_EVENTS = 100

CONTENT_TYPE = b"text/event-stream"
#: Where what a channel stores begins (retention deleted what was before).
FIRST_ID_HEADER = b"Events-First-Id"
#: Sent first, so the status line and headers leave at once (EventSource's
#: ``open``, ``curl -N``) even on a quiet channel; a comment, not a message.
OPENING = b": connected\n\n"
HEARTBEAT = b": keepalive\n\n"


async def stream_history(
    request: Request,
    store: EventStore,
    context: str,
    channel: str,
    start: dt.datetime | None,
    limit: int | None,
) -> None:
    """Write the channel as a JSON array, page by page, paced by the client;
    ``Events-First-Id`` says where what is stored begins (retention)."""
    first_id, head = await store.bounds(context, channel)
    request.setHeader(FIRST_ID_HEADER, b"%d" % first_id)
    after = first_id - 1
    if start is not None and head:
        first = await store.first_id_at(context, channel, start)
        after = head if first is None else first - 1
    remaining = limit if limit is not None else head

    async def next_page() -> list[bytes]:
        nonlocal after, remaining
        if after >= head or remaining <= 0:
            return []
        page = await store.page(context, channel, after, head, min(PAGE_SIZE, remaining))
        if page:
            after, remaining = page[-1].id, remaining - len(page)
        return [render_event(context, channel, e) for e in page]

    await stream_array(request, next_page, f"history of {context}/{channel}")


async def stream_array(request: Request, next_page: Callable[[], Awaitable[list[bytes]]], what: str) -> None:
    """Write a JSON array of the elements ``next_page`` returns, a page at a
    time, until it returns none.  The first page is read before the ``200``
    (its errors are the answer; a HEAD reads none); each next one only once the client has
    taken the previous one, which is then held by the connection's buffer
    only: one page per client, whatever the array's length."""
    request.setHeader(b"Content-Type", JSON)
    if request.method == b"HEAD":
        return  # the headers only: no page is read for a body nobody gets
    parts = await next_page()
    pacer = Pacer()
    request.registerProducer(pacer, True)
    try:
        request.write(b"[")
        comma = False
        while parts:
            if comma:
                parts.insert(0, b"")  # a leading comma
            request.write(b",".join(parts))
            comma = True
            del parts
            await pacer.ready()
            parts = await next_page()
        request.write(b"]")
    except EventBusError:
        # The 200 and part of the array are out: the only honest signal
        # left is to cut the connection so the client sees a truncation.
        log.warn("aborting the {what}", what=what)
        request.unregisterProducer()
        cast(Any, request.channel).transport.abortConnection()
        await request.notifyFinish()
    finally:
        # After a disconnect the request has no channel left to tell.
        if request.producer is not None and request.channel is not None:
            request.unregisterProducer()


def frames(context: str, channel: str, events: list[Event]) -> list[bytes]:
    """One SSE message per event: ``id``, ``event`` and ``data`` lines.

    The payload is kept as published, so the JSON may contain line breaks
    (only as whitespace between tokens: JSON strings cannot hold raw control
    characters).  SSE ends a field at CR, LF or CRLF, so each line becomes its
    own ``data:`` field; the client joins them with LF, which is the same
    JSON value.  (A batch shares one rendering template.)
    """
    return [
        _message(e.id, body) for e, body in zip(events, render_events(context, channel, events), strict=True)
    ]


def _message(event_id: int, body: bytes) -> bytes:
    if b"\n" in body or b"\r" in body:
        data = b"".join(b"data: " + line + b"\n" for line in body.splitlines())
    else:
        data = b"data: " + body + b"\n"
    return b"id: %d\nevent: event\n%s\n" % (event_id, data)


class EventStreams:
    """Serves every SSE stream of one server process."""

    def __init__(
        self, store: EventStore, notifier: Notifier, reactor: IReactorTime, heartbeat: float
    ) -> None:
        """``heartbeat``: seconds of silence after which a keep-alive comment is sent."""
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

    async def serve(self, request: Request, context: str, channel: str, after: int | None) -> None:
        """Stream the channel's events with id > ``after`` (None: from its head).

        Runs until the client disconnects.  Errors before the first byte
        (an outage: 503) propagate to the API's error rendering.
        """
        gap = None
        if after is None:
            # Only what is published from now on; the notifier wait that
            # follows catches anything committed since this read.
            after = await self.store.head(context, channel)
            first = Page()
        else:
            first = await self.store.page(context, channel, after, MAX_ID + 1, PAGE_EVENTS)
            gap = await self._gap(context, channel, after, first)
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        if not request.responseHeaders.hasHeader(b"Cache-Control"):  # a token's: private
            request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if request.method == b"HEAD":
            return
        stream = _Stream(self, request, context, channel, after, first)
        del first  # the stream holds it until it is written, and no longer
        self._open.add(stream)
        request.registerProducer(stream.pacer, True)
        stream.writer.no_delay()
        try:
            stream.write(OPENING)
            if gap is not None:
                stream.write_expired(gap)
            await stream.run()
        except defer.CancelledError:
            hold = access.hold_of(request)
            if hold is None or hold.reason is None or request.channel is None:
                raise
            # The token died: say so, end the response, close the connection.
            stream.write(b"event: error\ndata: " + error_body(hold.reason) + b"\n\n")
            request.unregisterProducer()
            transport = cast(Any, request.channel).transport
            request.finish()
            transport.loseConnection()
        except Exception:
            # The 200 is out, so no error response is possible: cut the
            # connection; the client reconnects with Last-Event-ID.
            log.failure(
                "SSE stream of {context}/{channel} failed; closing it", context=context, channel=channel
            )
            if request.channel is not None:
                request.unregisterProducer()
                cast(Any, request.channel).transport.abortConnection()
                await request.notifyFinish()
        finally:
            self._open.discard(stream)
            # After a disconnect the request has no channel left to tell.
            if request.producer is not None and request.channel is not None:
                request.unregisterProducer()

    async def _gap(self, context: str, channel: str, cursor: int, page: list[Event]) -> int | None:
        """The first id stored (or to come) if retention deleted the events
        right after ``cursor``, else None; ``page`` was read after it."""
        if page:
            return page[0].id if page[0].id > cursor + 1 else None
        first_id, _ = await self.store.bounds(context, channel)
        return first_id if first_id > cursor + 1 else None


class _Stream:
    """The state of one open stream: where it is, and when it last wrote."""

    def __init__(
        self, streams: EventStreams, request: Request, context: str, channel: str, cursor: int, page: Page
    ) -> None:
        self.streams = streams
        #: The first page, read before the 200 was sent; written by :meth:`run`.
        self.first: Page | None = page
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

    def write_expired(self, first_id: int) -> None:
        """Retention deleted the events from the cursor on up to ``first_id``
        - 1: say so, and carry on from there (its ``id`` is where a
        reconnect resumes)."""
        data = orjson.dumps({"first_id": first_id, "missed": first_id - self.cursor - 1})
        self.write(b"id: %d\nevent: expired\ndata: %s\n\n" % (first_id - 1, data))
        self.cursor = first_id - 1

    async def run(self) -> None:
        store, notifier = self.streams.store, self.streams.notifier
        broadcaster = self.streams.broadcaster
        ctx, chan = self.context, self.channel
        page: list[Event] = self.first or []
        behind = self.first is not None and self.first.cut
        self.first = None
        while True:
            if page:
                self.write_events(page)
            # While the client drains it, the page is in the transport's
            # buffer only: one page per stream, and nothing left here for a
            # disconnect to strand.
            page = []
            await self.pacer.ready()
            if not behind:
                # Near the head: what the notifier already holds in memory
                # (one read or one publish serves every stream), else the
                # group, which follows the channel from exactly our cursor
                # (so nothing the memory lacks is skipped).
                page = notifier.recent(ctx, chan, self.cursor, PAGE_EVENTS, PAGE_BYTES)
                if page:
                    continue
                left = broadcaster.join(ctx, chan, self)
                if left is not None:
                    # Until our client stops reading; then on by ourselves
                    # (from the store if retention made the group skip).
                    behind = await left
                    continue
                # The group is already past us: read what we miss.
            read = await self._retrying(partial(store.page, ctx, chan, self.cursor, MAX_ID + 1, PAGE_EVENTS))
            if not read or read[0].id > self.cursor + 1:
                # Retention may have deleted what follows the cursor.
                gap = await self._retrying(partial(self.streams._gap, ctx, chan, self.cursor, read))
                if gap is not None:
                    self.write_expired(gap)
            behind = read.cut
            page = read
            del read

    async def _retrying(self, read: Callable[[], Awaitable[T]]) -> T:
        return await retrying(
            self.streams.reactor,
            read,
            what=f"SSE stream of {self.context}/{self.channel}",
            between=self._keep_alive,
        )

    def _keep_alive(self) -> None:
        """While the database is away: a keep-alive once the stream has been
        silent for the heartbeat."""
        if self.streams.reactor.seconds() - self.last_write >= self.streams.heartbeat:
            self.write(HEARTBEAT)
