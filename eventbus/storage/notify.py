"""The notification protocol, and the LISTEN connection that receives it.

Every change other processes must hear of is announced with
``pg_notify('eventbus', '<context>/<channel>/<head>')`` inside the
transaction that makes it, so PostgreSQL delivers it after the commit (and
never for a rollback) to every server process listening:

* ``head`` > 0: events up to ``head`` exist in the channel (a publish);
* ``head`` = 0: no new event, but the channel's consumer state changed (a
  nack, retry, ordered ack or ``PUT`` made an event leasable).

This module is the only place that writes (:func:`notify_sql`) or reads
(:func:`decode`) that text.  Notifications sent while the LISTEN connection
is down are lost: :class:`Listener` re-arms itself after reconnecting and
tells its owner, who must then re-read whatever it waits for.

Layer rule: storage; SQL and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from txpostgres import txpostgres

from eventbus.storage.database import close_for_good, connect_kwargs, make_connection

log = Logger()

#: The one PostgreSQL notification channel of the event bus.
NOTIFY_CHANNEL = "eventbus"
#: ``head`` of a notification that announces no event (a consumer state change).
STATE_CHANGED = 0
#: How often the LISTEN connection is probed, so a silently dead one is noticed.
LISTEN_KEEPALIVE_S = 10.0


class Notification(NamedTuple):
    context: str
    channel: str
    #: Events up to this id exist; :data:`STATE_CHANGED` announces none.
    head: int
    #: The PostgreSQL backend that sent it (to skip our own echoes).
    pid: int


def notify_sql(context: str, channel: str, head: str) -> str:
    """The SQL expression that sends a notification; arguments are SQL
    expressions (placeholders or columns) of the context, channel and head."""
    return f"pg_notify('{NOTIFY_CHANNEL}', {context} || '/' || {channel} || '/' || {head})"


def decode(payload: str, pid: int = 0) -> Notification | None:
    """The notification a payload carries, or None if it is not ours."""
    try:
        rest, head = payload.rsplit("/", 1)
        context, channel = rest.split("/", 1)
        head_id = int(head)
    except ValueError:
        return None
    if head_id < 0:
        return None
    return Notification(context, channel, head_id, pid)


class Listener:
    """The LISTEN connection: forwards notifications, re-arms itself after outages.

    ``on_notification`` gets each decoded :class:`Notification`;
    ``on_recovered`` is called after a reconnect, when notifications may
    have been lost.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        dsn: str,
        on_notification: Callable[[Notification], None],
        on_recovered: Callable[[], None],
    ) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.on_notification = on_notification
        self.on_recovered = on_recovered
        self._conn: txpostgres.Connection | None = None
        self._keepalive: task.LoopingCall | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.detector.connectionIsDead

    async def start(self) -> None:
        conn = make_connection(self.reactor)
        await conn.connect(**connect_kwargs(self.dsn))
        conn.addNotifyObserver(self._observe)
        conn.detector.addRecoveryHandler(self._recovered)
        await conn.runOperation(f"LISTEN {NOTIFY_CHANNEL}")
        self._conn = conn
        self._keepalive = task.LoopingCall(self._probe)
        self._keepalive.clock = self.reactor
        self._keepalive.start(LISTEN_KEEPALIVE_S, now=False)

    def stop(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._conn is not None:
            close_for_good(self._conn)
            self._conn = None

    def _observe(self, notify: Any) -> None:
        if notify.channel != NOTIFY_CHANNEL:
            return
        notification = decode(notify.payload, notify.pid)
        if notification is None:
            log.warn("ignoring malformed notification {payload!r}", payload=notify.payload)
            return
        self.on_notification(notification)

    async def _recovered(self) -> None:
        log.info("LISTEN connection re-established; re-checking waiting channels")
        assert self._conn is not None
        await self._conn.runOperation(f"LISTEN {NOTIFY_CHANNEL}")
        self.on_recovered()

    def _probe(self) -> None:
        # Errors are noticed by the connection's detector, which reconnects.
        if self._conn is not None and not self._conn.detector.connectionIsDead:
            self._conn.runQuery("SELECT 1").addErrback(lambda _: None)
