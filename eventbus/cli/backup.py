"""``eventbus export`` and ``eventbus import``: a channel to NDJSON and back.

Invariant: ``export`` writes every stored event as the server's own JSON
text of it, one per line (ids, issuers, timestamps and payloads exactly as
stored; a payload's line breaks, which can only be whitespace between JSON
tokens, become spaces), so exporting a channel restored from a file gives
that file again, byte for byte.  ``import`` restores such a file through
``POST /channels/{context}/{channel}/restore`` in batches, each atomic and
each expecting the channel's last id the one before it left (the first: a
channel never written), so a restore never interleaves with publishes and a
batch whose answer was lost is recognised (the 409's ``last_id`` is that
batch's last id) instead of failing or storing twice.  ``--append``
publishes the payloads as new events instead.

Layer rule: an entry point (the command line); the client library only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import click

from eventbus.cli import App, channel_arg, client_command
from eventbus.cli.output import USAGE, Counter, Failed, one_line
from eventbus.client import Conflict, NotFound, Unavailable
from eventbus.client.calls import MAX_BODY
from eventbus.client.wire import backoff, members

#: Room left in a request body for the array around the lines.
BODY_MARGIN = 1024
#: Attempts of one restore batch when the server cannot be reached.
RESTORE_ATTEMPTS = 6


def register(main: click.Group) -> None:
    @client_command(main, "export")
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.option(
        "--to", "path", default="-", show_default=True, help="The file to write (- : standard output)."
    )
    def export(app: App, target: str, path: str) -> None:
        """Every stored event of a channel as NDJSON (for `eventbus import`)."""
        context, channel = channel_arg(target)
        try:
            total = app.client.channels.get(context, channel).get("count")
        except NotFound:
            total = None
        first = last = None
        sink: IO[str] = sys.stdout if path == "-" else open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        try:
            with app.out.progress(f"exporting {context}/{channel}", total) as counter:
                for event in app.client.history(context, channel):
                    sink.write(one_line(event.raw) + "\n")
                    first = event.id if first is None else first
                    last = event.id
                    counter.advance()
        finally:
            if sink is not sys.stdout:
                sink.close()
        where = "standard output" if path == "-" else path
        summary(app, counter, "exported", context, channel, first, last, f" to {where}", path != "-")

    @client_command(main, "import")
    @click.argument("source", metavar="FILE", type=click.File("rb"))
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.option("--append", is_flag=True, help="Publish the payloads as new events (new ids and times).")
    @click.option(
        "--batch",
        "batch_size",
        type=click.IntRange(1, 100000),
        default=1000,
        show_default=True,
        help="Events per request.",
    )
    def import_(app: App, source: IO[bytes], target: str, append: bool, batch_size: int) -> None:
        """Restore an export into a channel never written (needs admin), keeping
        ids and timestamps; or with --append publish its payloads anew."""
        context, channel = channel_arg(target)
        total = count_lines(source)
        verb = "appended" if append else "restored"
        with app.out.progress(f"importing into {context}/{channel}", total) as counter:
            batches = runs(lines(source), batch_size, by_issuer=append)
            first, last = (append_runs if append else restore_runs)(app, context, channel, batches, counter)
        summary(app, counter, verb, context, channel, first, last, "", True)


def summary(
    app: App,
    counter: Counter,
    verb: str,
    context: str,
    channel: str,
    first: int | None,
    last: int | None,
    where: str,
    json_ok: bool,
) -> None:
    if app.out.as_json and json_ok:
        app.out.json(
            {"context": context, "channel": channel, verb: counter.count, "first_id": first, "last_id": last}
        )
    ids = "" if first is None else f" (ids {first}-{last})"
    app.out.note(f"{verb} {counter.count} event(s) of {context}/{channel}{ids}{where} in {counter.rate()}")


def count_lines(source: IO[bytes]) -> int | None:
    """Lines of a file that can be read twice (None for a pipe)."""
    if not source.seekable():
        return None
    total = sum(1 for line in source if line.strip())
    source.seek(0)
    return total


def lines(source: IO[bytes]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(source, start=1):
        text = raw.strip()
        if text:
            try:
                yield number, text.decode("utf-8")
            except UnicodeDecodeError:
                raise Failed(f"line {number}: not UTF-8", USAGE) from None


def fields(number: int, text: str) -> dict[str, tuple[str, object]]:
    try:
        found = members(text)
    except ValueError:
        raise Failed(f"line {number}: not an event object (a line of `eventbus export`)", USAGE) from None
    for name in ("id", "issuer", "payload"):
        if name not in found:
            raise Failed(f"line {number}: the event has no {name!r}", USAGE)
    return found


def runs(
    source: Iterator[tuple[int, str]], batch_size: int, by_issuer: bool
) -> Iterator[list[tuple[int, str]]]:
    """Runs of lines that fit one request (and, for --append, share an issuer)."""
    run: list[tuple[int, str]] = []
    size = 0
    issuer: object = None
    for number, text in source:
        this = fields(number, text)["issuer"][1] if by_issuer else None
        if run and (
            len(run) >= batch_size or size + len(text) + 1 > MAX_BODY - BODY_MARGIN or this != issuer
        ):
            yield run
            run, size = [], 0
        run.append((number, text))
        size += len(text) + 1
        issuer = this
    if run:
        yield run


def restore_runs(
    app: App, context: str, channel: str, batches: Iterator[list[tuple[int, str]]], counter: Counter
) -> tuple[int | None, int | None]:
    first: int | None = None
    after = 0
    for run in batches:
        number, text = run[-1]
        end = fields(number, text)["id"][1]
        if not isinstance(end, int):
            raise Failed(f"line {number}: the event's id is not a number", USAGE)
        answer = restore_once(app, context, channel, [t for _, t in run], after, end)
        first = int(answer.get("first_id", after + 1)) if first is None else first
        after = end
        counter.advance(len(run))
    return first, (after if first is not None else None)


def restore_once(
    app: App, context: str, channel: str, texts: list[str], after: int, end: int
) -> dict[str, Any]:
    """One batch, sent again while the server cannot be reached; a 409 that
    says the channel already ends where this batch ends means an earlier
    attempt of it was stored."""
    for attempt in range(RESTORE_ATTEMPTS):
        try:
            return app.client.channels.restore(context, channel, texts, after)
        except Conflict as e:
            if attempt > 0 and e.last_id == end:
                return {"last_id": end}
            raise
        except Unavailable:
            if attempt == RESTORE_ATTEMPTS - 1:
                raise
            time.sleep(backoff(attempt))
    raise AssertionError("unreachable")


def append_runs(
    app: App, context: str, channel: str, batches: Iterator[list[tuple[int, str]]], counter: Counter
) -> tuple[int | None, int | None]:
    first = last = None
    for run in batches:
        found = [fields(number, text) for number, text in run]
        issuer = found[0]["issuer"][1]
        if not isinstance(issuer, str):
            raise Failed(f"line {run[0][0]}: the event's issuer is not a string", USAGE)
        stored = app.client.publish_batch(context, channel, [f["payload"][0] for f in found], issuer=issuer)
        first = stored[0].id if first is None else first
        last = stored[-1].id
        counter.advance(len(stored))
    return first, last
