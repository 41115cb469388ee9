"""``eventbus publish``, ``tail`` and ``get``: events from the command line.

Invariant: ``publish`` sends each payload's text exactly as given (one
argument, or one NDJSON line), in batches that are each atomic and carry an
``Idempotency-Key`` (``<key>.<n>`` with ``--idempotency-key``), so a batch
retried after a lost answer is stored once; ``tail`` and ``get`` print the
server's JSON of each event (on one line) unless standard output is a
terminal.

Layer rule: an entry point (the command line); the client library only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import BinaryIO

import click

from eventbus.cli import App, channel_arg, client_command, usage
from eventbus.cli.output import USAGE, Failed, when
from eventbus.client import Event, EventBusError
from eventbus.client.calls import MAX_BODY


def register(main: click.Group) -> None:
    @client_command(main)
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.argument("payload", required=False, metavar="[JSON]")
    @click.option("--issuer", envvar="EVENTBUS_ISSUER", help="X-EVENT-ISSUER [env EVENTBUS_ISSUER].")
    @click.option("--idempotency-key", help="Idempotency-Key (a batch n from standard input gets KEY.n).")
    @click.option(
        "--batch",
        "batch_size",
        type=click.IntRange(1, 100000),
        default=500,
        show_default=True,
        help="Events per request when reading NDJSON from standard input.",
    )
    def publish(
        app: App,
        target: str,
        payload: str | None,
        issuer: str | None,
        idempotency_key: str | None,
        batch_size: int,
    ) -> None:
        """Publish one event (JSON), or NDJSON from standard input in batches."""
        context, channel = channel_arg(target)
        if payload is not None:
            event = app.client.publish(
                context, channel, payload, issuer=issuer, idempotency_key=idempotency_key
            )
            app.out.event(event)
            return
        if sys.stdin.isatty():
            usage("give the payload as an argument, or NDJSON on standard input")
        publish_lines(app, context, channel, sys.stdin.buffer, issuer, idempotency_key, batch_size)

    @client_command(main)
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.option(
        "--from", "from_id", type=click.IntRange(1), help="Start with event ID (default: new events only)."
    )
    @click.option("--from-start", is_flag=True, help="Start with the channel's first event.")
    @click.option("--issuer", help="Only events of this issuer.")
    @click.option("-n", "--count", type=click.IntRange(1), help="Stop after this many events.")
    def tail(
        app: App, target: str, from_id: int | None, from_start: bool, issuer: str | None, count: int | None
    ) -> None:
        """Follow a channel live, until Ctrl-C (reconnecting across restarts)."""
        context, channel = channel_arg(target)
        if from_id is not None and from_start:
            usage("--from and --from-start cannot be combined")
        if from_start or from_id is not None:
            events = app.client.follow(
                context, channel, after=0 if from_start else (from_id or 1) - 1, on_expired="skip"
            )
        else:
            events = app.client.stream(context, channel, on_expired="skip")
        shown = 0
        try:
            for event in events:
                if event.missed:
                    app.out.note(f"({event.missed} event(s) before #{event.id} were deleted by retention)")
                if issuer is not None and event.issuer != issuer:
                    continue
                app.out.event(event)
                sys.stdout.flush()
                shown += 1
                if count is not None and shown >= count:
                    return
        except KeyboardInterrupt:
            return  # Ctrl-C is how a tail ends

    @client_command(main)
    @click.argument("target", metavar="CONTEXT/CHANNEL[/ID]")
    @click.option("--start", help="From this moment: unix seconds or ISO-8601.")
    @click.option("--limit", type=click.IntRange(1), help="At most this many events.")
    def get(app: App, target: str, start: str | None, limit: int | None) -> None:
        """The channel's stored events (or one event: CONTEXT/CHANNEL/ID)."""
        parts = target.split("/")
        if len(parts) == 3:
            if start is not None or limit is not None:
                usage("--start and --limit apply to a channel, not to one event")
            if not parts[2].isdigit():
                usage(f"an event id is a number, got {parts[2]!r}")
            app.out.event(app.client.event(parts[0], parts[1], int(parts[2])))
            return
        context, channel = channel_arg(target)
        print_events(app, app.client.history(context, channel, start=start, limit=limit))


def print_events(app: App, events: Iterator[Event]) -> None:
    """Events as a table on a terminal, a JSON array with --json, else one per line."""
    out = app.out
    if out.as_json:
        out.stdout.write("[")
        for n, event in enumerate(events):
            out.stdout.write(("," if n else "") + event.raw)
        out.stdout.write("]\n")
        return
    if not out.rich:
        for event in events:
            out.event(event)
        return
    rows = []
    for event in events:
        payload = json.dumps(event.payload, ensure_ascii=False)
        rows.append((event.id, when(event.timestamp), event.issuer, payload[:200]))
    out.table(("ID", "TIME", "ISSUER", "PAYLOAD"), rows, None)


def ndjson(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of NDJSON input, each checked to be a JSON object."""
    for number, line in enumerate(source, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError as e:
            raise Failed(f"line {number}: not valid JSON ({e})", USAGE) from None
        if not isinstance(value, dict):
            raise Failed(f"line {number}: not a JSON object", USAGE)
        yield number, text


def publish_lines(
    app: App,
    context: str,
    channel: str,
    source: BinaryIO,
    issuer: str | None,
    key: str | None,
    batch_size: int,
) -> None:
    """Publish NDJSON payloads in batches (each atomic, each with its own key)."""
    first = last = None
    batch: list[bytes] = []
    size = 0
    n = 0
    with app.out.progress(f"publishing to {context}/{channel}", None) as counter:

        def flush() -> None:
            nonlocal first, last, batch, size, n
            if not batch:
                return
            stored = app.client.publish_batch(
                context, channel, batch, issuer=issuer, idempotency_key=None if key is None else f"{key}.{n}"
            )
            first = stored[0].id if first is None else first
            last = stored[-1].id
            counter.advance(len(stored))
            batch, size, n = [], 0, n + 1

        try:
            try:
                for _, text in ndjson(source):
                    if batch and (len(batch) >= batch_size or size + len(text) + 1 > MAX_BODY - 2):
                        flush()
                    batch.append(text)
                    size += len(text) + 1
            finally:
                flush()  # what came before a bad line is published too
        except (EventBusError, Failed):
            app.out.note(f"published {counter.count} event(s) before the error" + _ids(first, last))
            raise
    summary = {
        "context": context,
        "channel": channel,
        "published": counter.count,
        "first_id": first,
        "last_id": last,
    }
    if app.out.as_json:
        app.out.json(summary)
    app.out.note(
        f"published {counter.count} event(s) to {context}/{channel}{_ids(first, last)} in {counter.rate()}"
    )


def _ids(first: int | None, last: int | None) -> str:
    return "" if first is None else f" (ids {first}-{last})"
