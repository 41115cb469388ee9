"""``eventbus channels``, ``consumers`` and ``subscriptions``: the state of the bus.

Invariant: each command prints what one API call answered (a list is
followed over its pages): a table on a terminal or without one, the API's
own JSON with ``--json``; the actions (``consumers retry``,
``subscriptions enable|delete``) print what changed on standard error.

Layer rule: an entry point (the command line); the client library only.
"""

from __future__ import annotations

from typing import Any

import click

from eventbus.cli import App, Commands, channel_arg, client_command
from eventbus.cli.output import age, when


class DefaultGroup(Commands):
    """A group whose first argument, when it names no subcommand, goes to ``show``
    (``eventbus consumers CTX/CH`` beside ``eventbus consumers dead CTX/CH NAME``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def retention_text(retention: dict[str, Any] | None) -> str:
    if not retention:
        return "-"
    parts = []
    source = retention.get("source") or {}
    for name, text in (
        ("max_age", duration(retention.get("max_age"))),
        ("max_events", retention.get("max_events")),
    ):
        if retention.get(name) is not None:
            mark = "" if source.get(name) != "channel" else "*"
            parts.append(f"{name}={text}{mark}")
    return " ".join(parts) or "keep all"


def register(main: click.Group) -> None:
    @client_command(main)
    @click.option("--context", help="Only the channels of this context.")
    def channels(app: App, context: str | None) -> None:
        """The channels: first and last id, count, last event's age, retention
        (* marks a channel's own setting)."""
        items = list(app.client.channels.list(context))
        rows = [
            (
                f"{c['context']}/{c['channel']}",
                c.get("first_id"),
                c.get("last_id"),
                c.get("count"),
                age(c.get("last_timestamp")),
                retention_text(c.get("retention")),
            )
            for c in items
        ]
        app.out.table(("CHANNEL", "FIRST", "LAST", "COUNT", "LAST EVENT", "RETENTION"), rows, items)

    @main.group(cls=DefaultGroup)
    def consumers() -> None:
        """Durable consumers: `consumers CTX/CH [NAME]`, `consumers dead|retry ...`."""

    @client_command(consumers, "show")
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.argument("name", required=False)
    def show_consumers(app: App, target: str, name: str | None) -> None:
        """A channel's consumers (or one): lag, in flight, dead."""
        context, channel = channel_arg(target)
        if name is not None:
            items = [app.client.consumer(context, channel, name).state()]
        else:
            items = app.client.consumers(context, channel)
        rows = [
            (
                s["name"],
                s["mode"],
                s["cursor"],
                s["lag"],
                s["in_flight"],
                s["dead"],
                s.get("expired", 0),
                s["lease"],
                s["max_deliveries"],
            )
            for s in items
        ]
        columns = ("NAME", "MODE", "CURSOR", "LAG", "IN FLIGHT", "DEAD", "EXPIRED", "LEASE", "MAX DELIVERIES")
        app.out.table(columns, rows, items[0] if name is not None else items)

    @client_command(consumers, "dead")
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.argument("name")
    def dead(app: App, target: str, name: str) -> None:
        """A consumer's dead-lettered events."""
        context, channel = channel_arg(target)
        items = app.client.consumer(context, channel, name).dead()
        rows = [
            (d.event.id, d.deliveries, when(d.event.timestamp), d.event.issuer, str(d.event.payload)[:120])
            for d in items
        ]
        data = [{"event": d.event.to_dict(), "deliveries": d.deliveries} for d in items]
        app.out.table(("ID", "DELIVERIES", "TIME", "ISSUER", "PAYLOAD"), rows, data)

    @client_command(consumers, "retry")
    @click.argument("target", metavar="CONTEXT/CHANNEL")
    @click.argument("name")
    @click.argument("event_id", metavar="ID", type=click.IntRange(1))
    def retry(app: App, target: str, name: str, event_id: int) -> None:
        """Put a dead event back to be delivered again."""
        context, channel = channel_arg(target)
        app.client.consumer(context, channel, name).retry(event_id)
        app.out.note(f"event {event_id} of {context}/{channel} goes to {name} again")

    @main.group(cls=DefaultGroup)
    def subscriptions() -> None:
        """Webhook subscriptions: `subscriptions [ID]`, `subscriptions enable|delete ID`."""

    @client_command(subscriptions, "show")
    @click.argument("sub_id", metavar="[ID]", required=False, type=int)
    def show_subscriptions(app: App, sub_id: int | None) -> None:
        """Subscriptions' status: failures, lag, latest error (per channel for one)."""
        if sub_id is None:
            items = app.client.subscriptions.list()
            rows = [subscription_row(s) for s in items]
            app.out.table(SUBSCRIPTION_COLUMNS, rows, items)
            return
        item = app.client.subscriptions.get(sub_id)
        if app.out.as_json:
            app.out.json(item)
            return
        app.out.table(SUBSCRIPTION_COLUMNS, [subscription_row(item)], item)
        rows = [
            (
                name,
                c.get("cursor"),
                c.get("head"),
                c.get("lag"),
                c.get("consecutive_failures"),
                when(c.get("failing_since")),
                c.get("last_status"),
                c.get("last_error"),
            )
            for name, c in sorted((item.get("channels") or {}).items())
        ]
        columns = (
            "CHANNEL",
            "CURSOR",
            "HEAD",
            "LAG",
            "FAILURES",
            "FAILING SINCE",
            "LAST STATUS",
            "LAST ERROR",
        )
        app.out.table(columns, rows, None)

    @client_command(subscriptions, "enable")
    @click.argument("sub_id", metavar="ID", type=int)
    def enable(app: App, sub_id: int) -> None:
        """Make a disabled subscription active again."""
        item = app.client.subscriptions.enable(sub_id)
        if app.out.as_json:
            app.out.json(item)
        app.out.note(f"subscription {sub_id} is {item.get('status')}")

    @client_command(subscriptions, "delete")
    @click.argument("sub_id", metavar="ID", type=int)
    def delete(app: App, sub_id: int) -> None:
        """Delete a subscription."""
        app.client.subscriptions.delete(sub_id)
        app.out.note(f"subscription {sub_id} deleted")


SUBSCRIPTION_COLUMNS = ("ID", "CHANNEL", "URL", "STATUS", "FAILURES", "LAG", "LAST ATTEMPT", "LAST ERROR")


def subscription_row(s: dict[str, Any]) -> tuple[Any, ...]:
    return (
        s["id"],
        f"{s['context']}/{s['channel']}",
        s["url"],
        s["status"],
        s.get("consecutive_failures"),
        s.get("lag"),
        when(s.get("last_attempt")),
        s.get("last_error"),
    )
