"""``POST /channels/{context}/{channel}/restore``: what a restore request holds.

Invariant: a batch reaches the store only as gap-free ids in increasing
order with timestamps that never decrease, each event's issuer valid and
its payload the exact JSON text of an object within the payload rules
(nesting, unique member names): what a publish would have accepted.  A
timestamp is read from the number as written (``1764248745.123456``), to
the microsecond, so a restored event's timestamp is rendered exactly as it
was exported.

The route (in :mod:`.channels`) needs ``admin``: a restore writes ids and
timestamps that publishers never choose.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import orjson
from twisted.web.server import Request

from eventbus.errors import InvalidInput, TooLarge
from eventbus.http import jsontext, params, render
from eventbus.model import MAX_ID, check_issuer, json_integer
from eventbus.notifier import Notifier
from eventbus.storage.restore import Restored, RestoreStore

#: Members of a restored event; ``context`` and ``channel`` (an export's) are
#: ignored: the path names the channel restored into.
FIELDS = ("id", "issuer", "timestamp", "payload", "context", "channel")
#: ``after``: the channel's last id the batch continues (0: a channel never written).
QUERY = params.QueryParams(names=("after",))
#: The latest timestamp accepted: the end of year 9999.
MAX_TIMESTAMP_S = params.MAX_START_S


def after_param(query: dict[str, str]) -> int:
    if "after" not in query:
        raise InvalidInput(
            "after is required: the channel's last id (0 for a channel that never had an event)"
        )
    return params.int_param("after", query["after"], 0, MAX_ID)


def restored_events(body: bytes, max_batch: int) -> list[Restored]:
    """The events of a restore body: a JSON array of event objects (as
    ``GET /events/...`` renders them), checked as the module says."""
    if not body.strip():
        raise InvalidInput("empty body: a restore takes a JSON array of event objects")
    try:
        text = body.decode("utf-8")
        values = orjson.loads(body)
    except UnicodeDecodeError as e:
        raise InvalidInput(f"body is not valid UTF-8 (byte {e.start})") from None
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"body is not valid JSON: {e}") from None
    if not isinstance(values, list) or not values:
        raise InvalidInput("a restore takes a non-empty JSON array of event objects")
    if len(values) > max_batch:
        raise TooLarge(f"a restore batch may hold at most {max_batch} events, got {len(values)}")
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise InvalidInput(f"batch element {i} is not a JSON object")
    _unique_names(body, values)
    texts, _ = jsontext.split_array(text)
    events = []
    for i, (value, element) in enumerate(zip(values, texts, strict=True)):
        events.append(_event(i, value, element))
        if i and events[i].id != events[i - 1].id + 1:
            raise InvalidInput(
                f"event {i} has id {events[i].id}; ids must be consecutive ({events[i - 1].id + 1})"
            )
        if i and events[i].micros < events[i - 1].micros:
            raise InvalidInput(f"event {i} (id {events[i].id}) is older than the one before it")
    return events


def _event(i: int, value: dict[str, object], element: str) -> Restored:
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"event {i} has unknown field(s) {', '.join(map(repr, unknown))[:200]}")
    raw = dict(jsontext.members(element))
    event_id = json_integer(value.get("id"))
    if event_id is None or not 1 <= event_id <= MAX_ID:
        raise InvalidInput(
            f"event {i}: id must be an integer from 1 to {MAX_ID}, got {raw.get('id', 'none')[:40]}"
        )
    issuer = value.get("issuer")
    if not isinstance(issuer, str):
        raise InvalidInput(f"event {i}: issuer must be a string")
    check_issuer(issuer, f"the issuer of event {i}")
    payload = raw.get("payload")
    if payload is None or not isinstance(value.get("payload"), dict):
        raise InvalidInput(f"event {i}: payload must be a JSON object")
    if jsontext.too_deep(payload.encode("utf-8")):
        raise InvalidInput(f"event {i}: {params.DEPTH_MESSAGE}")
    return Restored(event_id, _micros(i, value.get("timestamp"), raw.get("timestamp")), issuer, payload)


def _micros(i: int, value: object, written: str | None) -> int:
    """A timestamp as written, in whole microseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or written is None:
        raise InvalidInput(f"event {i}: timestamp must be a number of unix seconds")
    try:
        seconds = Decimal(written)
    except InvalidOperation:
        raise InvalidInput(f"event {i}: timestamp must be a number of unix seconds") from None
    if not 0 <= seconds <= MAX_TIMESTAMP_S:
        raise InvalidInput(f"event {i}: timestamp must be from 0 to {MAX_TIMESTAMP_S}, got {written[:40]}")
    return int((seconds * 1_000_000).to_integral_value())


def _unique_names(body: bytes, values: list[object]) -> None:
    """No object names a member twice (see :func:`eventbus.http.params.payload`):
    orjson keeps one member per name, so its rendering has fewer colons."""
    try:
        rendered = orjson.dumps(values)
    except TypeError:  # orjson renders 254 levels; payloads have at most MAX_DEPTH
        raise InvalidInput(params.DEPTH_MESSAGE) from None
    if b"\\u003" in body:
        body, rendered = jsontext.without_strings(body), jsontext.without_strings(rendered)
    if body.count(b":") != rendered.count(b":"):
        raise InvalidInput("an object names the same member twice; member names must be unique")


class Restorer:
    """What the restore route does: check the batch, store it, announce it."""

    def __init__(self, store: RestoreStore, notifier: Notifier, max_batch: int) -> None:
        self.store = store
        self.notifier = notifier
        self.max_batch = max_batch

    async def restore(self, request: Request, context: str, channel: str) -> bytes:
        after = after_param(params.query(request))
        events = restored_events(params.body(request), self.max_batch)
        stored = await self.store.restore(context, channel, after, events)
        # Announced to this process's readers as a publish is (other
        # processes hear the NOTIFY of the restore's transaction).
        self.notifier.published(context, channel, stored)
        return render.json(
            request,
            {
                "context": context,
                "channel": channel,
                "first_id": stored[0].id,
                "last_id": stored[-1].id,
                "count": len(stored),
            },
        )
