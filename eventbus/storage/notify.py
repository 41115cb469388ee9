"""The notification protocol, and the LISTEN connection that receives it.

Every change other processes must hear of is announced with
``pg_notify('eventbus', '<context>/<channel>/<head>')`` inside the
transaction that makes it, so PostgreSQL delivers it after the commit (and
never for a rollback) to every server process listening:

* ``head`` > 0: events up to ``head`` exist in the channel (a publish);
* ``head`` = 0: no new event, but the channel's consumer state changed (a
  nack, retry, ordered ack or ``PUT`` made an event leasable).

Access tokens travel on a second notification channel, ``eventbus_tokens``
(:data:`TOKENS_CHANNEL`), whose payload is the name of the token that was
created or revoked: it cannot be mistaken for a channel's announcement, and
processes that do not know tokens never hear it.  Each process reloads its
token cache when it does (:func:`tokens_notify_sql` writes it).

This module is the only place that writes (:func:`notify_sql`,
:func:`tokens_notify_sql`) or reads (:func:`decode`, :class:`Listener`)
that text.  Notifications sent while the LISTEN connection
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

from eventbus.metrics import ListenerMetrics
from eventbus.storage.connection import Outages, close_for_good, connect_kwargs, make_connection
from eventbus.storage.database import is_outage

log = Logger()

#: The one PostgreSQL notification channel of the event bus.
NOTIFY_CHANNEL = "eventbus"
#: The notification channel of access-token changes; the payload is a token name.
TOKENS_CHANNEL = "eventbus_tokens"
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


def tokens_notify_sql(name: str) -> str:
    """The SQL expression that tells every process a token changed; the
    argument is an SQL expression (a placeholder) of the token's name."""
    return f"pg_notify('{TOKENS_CHANNEL}', {name})"


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

    ``on_notification`` gets each decoded :class:`Notification`,
    ``on_token_changed`` the name of each token created or revoked;
    ``on_recovered`` is called after a reconnect, when notifications may
    have been lost.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        dsn: str,
        on_notification: Callable[[Notification], None],
        on_recovered: Callable[[], None],
        on_token_changed: Callable[[str], None] | None = None,
        outages: Outages | None = None,
        metrics: ListenerMetrics | None = None,
    ) -> None:
        """``outages``: the process's (:attr:`Database.outages`), so that an
        outage is logged once for every connection; ``metrics``: where
        notifications and reconnects are counted."""
        self.reactor = reactor
        self.dsn = dsn
        self.outages = outages if outages is not None else Outages(reactor.seconds)
        self.metrics = metrics if metrics is not None else ListenerMetrics()
        self.on_notification = on_notification
        self.on_recovered = on_recovered
        self.on_token_changed = on_token_changed
        self._conn: txpostgres.Connection | None = None
        self._keepalive: task.LoopingCall | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.detector.connectionIsDead

    async def start(self) -> None:
        conn = make_connection(self.reactor, self.outages)
        await conn.connect(**connect_kwargs(self.dsn))
        conn.addNotifyObserver(self._observe)
        conn.detector.addRecoveryHandler(self._recovered)
        await self._listen(conn)
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

    async def _listen(self, conn: txpostgres.Connection) -> None:
        await conn.runOperation(f"LISTEN {NOTIFY_CHANNEL}")
        if self.on_token_changed is not None:
            await conn.runOperation(f"LISTEN {TOKENS_CHANNEL}")

    def _observe(self, notify: Any) -> None:
        self.metrics.notifications.value += 1
        if notify.channel == TOKENS_CHANNEL and self.on_token_changed is not None:
            self.on_token_changed(notify.payload)
            return
        if notify.channel != NOTIFY_CHANNEL:
            return
        notification = decode(notify.payload, notify.pid)
        if notification is None:
            log.warn("ignoring malformed notification {payload!r}", payload=notify.payload)
            return
        self.on_notification(notification)

    async def _recovered(self) -> None:
        assert self._conn is not None
        try:
            await self._listen(self._conn)
        except Exception as e:
            if not is_outage(e):
                raise
            # Lost again at once: its detector reconnects and calls us again.
            return
        log.info("LISTEN connection re-established; re-checking waiting channels")
        self.metrics.reconnects.value += 1
        self.on_recovered()

    def _probe(self) -> None:
        # Errors are noticed by the connection's detector, which reconnects.
        if self._conn is not None and not self._conn.detector.connectionIsDead:
            self._conn.runQuery("SELECT 1").addErrback(lambda _: None)
