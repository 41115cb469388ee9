"""``eventbus token create|list|revoke``: access tokens, on the database itself.

Invariant: the command line works on the same database as the server
(``--dsn``, or the embedded PostgreSQL in ``--data-dir``, with the server's
defaults), through the same :class:`~eventbus.tokens.TokenService` as
``/tokens``, while servers run: a created or revoked token is announced to
every server process by the store's notification, exactly as through the
API.  ``create`` prints the token alone on standard output (so
``TOKEN=$(eventbus token create ...)`` works) and everything else on
standard error.

The embedded PostgreSQL is shared with any server using the same data
directory (:mod:`eventbus.storage.embedded` counts its users), so running
a command never stops it under a server.

Unlike the other commands (clients of a server's HTTP API), these need no
server: they are how the first ``admin`` token is made.

Layer rule: an entry point, like :mod:`eventbus.tap`: may import everything.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from eventbus.config import DEFAULTS
from eventbus.errors import EventBusError
from eventbus.model import TokenRecord

T = TypeVar("T")


@click.group()
def token() -> None:
    """Manage access tokens (the same as the /tokens API)."""


def _database_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--data-dir",
        default=DEFAULTS.data_dir,
        show_default=True,
        help="Where the embedded PostgreSQL keeps its data (when --dsn is not given).",
    )(f)
    f = click.option("--dsn", default=None, help="PostgreSQL connection string of the server's database.")(f)
    return f


@token.command()
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="ACTION:CONTEXT/CHANNEL (publish, read, consume, manage, admin; * for any); repeatable.",
)
@click.option("--issuer", "issuers", multiple=True, help="An issuer it may publish under; repeatable.")
@click.option("--expires", type=float, default=None, help="Seconds until it expires (default: never).")
@_database_options
def create(
    name: str,
    scopes: tuple[str, ...],
    issuers: tuple[str, ...],
    expires: float | None,
    dsn: str | None,
    data_dir: str,
) -> None:
    """Create a token; print it (once: it is not stored) on standard output."""
    record, secret = _with_tokens(
        dsn, data_dir, lambda tokens: tokens.create(name, list(scopes), list(issuers) or None, expires)
    )
    click.echo(secret)
    click.echo(
        f"token {record.name!r} created with scopes {', '.join(record.scopes)}"
        f"{'' if record.expires is None else ', expires ' + _time(record.expires)};"
        " it is shown only this once.",
        err=True,
    )


@token.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array (as GET /tokens answers).")
@_database_options
def list_tokens(as_json: bool, dsn: str | None, data_dir: str) -> None:
    """List the tokens (never their secrets)."""
    records: list[TokenRecord] = _with_tokens(dsn, data_dir, lambda tokens: tokens.list())
    if as_json:
        from eventbus.http.tokens import token_object

        click.echo(json.dumps([token_object(r) for r in records], indent=2))
        return
    rows = [("NAME", "SCOPES", "ISSUERS", "CREATED", "EXPIRES", "LAST USED")]
    for r in records:
        rows.append(
            (
                r.name,
                " ".join(r.scopes),
                "*" if r.issuers is None else " ".join(r.issuers),
                _time(r.created),
                _time(r.expires),
                _time(r.last_used),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@token.command()
@click.argument("name")
@_database_options
def revoke(name: str, dsn: str | None, data_dir: str) -> None:
    """Revoke a token: every server refuses it within seconds, open streams included."""
    _with_tokens(dsn, data_dir, lambda tokens: tokens.revoke(name))
    click.echo(f"token {name!r} revoked", err=True)


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat(timespec="seconds")


def _with_tokens(dsn: str | None, data_dir: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(TokenService)`` against the database, on a reactor of its own."""
    from twisted.internet import defer
    from twisted.internet import reactor as default_reactor

    from eventbus.storage.database import Database
    from eventbus.storage.embedded import EmbeddedPostgres
    from eventbus.storage.migrate import migrate
    from eventbus.storage.tokens import TokenStore
    from eventbus.tokens import TokenService

    reactor: Any = default_reactor
    embedded = None
    if not dsn:
        embedded = EmbeddedPostgres(data_dir)
        dsn = embedded.start()
    outcome: list[Any] = []

    async def session() -> T:
        database = Database(reactor, dsn or "", pool_size=1)
        await database.open()
        try:
            await migrate(database)
            return await work(TokenService(TokenStore(database)))
        finally:
            database.close()

    def done(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    try:
        reactor.callWhenRunning(lambda: defer.ensureDeferred(session()).addBoth(done))
        reactor.run()
    finally:
        if embedded is not None:
            embedded.stop()
    result = outcome[0] if outcome else RuntimeError("interrupted")
    failure = getattr(result, "value", None) if hasattr(result, "raiseException") else None
    if isinstance(failure, EventBusError):
        raise click.ClickException(failure.message)
    if failure is not None:
        raise click.ClickException(f"{type(failure).__name__}: {failure}")
    if isinstance(result, Exception):
        raise click.ClickException(str(result))
    return result
