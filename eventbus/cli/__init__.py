"""``eventbus``: the command line (click), one subcommand per chore.

``eventbus serve`` runs the server (the twistd plugin's options); ``eventbus
token`` manages tokens on the database itself; every other command is a
client of a running server's HTTP API through :mod:`eventbus.client`
(``--url``, ``--token``, defaulting to ``EVENTBUS_URL``/``EVENTBUS_TOKEN``).

Invariant: a command's answer, notes and errors are printed by
:class:`~eventbus.cli.output.Output`, and its exit status is 0 when it did
what it was asked, 1 when the server refused, 2 for a usage error, 3 when
the server could not be reached; a client error never escapes as a
traceback.

Layer rule: an entry point, like :mod:`eventbus.tap`: may import
everything; the client commands use only :mod:`eventbus.client`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from eventbus.cli.output import USAGE, Failed, Output
from eventbus.client import Client, EventBusError

#: First arguments of ``eventbus`` / ``python -m eventbus`` that name a
#: command (anything else that starts with ``-`` is a server option).
COMMANDS = (
    "serve",
    "token",
    "publish",
    "tail",
    "get",
    "channels",
    "consumers",
    "subscriptions",
    "export",
    "import",
)


def run(argv: list[str]) -> NoReturn:
    """Run a command line (exits the process)."""
    main(args=argv, prog_name="eventbus")
    raise SystemExit(0)  # click exits by itself; for the type checker


class Commands(click.Group):
    """The command group: a client error becomes one line and its exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EventBusError as e:
            raise Failed(e) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The event bus: its server and its chores.

    `eventbus serve [server options]` (or `eventbus [server options]`, or no
    arguments at all) runs the server, like `twistd -n eventbus`; see
    `eventbus serve --help` for its options.  The other commands talk to a
    running server (--url, --token; or EVENTBUS_URL, EVENTBUS_TOKEN).
    """


class App:
    """What a client command works with: a client and its output."""

    def __init__(self, url: str | None, token: str | None, as_json: bool) -> None:
        self.client = Client(url, token, attempts=3)
        self.out = Output(as_json)

    def close(self) -> None:
        self.client.close()


def client_command(group: click.Group, name: str | None = None, **settings: Any) -> Callable[..., Any]:
    """A command of ``group`` that talks to a server: it gets ``--url``,
    ``--token`` and ``--json``, and an :class:`App` as its first argument."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def command(url: str | None, token: str | None, as_json: bool, **kw: Any) -> Any:
            app = App(url, token, as_json)
            try:
                return f(app, **kw)
            except EventBusError as e:
                raise Failed(e) from None
            finally:
                app.close()

        command = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
            command
        )
        command = click.option(
            "--token", envvar="EVENTBUS_TOKEN", default=None, help="Bearer token [env EVENTBUS_TOKEN]."
        )(command)
        command = click.option(
            "--url",
            envvar="EVENTBUS_URL",
            default="http://127.0.0.1:33002",
            show_default=True,
            help="The server [env EVENTBUS_URL].",
        )(command)
        return group.command(name, **settings)(command)

    return deco


def channel_arg(value: str) -> tuple[str, str]:
    """``CONTEXT/CHANNEL``."""
    context, slash, channel = value.partition("/")
    if not slash or not context or not channel or "/" in channel:
        raise click.BadParameter(f"expected CONTEXT/CHANNEL, got {value!r}")
    return context, channel


def usage(message: str) -> NoReturn:
    raise Failed(message, USAGE)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def serve(options: tuple[str, ...]) -> None:
    """Run the server: the same options as `twistd -n eventbus` (see `eventbus serve --help`)."""
    from eventbus.__main__ import serve as run_server

    sys.exit(run_server(list(options)))


def _register() -> None:
    from eventbus.cli import admin, backup, events, tokens

    main.add_command(tokens.token)
    for module in (events, backup, admin):
        module.register(main)


_register()
