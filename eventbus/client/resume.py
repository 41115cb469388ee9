"""Following a channel across reconnects: the cursor, and what ends a follow.

``follow`` and ``stream`` read the channel's SSE stream (not long polls):
one connection carries both the catch-up, which the server pages from the
database at the client's pace, and the live events, pushed as they commit;
a walk with ``peek`` would cost one round trip per event (100,000 of them
to catch up on a channel of that size).  Retention's deletions arrive in
the same stream (``event: expired``), so nothing is hidden either way.

Invariant: the cursor is the id of the last event handed to the caller
(or the ``expired`` message's id), and every (re)connection asks for what
follows it with ``Last-Event-ID``, so across dropped connections and
server restarts an event is yielded once and none is skipped; an event at
or before the cursor (which a correct server never sends) is dropped
rather than yielded twice.  Retention's deletions are never skipped
silently: :class:`~eventbus.client.errors.Expired` is raised, or with
``on_expired="skip"`` the next event carries the count in
:attr:`~eventbus.client.model.Event.missed`.

Both flavours drive a :class:`Resume` from their own I/O loop.

Layer rule: the client library; the standard library only.
"""

from __future__ import annotations

import json

from eventbus.client import calls
from eventbus.client.errors import EventBusError, Expired, Unauthorized, Unreachable
from eventbus.client.model import Event
from eventbus.client.wire import Message, backoff

#: What ``follow``/``stream`` do when retention deleted events after the cursor.
ON_EXPIRED = ("raise", "skip")


class Resume:
    """The state of one follow: where it is, and how long to wait before
    connecting again."""

    def __init__(self, context: str, channel: str, after: int, on_expired: str = "raise") -> None:
        if on_expired not in ON_EXPIRED:
            raise ValueError(f"on_expired must be one of {', '.join(ON_EXPIRED)}, got {on_expired!r}")
        self.context = context
        self.channel = channel
        #: The last id handed out (or skipped as expired).
        self.cursor = int(after)
        self.on_expired = on_expired
        self._missed = 0
        self._attempt = 0

    def request(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """Path, query and headers of the next connection."""
        return calls.stream_request(self.context, self.channel, None, self.cursor)

    def take(self, message: Message) -> Event | None:
        """The event a message carries, if it is one to hand out."""
        self._attempt = 0  # the connection works
        if message.event == "event":
            event = Event.from_json(message.data)
            if event.id <= self.cursor:
                return None
            missed, self._missed = self._missed, 0
            self.cursor = event.id
            return event.with_missed(missed) if missed else event
        if message.event == "expired":
            info = json.loads(message.data)
            first_id, missed = int(info["first_id"]), int(info["missed"])
            if self.on_expired == "raise":
                raise Expired(
                    f"{missed} event(s) of {self.context}/{self.channel} after {self.cursor} were deleted"
                    f" by retention; the first one stored is {first_id}",
                    first_id=first_id,
                    missed=missed,
                    status=None,
                )
            self._missed += missed
            self.cursor = max(self.cursor, first_id - 1)
            return None
        if message.event == "error":
            try:
                text = str(json.loads(message.data).get("error"))
            except (ValueError, AttributeError):
                text = message.data[:200]
            # The one error a stream reports in-band: its token was revoked or expired.
            raise Unauthorized(text, status=401, body={"error": text})
        return None

    def retry_in(self, error: EventBusError) -> float:
        """Seconds to wait before connecting again after ``error``; raises it
        if waiting cannot help."""
        if not error.retryable:
            raise error
        delay = backoff(self._attempt)
        self._attempt += 1
        return delay


def ended() -> Unreachable:
    """The server closed a stream (it restarted, or a proxy cut it)."""
    return Unreachable("the stream was closed by the server")
