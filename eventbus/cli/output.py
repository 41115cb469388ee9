"""How the commands talk: rich on a terminal, plain lines otherwise, ``--json`` for scripts.

Invariant: what a command prints on standard output is decided by one
:class:`Output`: with ``--json`` exactly one JSON document (or, for
streams of events, one JSON object per line), without a terminal plain
text with no colours or boxes (aligned columns, one event per line), and
on a terminal rich tables, colours and pretty JSON.  Notes, summaries,
progress bars and errors go to standard error; a progress bar is drawn
only when standard error is a terminal.  Errors are one line,
``error: <status> <message>``, and the exit status says who said no:
0 ok, 1 the server refused, 2 a usage error (click's), 3 the server could
not be reached (no answer, or it is unavailable: worth retrying).

Layer rule: an entry point (the command line); the client library, click
and rich only.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import click
from rich.console import Console
from rich.json import JSON
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from eventbus.client import Event, EventBusError, Unavailable

#: Exit statuses.
OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3


class Failed(click.ClickException):
    """A call failed: one line on standard error, and the exit status of its kind."""

    def __init__(self, error: EventBusError | str, exit_code: int | None = None) -> None:
        super().__init__(str(error))
        if exit_code is None:
            exit_code = UNREACHABLE if isinstance(error, Unavailable) else REFUSED
        self.exit_code = exit_code  # type: ignore[misc]  # a ClassVar in click; ours varies

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def one_line(raw: str) -> str:
    """An event object's text on one line: its line breaks can only be
    whitespace between JSON tokens (JSON strings hold none raw)."""
    if "\n" in raw or "\r" in raw:
        return raw.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return raw


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age(timestamp: float | None, now: float | None = None) -> str:
    """How long ago, roughly: ``42s``, ``5m``, ``3h``, ``12d``."""
    if timestamp is None:
        return "-"
    seconds = max(0.0, (now if now is not None else time.time()) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class RateColumn(ProgressColumn):
    """Events per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} events/s", style="progress.data.speed")


class Output:
    """Standard output and error for one command."""

    def __init__(self, as_json: bool, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        #: Rich output: standard output is a terminal and no --json.
        self.rich = not as_json and self.stdout.isatty()
        self.console = Console(file=self.stdout, highlight=False) if self.rich else None
        self.err_tty = self.stderr.isatty()
        self.err_console = Console(file=self.stderr, highlight=False) if self.err_tty else None

    # -- standard output ------------------------------------------------------------
    def line(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, ensure_ascii=False))

    def document(self, value: Any) -> None:
        """A JSON object: pretty on a terminal, one line otherwise."""
        if self.console is not None:
            self.console.print(JSON.from_data(value))
        else:
            self.json(value)

    def event(self, event: Event) -> None:
        """One event: the server's JSON on one line, or pretty on a terminal."""
        if self.console is None:
            self.line(one_line(event.raw) if event.raw else json.dumps(event.to_dict(), ensure_ascii=False))
            return
        header = Text.assemble(
            (f"#{event.id}", "bold cyan"),
            "  ",
            (when(event.timestamp), "green"),
            "  ",
            (event.issuer, "magenta"),
            ("  " + f"{event.context}/{event.channel}", "dim"),
        )
        self.console.print(header)
        self.console.print(JSON.from_data(event.payload, indent=2))

    def table(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], data: Any, title: str | None = None
    ) -> None:
        """Rows under a header: a rich table on a terminal, aligned plain
        columns otherwise, ``data`` as JSON with ``--json``."""
        if self.as_json:
            self.json(data)
            return
        cells = [["-" if c is None else str(c) for c in row] for row in rows]
        if self.console is not None:
            table = Table(title=title, header_style="bold")
            for name in columns:
                table.add_column(name, overflow="fold")
            for row in cells:
                table.add_row(*row)
            self.console.print(table)
            return
        grid = [list(columns), *cells]
        widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
        for row in grid:
            self.line("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    # -- standard error -----------------------------------------------------------------
    def note(self, text: str) -> None:
        if self.err_console is not None:
            self.err_console.print(Text(text, style="dim"))
        else:
            self.stderr.write(text + "\n")
            self.stderr.flush()

    @contextmanager
    def progress(self, what: str, total: float | None) -> Iterator[Counter]:
        """A progress bar on a terminal (events/s, count); a counter anyway."""
        if self.err_console is None:
            yield Counter(None, None)
            return
        columns: list[ProgressColumn] = [TextColumn("{task.description}")]
        if total is not None:
            columns.append(BarColumn())
        columns += [
            MofNCompleteColumn() if total is not None else TextColumn("{task.completed:,.0f}"),
            RateColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.err_console, transient=False) as bar:
            task = bar.add_task(what, total=total)
            yield Counter(bar, task)


class Counter:
    """What a command counts while its progress bar (if any) shows it."""

    def __init__(self, bar: Progress | None, task: Any) -> None:
        self.bar = bar
        self.task = task
        self.count = 0
        self.started = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.count)

    def rate(self) -> str:
        elapsed = time.monotonic() - self.started
        return f"{elapsed:.1f} s" + (f", {self.count / elapsed:,.0f}/s" if elapsed > 0 and self.count else "")
