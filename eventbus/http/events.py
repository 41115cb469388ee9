"""``/events``: publish, read the history, walk with ``peek``, follow over SSE.

Invariant: a ``201`` is sent only after the event is committed (or, for a
repeat of an ``Idempotency-Key``, was committed by the first publish), and
every event a reader is given is a committed one, in id order; a reader whose
next events retention deleted is told so (a ``410``, or ``Events-Missed``
with ``on_expired=earliest``), never moved past them in silence.

Handlers parse (:mod:`.params`), call the event store or the notifier, and
render (:mod:`.render`); errors are raised and rendered by the router.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from twisted.web.server import Request

from eventbus.auth import Action, publishing_issuer
from eventbus.errors import Gone, InvalidInput, NotFound, TooLarge
from eventbus.http import access, params, render
from eventbus.http.router import Router
from eventbus.http.streams import EventStreams, stream_history
from eventbus.model import MAX_ID, Event, Pruned, render_event, render_events
from eventbus.notifier import Notifier
from eventbus.storage.conditional import ConditionalAppends
from eventbus.storage.events import EventStore

#: History takes ``start`` and ``limit``; ``peek`` walks instead, waiting up
#: to ``timeout`` seconds, and says what to do when retention deleted what
#: follows the cursor (``on_expired``).
READ_QUERY = params.QueryParams(names=("start", "limit"), modes={"peek": ("timeout", "on_expired")})
#: ``on_expired``: answer 410 Gone (the default), or the first stored event.
ON_EXPIRED = ("error", "earliest")
#: Where a stream starts (``Last-Event-ID``, a header, wins).
STREAM_QUERY = params.QueryParams(names=("after",))


class EventsResource:
    """The routes under ``/events``."""

    router = Router()

    def __init__(
        self,
        store: EventStore,
        conditional: ConditionalAppends,
        notifier: Notifier,
        streams: EventStreams,
        max_batch: int,
        max_wait: float,
    ) -> None:
        self.store = store
        self.conditional = conditional
        self.notifier = notifier
        self.streams = streams
        self.max_batch = max_batch
        #: The longest ``timeout`` of a ``peek`` (``--max-wait``).
        self.max_wait = max_wait

    @router.route("/events/<context>/<channel>", methods=["POST"], need=(Action.PUBLISH,))
    async def publish(self, request: Request, context: str, channel: str) -> bytes:
        issuer = publishing_issuer(access.principal_of(request), params.issuer(request))
        raw = params.body(request)
        condition = params.publish_condition(request, raw)
        text, value = params.payload(raw)
        if isinstance(value, list):
            payloads = self._batch(text, value)
        elif isinstance(value, dict):
            payloads = [text]
        else:
            raise InvalidInput("the payload must be a JSON object (or an array of objects)")
        if condition is None:
            events = await self.store.append(context, channel, issuer, payloads)
        else:
            appended = await self.conditional.append(context, channel, issuer, payloads, condition)
            events = appended.events
            if appended.replayed:
                request.setHeader(b"Idempotent-Replayed", b"true")
        if isinstance(value, list):
            return render.body(request, b"[" + b",".join(render_events(context, channel, events)) + b"]", 201)
        [event] = events
        request.setHeader(b"Location", f"/events/{context}/{channel}/{event.id}".encode())
        return render.body(request, render_event(context, channel, event), 201)

    def _batch(self, text: str, values: list[object]) -> list[str]:
        """An array body: its events, to be stored atomically, in array order."""
        if not values:
            raise InvalidInput("a batch must hold at least one event")
        if len(values) > self.max_batch:
            raise TooLarge(f"a batch may hold at most {self.max_batch} events, got {len(values)}")
        for i, value in enumerate(values):
            if not isinstance(value, dict):
                raise InvalidInput(f"batch element {i} is not a JSON object")
        return params.batch(text)

    @router.route("/events/<context>/<channel>", methods=["GET"], need=(Action.READ,), query=READ_QUERY)
    async def read(self, request: Request, context: str, channel: str) -> bytes | None:
        query = params.query(request)  # only what READ_QUERY allows together
        if "peek" in query:
            cursor = params.int_param("peek", query["peek"], 0, MAX_ID)
            timeout = params.timeout_param(query.get("timeout"), self.max_wait)
            earliest = params.choice("on_expired", query.get("on_expired", "error"), ON_EXPIRED) == "earliest"
            if request.method == b"HEAD":
                timeout = 0  # the headers of what is there now, never a wait
            if timeout == 0:
                return await self._peek(request, context, channel, cursor, timeout, earliest)
            return await access.held(
                request, lambda: self._peek(request, context, channel, cursor, timeout, earliest)
            )
        limit = None
        if "limit" in query:
            limit = params.int_param("limit", query["limit"], 1, 2**63 - 1)
        start = params.start_param(query["start"]) if "start" in query else None
        await stream_history(request, self.store, context, channel, start, limit)
        return None

    async def _peek(
        self, request: Request, context: str, channel: str, cursor: int, timeout: float, earliest: bool
    ) -> bytes:
        """The first event after ``cursor``; if retention deleted the ones
        right after it, a 410 naming the first stored, or (``earliest``)
        that one with ``Events-Missed``."""
        clock = self.streams.reactor
        deadline = clock.seconds() + timeout
        after = cursor
        while True:
            remaining = max(0.0, deadline - clock.seconds())
            # Inline rather than a coroutine of its own: a held peek keeps
            # every frame of its chain alive while it waits.
            if remaining == 0:
                recent = self.notifier.recent(context, channel, after, 1)
                found = recent[0] if recent else await self.store.first_after(context, channel, after)
            else:
                found = await self.notifier.next_event(context, channel, after, remaining)
            first = found.first_id if isinstance(found, Pruned) else found.id if found is not None else None
            if first is None or first == after + 1:
                break
            if not earliest:
                raise Gone(
                    f"events {cursor + 1} to {first - 1} of {context}/{channel} were deleted by retention;"
                    f" the first event {'stored' if isinstance(found, Event) else 'to come'} is {first}",
                    first_id=first,
                    missed=first - cursor - 1,
                )
            if isinstance(found, Event):
                break
            after = first - 1  # nothing is stored: wait for that one
            if timeout == 0 or clock.seconds() >= deadline:
                break
        if not isinstance(found, Event):
            return render.no_content(request)
        if found.id > cursor + 1:
            request.setHeader(b"Events-Missed", b"%d" % (found.id - cursor - 1))
        return render.body(request, render_event(context, channel, found))

    @router.route(
        "/events/<context>/<channel>/stream", methods=["GET"], need=(Action.READ,), query=STREAM_QUERY
    )
    async def stream(self, request: Request, context: str, channel: str) -> None:
        """Server-Sent Events; werkzeug ranks this static segment above <event_id>."""
        query = params.query(request)
        after = None
        if "after" in query:
            after = params.int_param("after", query["after"], 0, MAX_ID)
        last_event_id = params.last_event_id(request)
        if last_event_id is not None:
            after = last_event_id  # a reconnect resumes where it stopped
        await access.held(request, lambda: self.streams.serve(request, context, channel, after))

    @router.route("/events/<context>/<channel>/<event_id>", methods=["GET"], need=(Action.READ,))
    async def one(self, request: Request, context: str, channel: str, event_id: str) -> bytes:
        number = params.path_id(event_id)
        event = None if number is None else await self.store.event(context, channel, number)
        if event is None:
            raise NotFound(
                f"no event {event_id[:40]!r} in {context}/{channel}"
                if number is None
                else f"no event {event_id} in {context}/{channel}"
            )
        return render.body(request, render_event(context, channel, event))
