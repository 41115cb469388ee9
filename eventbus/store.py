"""Every SQL statement of the event bus, its schema and migrations.

Ordering mechanism
------------------
Each channel has one row in ``channels`` holding ``last_id``.  A publish
increments that counter *inside the inserting transaction* (``UPDATE ...
RETURNING``), so the row lock serialises writers of one channel until their
commit: ids are handed out in commit order, a rolled-back publish gives its
id back, and the committed ids of a channel are always exactly ``1..N``.  A
consumer asking for "the first event with id > cursor" therefore can never
miss an event that commits later with a smaller id, which is what goes wrong
with a plain sequence.  The same row also keeps ``last_ts`` so timestamps
never go backwards within a channel, which makes ``start`` reads a prefix
cut of the id order.

Every publish ends with ``pg_notify('eventbus', '<context>/<channel>/<id>')``;
PostgreSQL delivers it only after commit, to every server process listening.
"""
from __future__ import annotations

import datetime as dt
from collections import deque
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

import psycopg2
import psycopg2.errors
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

from eventbus.errors import Unavailable
from eventbus.model import Event, split_array

log = Logger()

NOTIFY_CHANNEL = "eventbus"
#: How long a request may wait for the database before it gets a 503.
QUERY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5
#: Events fetched per round trip when streaming a channel.
PAGE_SIZE = 1000
#: Group commit: at most this many transactions of appends in flight per
#: process, and at most this many events in one of them.
MAX_FLUSHES_IN_FLIGHT = 2
MAX_GROUP_EVENTS = 5000

T = TypeVar("T")

#: One group commit in one statement.  Per channel (in key order, which is
#: the lock order): bump the counter row by the group's count, taking the
#: ids last_id-n+1 .. last_id; then insert every event with its position
#: within its channel's share; then one NOTIFY per channel, delivered at
#: commit.  Positions are computed by the caller (see Store._write_group).
_APPEND_SQL = """/* eventbus_append: group commit */
WITH req AS (
    SELECT * FROM unnest(%(ctx)s::text[], %(ch)s::text[], %(n)s::bigint[])
           WITH ORDINALITY AS r(context, channel, n, ord)
), upd AS (
    INSERT INTO channels AS c (context, channel, last_id, last_ts)
    SELECT context, channel, n, clock_timestamp() FROM req ORDER BY ord
    ON CONFLICT (context, channel) DO UPDATE
       SET last_id = c.last_id + EXCLUDED.last_id,
           last_ts = greatest(c.last_ts, EXCLUDED.last_ts)
    RETURNING c.id, c.context, c.channel, c.last_id, c.last_ts
), ev AS (
    SELECT * FROM ROWS FROM (json_array_elements(%(payloads)s::json),
                             unnest(%(e_ch)s::int[]), unnest(%(e_pos)s::int[]),
                             unnest(%(e_iss)s::int[])) AS e(payload, ch, pos, iss)
), ins AS (
    INSERT INTO events (channel_id, id, ts, issuer, payload)
    SELECT upd.id, upd.last_id - req.n + ev.pos, upd.last_ts,
           (%(issuers)s::text[])[ev.iss], ev.payload
      FROM ev
      JOIN req ON req.ord = ev.ch
      JOIN upd ON upd.context = req.context AND upd.channel = req.channel
)
SELECT upd.context, upd.channel, upd.last_id, extract(epoch FROM upd.last_ts)::float8
  FROM upd, pg_notify('eventbus', upd.context || '/' || upd.channel || '/' || upd.last_id)
"""

_EVENT_COLUMNS = "e.id, extract(epoch FROM e.ts)::float8, e.issuer, e.payload::text"
_CHANNEL_ID = "(SELECT id FROM channels WHERE context = %(context)s AND channel = %(channel)s)"

MIGRATIONS: list[str] = [
    # 1: the log
    """
    CREATE TABLE channels (
        id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        context  text NOT NULL,
        channel  text NOT NULL,
        last_id  bigint NOT NULL,
        last_ts  timestamptz NOT NULL,
        UNIQUE (context, channel)
    );
    CREATE TABLE events (
        channel_id bigint NOT NULL REFERENCES channels (id),
        id         bigint NOT NULL,
        ts         timestamptz NOT NULL,
        issuer     text NOT NULL,
        payload    json NOT NULL,
        PRIMARY KEY (channel_id, id)
    );
    CREATE INDEX events_channel_ts ON events (channel_id, ts, id);

    -- Append a JSON array of payloads to a channel; returns the first new id
    -- and the shared timestamp.  See the module docstring of eventbus.store.
    CREATE FUNCTION eventbus_append(p_context text, p_channel text,
                                    p_issuer text, p_payloads json)
    RETURNS TABLE (first_id bigint, ts float8)
    LANGUAGE plpgsql AS $$
    DECLARE
        n   bigint := json_array_length(p_payloads);
        cid bigint;
        top bigint;
        t   timestamptz;
    BEGIN
        UPDATE channels
           SET last_id = last_id + n,
               last_ts = greatest(last_ts, clock_timestamp())
         WHERE context = p_context AND channel = p_channel
        RETURNING id, last_id, last_ts INTO cid, top, t;
        IF NOT FOUND THEN
            INSERT INTO channels AS c (context, channel, last_id, last_ts)
            VALUES (p_context, p_channel, n, clock_timestamp())
            ON CONFLICT (context, channel) DO UPDATE
               SET last_id = c.last_id + n,
                   last_ts = greatest(c.last_ts, clock_timestamp())
            RETURNING c.id, c.last_id, c.last_ts INTO cid, top, t;
        END IF;
        INSERT INTO events (channel_id, id, ts, issuer, payload)
        SELECT cid, top - n + p.ord, t, p_issuer, p.value
          FROM json_array_elements(p_payloads) WITH ORDINALITY AS p(value, ord);
        PERFORM pg_notify('eventbus', p_context || '/' || p_channel || '/' || top);
        RETURN QUERY SELECT top - n + 1, extract(epoch FROM t)::float8;
    END
    $$;
    """,
    # 2: group commit -- several appends (any channels) in one statement and
    # one transaction, applied in array order.
    """
    CREATE FUNCTION eventbus_append_many(p_contexts text[], p_channels text[],
                                         p_issuers text[], p_payloads text[])
    RETURNS TABLE (ord int, first_id bigint, ts float8)
    LANGUAGE plpgsql AS $$
    BEGIN
        FOR i IN 1 .. coalesce(array_length(p_contexts, 1), 0) LOOP
            RETURN QUERY
                SELECT i, a.first_id, a.ts
                  FROM eventbus_append(p_contexts[i], p_channels[i], p_issuers[i],
                                       p_payloads[i]::json) AS a;
        END LOOP;
    END
    $$;
    """,
    # 3: durable consumers (eventbus.consumerstore)
    """
    CREATE TABLE consumers (
        id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        context        text NOT NULL,
        channel        text NOT NULL,
        name           text NOT NULL,
        mode           text NOT NULL CHECK (mode IN ('ordered', 'shared')),
        lease_s        float8 NOT NULL CHECK (lease_s > 0),
        max_deliveries integer NOT NULL CHECK (max_deliveries >= 1),
        -- lowest event id never delivered; every id below it without a row
        -- in consumer_events is acked
        next_new       bigint NOT NULL CHECK (next_new >= 1),
        UNIQUE (context, channel, name)
    );
    CREATE TABLE consumer_events (
        consumer_id  bigint NOT NULL REFERENCES consumers (id) ON DELETE CASCADE,
        event_id     bigint NOT NULL,
        state        text NOT NULL CHECK (state IN ('leased', 'available', 'dead')),
        deliveries   integer NOT NULL,
        lease_token  text,
        lease_until  timestamptz,
        available_at timestamptz,
        PRIMARY KEY (consumer_id, event_id)
    );
    -- the leasing transaction reads only the live rows; dead ones accumulate
    CREATE INDEX consumer_events_live ON consumer_events (consumer_id, event_id)
        WHERE state <> 'dead';
    """,
    # 4: webhook subscriptions (eventbus.webhookstore)
    """
    CREATE TABLE webhook_subscriptions (
        id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        context         text NOT NULL,
        channel         text NOT NULL,  -- a channel name, or '*': every channel of the context
        url             text NOT NULL,
        secret          text NOT NULL,
        created         timestamptz NOT NULL DEFAULT clock_timestamp(),
        disabled_at     timestamptz,
        disabled_reason text,
        -- The delivering process and how long its claim holds; see eventbus.webhooks.
        owner           text,
        lease_until     timestamptz
    );
    CREATE TABLE webhook_cursors (
        subscription_id bigint NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
        channel         text NOT NULL,
        delivered_id    bigint NOT NULL,  -- the last event id acknowledged with a 2xx
        failures        integer NOT NULL DEFAULT 0,
        failing_since   timestamptz,
        last_attempt    timestamptz,
        last_status     integer,
        last_error      text,
        PRIMARY KEY (subscription_id, channel)
    );
    """,
    # 5: appends are one set-based statement now (_APPEND_SQL), which creates
    # or updates the channel row in the same statement that inserts its
    # events, and channels are never deleted: the foreign key cannot be
    # violated, and its per-row check was half of an append's execution time.
    """
    DROP FUNCTION IF EXISTS eventbus_append_many(text[], text[], text[], text[]);
    DROP FUNCTION IF EXISTS eventbus_append(text, text, text, json);
    ALTER TABLE events DROP CONSTRAINT IF EXISTS events_channel_id_fkey;
    """,
]


def _is_dead(f: Failure) -> bool:
    """Does this failure mean the connection itself is gone?

    txpostgres' default treats every ``OperationalError`` as a dead
    connection; deadlocks and cancellations are not.
    """
    if f.check(psycopg2.errors.TransactionRollbackError, psycopg2.errors.QueryCanceled):
        return False
    return bool(f.check(psycopg2.InterfaceError, psycopg2.OperationalError))


def _backoff() -> Iterable[float]:
    return retrying.simpleBackoffIterator(
        initialDelay=0.25, maxDelay=3.0, factor=2.0, maxRetries=0, now=True
    )


def make_connection(reactor: Any) -> txpostgres.Connection:
    """A txpostgres connection that reconnects by itself with backoff."""
    detector = reconnection.DeadConnectionDetector(
        deathChecker=_is_dead, reconnectionIterator=_backoff, reactor=reactor
    )
    return txpostgres.Connection(reactor, detector=detector)


def close_for_good(conn: txpostgres.Connection) -> None:
    """Close a self-reconnecting connection so it stays closed."""
    conn.detector.deathChecker = lambda f: False
    conn.detector.reconnect = lambda: defer.succeed(None)  # a retry under way ends
    for handler in conn.detector.getRecoveryHandlers():
        conn.detector.removeRecoveryHandler(handler)
    try:
        if conn.pollable() is not None:
            conn.close()
    except Exception:
        pass


def connect_kwargs(dsn: str) -> dict[str, Any]:
    return dict(
        dsn=dsn,
        connect_timeout=CONNECT_TIMEOUT_S,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        application_name="eventbus",
    )


class _Pool(txpostgres.ConnectionPool):
    """txpostgres' pool, with self-healing connections that are skipped while dead."""

    def __init__(self, reactor: Any, dsn: str, size: int) -> None:
        self.reactor = reactor
        self.min = size
        #: every connection, idle or checked out (txpostgres keeps only the idle)
        self._all: list[txpostgres.Connection] = []
        super().__init__(None, **connect_kwargs(dsn))

    def connectionFactory(self, reactor: Any, cooperator: Any) -> txpostgres.Connection:  # type: ignore[override]
        conn = make_connection(reactor)
        self._all.append(conn)
        return conn

    def shutdown(self) -> None:
        """Close every connection, idle or busy, for good: txpostgres' own
        ``close`` skips the busy ones, which then see the server go away
        and start reconnecting to a database that is shutting down."""
        for conn in self._all:
            close_for_good(conn)

    def backend_pids(self) -> frozenset[int]:
        # Not cached: a dead connection's pid may be reused by another
        # process's backend, whose notifications must not be skipped.
        pids = set()
        for conn in self._all:
            raw = conn.pollable()
            if raw is not None and not raw.closed and not conn.detector.connectionIsDead:
                pids.add(raw.get_backend_pid())
        return frozenset(pids)

    def _take(self) -> txpostgres.Connection:
        for c in self.connections:
            if not c.detector.connectionIsDead:
                self.connections.remove(c)
                return c
        return self.connections.pop()

    def _runQuery(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        c = self._take()
        return c.runQuery(*args, **kwargs).addBoth(self._putBackAndPassthrough, c)

    def _runOperation(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        c = self._take()
        return c.runOperation(*args, **kwargs).addBoth(self._putBackAndPassthrough, c)

    def _runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
        c = self._take()
        d = c.runInteraction(interaction, *args, **kwargs)
        return d.addBoth(self._putBackAndPassthrough, c)


class Store:
    """The event log in PostgreSQL, reached through a txpostgres pool."""

    def __init__(self, reactor: IReactorTime, dsn: str, pool_size: int = 8,
                 timeout: float = QUERY_TIMEOUT_S) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: Optional[_Pool] = None
        self._queue: deque[_Append] = deque()
        self._flushing = 0
        #: Told of every committed append, before its requester: the
        #: notifier wakes this process's waiters from it.
        self.on_append: Optional[Callable[[str, str, list[Event]], None]] = None

    # -- life cycle ---------------------------------------------------------
    async def open(self) -> None:
        pool = _Pool(self.reactor, self.dsn, self.pool_size)
        try:
            await pool.start()
        except BaseException:
            for c in pool.connections:
                try:
                    c.close()
                except Exception:
                    pass
            raise
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    async def migrate(self) -> int:
        """Bring the schema up to date; safe with several processes starting at once."""

        return await self.transaction(self._migrate, timeout=120)

    async def _migrate(self, cur: txpostgres.Cursor) -> int:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (0x6576656E74627573,))
        await cur.execute(
            "CREATE TABLE IF NOT EXISTS eventbus_schema (version int NOT NULL)"
        )
        await cur.execute("SELECT max(version) FROM eventbus_schema")
        current = cur.fetchone()[0] or 0
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version > current:
                log.info("applying schema migration {version}", version=version)
                await cur.execute(sql)
                await cur.execute("INSERT INTO eventbus_schema VALUES (%s)", (version,))
        return len(MIGRATIONS)

    # -- writes -------------------------------------------------------------
    async def append(self, context: str, channel: str, issuer: str,
                     payloads: Union[list[str], str]) -> list[Event]:
        """Append payloads (JSON object texts, or one JSON array text) to a
        channel, atomically and in order; return the stored events.

        Group commit: appends that arrive while transactions are in flight
        are queued and written together by the next one (one statement, one
        commit, one fsync).  Resolves only after the transaction holding
        this append has committed, and after :attr:`on_append` was told.
        """
        if isinstance(payloads, str):
            payloads = split_array(payloads)
        item = _Append(context, channel, issuer, payloads)
        self._queue.append(item)
        if self._flushing < MAX_FLUSHES_IN_FLIGHT:
            self._flush()
        return await item.result

    def _flush(self) -> None:
        """Write queued appends in one transaction, then flush again if more came."""
        group: list[_Append] = []
        events = 0
        while self._queue and (not group or events + len(self._queue[0].payloads) <= MAX_GROUP_EVENTS):
            item = self._queue.popleft()
            group.append(item)
            events += len(item.payloads)
        self._flushing += 1
        d = defer.ensureDeferred(self._write_group(group))
        d.addBoth(self._flushed)

    def _flushed(self, _: Any) -> None:
        self._flushing -= 1
        if self._queue and self._flushing < MAX_FLUSHES_IN_FLIGHT:
            self._flush()

    async def _write_group(self, group: list["_Append"]) -> None:
        # Channels in one global order, so concurrent groups (in this or
        # other processes) lock channel rows in the same order and cannot
        # deadlock; within a channel, appends keep their arrival order.
        by_channel: dict[tuple[str, str], list[_Append]] = {}
        for item in group:
            by_channel.setdefault((item.context, item.channel), []).append(item)
        keys = sorted(by_channel)
        counts: list[int] = []
        e_channel: list[str] = []
        e_pos: list[str] = []
        e_issuer: list[str] = []
        payloads: list[str] = []
        issuers: dict[str, str] = {}
        for index, key in enumerate(keys, start=1):
            pos = 0
            ch = str(index)
            for item in by_channel[key]:
                item.offset = pos
                iss = issuers.setdefault(item.issuer, str(len(issuers) + 1))
                count = len(item.payloads)
                e_pos.extend(map(str, range(pos + 1, pos + count + 1)))
                pos += count
                payloads.extend(item.payloads)
                e_channel.extend([ch] * len(item.payloads))
                e_issuer.extend([iss] * len(item.payloads))
            counts.append(pos)
        # Per-event columns travel as one array literal or one JSON array
        # each: PostgreSQL parses those in C, while a Python list would
        # become an ARRAY[...] expression of one constant per event.
        params = {"ctx": [k[0] for k in keys], "ch": [k[1] for k in keys], "n": counts,
                  "payloads": "[" + ",".join(payloads) + "]",
                  "e_ch": "{" + ",".join(e_channel) + "}",
                  "e_pos": "{" + ",".join(e_pos) + "}",
                  "e_iss": "{" + ",".join(e_issuer) + "}",
                  "issuers": list(issuers)}
        try:
            d = self._pool_or_fail().runQuery(_APPEND_SQL, params)
            # Announced when it commits, even after the requesters got their
            # 503 (the database was slow): the NOTIFY echo of our own commit
            # is skipped, so this is this process's only word of it.
            d.addCallback(self._committed, by_channel, dict(zip(keys, counts)))
            done = await _within(self.reactor, d, self.timeout)
        except Exception as e:
            if len(group) > 1 and not _is_outage(e):
                # One bad append must not fail its neighbours: isolate it.
                for item in group:
                    await self._write_group([item])
                return
            error: BaseException = e
            if _is_outage(e):
                if not isinstance(e, Unavailable):
                    log.warn("database unavailable: {error!r}", error=e)
                    error = Unavailable("database unavailable")
                # What queued behind this group would only wait for the
                # same outage: answer it now rather than one timeout later.
                group = group + list(self._queue)
                self._queue.clear()
            for item in group:
                item.fail(error)
            return
        for item, events in done:
            item.succeed(events)

    def _committed(self, rows: list[tuple], by_channel: dict[tuple[str, str], list["_Append"]],
                   count_of: dict[tuple[str, str], int]) -> list[tuple["_Append", list[Event]]]:
        """A group committed: its events per append, announced to :attr:`on_append`."""
        done = []
        for context, channel, last_id, ts in rows:
            base = last_id - count_of[(context, channel)]
            for item in by_channel[(context, channel)]:
                first = base + item.offset + 1
                events = [Event(first + i, ts, item.issuer, p) for i, p in enumerate(item.payloads)]
                if self.on_append is not None:
                    try:
                        self.on_append(context, channel, events)
                    except Exception:
                        log.failure("announcing appended events failed")
                done.append((item, events))
        return done

    def backend_pids(self) -> frozenset[int]:
        """Server process ids of this store's pool connections, so the
        notifier can skip notifications it already acted on at commit."""
        return self._pool.backend_pids() if self._pool is not None else frozenset()

    # -- reads --------------------------------------------------------------
    async def ping(self) -> None:
        await self._query("SELECT 1", timeout=min(self.timeout, 3.0))

    async def event(self, context: str, channel: str, event_id: int) -> Optional[Event]:
        rows = await self._query(
            f"SELECT {_EVENT_COLUMNS} FROM events e"
            f" WHERE e.channel_id = {_CHANNEL_ID} AND e.id = %(id)s",
            {"context": context, "channel": channel, "id": event_id},
        )
        return Event(*rows[0]) if rows else None

    async def first_after(self, context: str, channel: str, cursor: int) -> Optional[Event]:
        """The first event with id > cursor (ids are gap-free, so: id cursor+1)."""
        return await self.event(context, channel, cursor + 1)

    async def events_by_id(self, context: str, channel: str,
                           ids: Iterable[int]) -> dict[int, Event]:
        """Several events of one channel in one round trip (used to wake waiters)."""
        rows = await self._query(
            f"SELECT {_EVENT_COLUMNS} FROM events e"
            f" WHERE e.channel_id = {_CHANNEL_ID} AND e.id = ANY(%(ids)s)",
            {"context": context, "channel": channel, "ids": sorted(ids)},
        )
        return {row[0]: Event(*row) for row in rows}

    async def head(self, context: str, channel: str) -> int:
        """The channel's last committed id (0 for a channel never written)."""
        rows = await self._query(
            "SELECT last_id FROM channels WHERE context = %s AND channel = %s",
            (context, channel),
        )
        return rows[0][0] if rows else 0

    async def first_id_at(self, context: str, channel: str,
                          start: dt.datetime) -> Optional[int]:
        """The id of the first event with timestamp >= start."""
        rows = await self._query(
            "SELECT e.id FROM events e"
            f" WHERE e.channel_id = {_CHANNEL_ID} AND e.ts >= %(start)s"
            " ORDER BY e.ts, e.id LIMIT 1",
            {"context": context, "channel": channel, "start": start},
        )
        return rows[0][0] if rows else None

    async def page(self, context: str, channel: str, after: int, upto: int,
                   limit: int = PAGE_SIZE) -> list[Event]:
        """Events with after < id <= upto, in id order, at most ``limit``."""
        rows = await self._query(
            f"SELECT {_EVENT_COLUMNS} FROM events e"
            f" WHERE e.channel_id = {_CHANNEL_ID} AND e.id > %(after)s AND e.id <= %(upto)s"
            " ORDER BY e.id LIMIT %(limit)s",
            {"context": context, "channel": channel, "after": after, "upto": upto,
             "limit": limit},
        )
        return [Event(*row) for row in rows]

    # -- for the storage modules of other features -----------------------------
    async def query(self, sql: str, params: Any = None,
                    timeout: Optional[float] = None) -> list[tuple]:
        """Run one statement (its own transaction); 503 on database trouble."""
        return await self._query(sql, params, timeout)

    async def transaction(self, work: Callable[[txpostgres.Cursor], Any],
                          timeout: Optional[float] = None) -> Any:
        """Run ``async work(cursor)`` inside BEGIN/COMMIT (ROLLBACK on error)."""

        def run(cur: txpostgres.Cursor) -> defer.Deferred:
            return defer.ensureDeferred(work(cur))

        return await self._call(self._pool_or_fail().runInteraction(run), timeout)

    # -- plumbing -----------------------------------------------------------
    def _pool_or_fail(self) -> _Pool:
        if self._pool is None:
            raise Unavailable("database is not connected")
        return self._pool

    async def _query(self, sql: str, params: Any = None,
                     timeout: Optional[float] = None) -> list[tuple]:
        return await self._call(self._pool_or_fail().runQuery(sql, params), timeout)

    async def _call(self, d: defer.Deferred, timeout: Optional[float] = None) -> Any:
        """Await a database Deferred, mapping outages and slowness to 503.

        On timeout the query is left to finish on its own (cancelling needs a
        blocking round trip in psycopg2); the caller just stops waiting.
        """
        try:
            return await _within(self.reactor, d, timeout or self.timeout)
        except Unavailable:
            raise
        except Exception as e:
            if not _is_outage(e):
                raise
            log.warn("database unavailable: {error!r}", error=e)
            raise Unavailable("database unavailable") from None


def _is_outage(e: BaseException) -> bool:
    return isinstance(e, (psycopg2.OperationalError, psycopg2.InterfaceError,
                          reconnection.ConnectionDead, txpostgres.RollbackFailed,
                          Unavailable))


class _Append:
    """One queued append waiting for its group's commit."""

    __slots__ = ("context", "channel", "issuer", "payloads", "offset", "result")

    def __init__(self, context: str, channel: str, issuer: str, payloads: list[str]) -> None:
        self.context = context
        self.channel = channel
        self.issuer = issuer
        self.payloads = payloads
        #: events of the same channel ahead of this append in its group
        self.offset = 0
        # The requester may stop waiting (disconnect): firing is then
        # skipped, but the append itself still goes through.
        self.result: defer.Deferred = defer.Deferred(lambda d: None)

    def succeed(self, events: list[Event]) -> None:
        if not self.result.called:
            self.result.callback(events)

    def fail(self, error: BaseException) -> None:
        if not self.result.called:
            self.result.errback(Failure(error))


def _within(reactor: IReactorTime, d: defer.Deferred, seconds: float) -> defer.Deferred:
    """A Deferred firing like ``d``, or failing with Unavailable after ``seconds``.

    ``d`` itself is not cancelled.
    """
    result: defer.Deferred = defer.Deferred()

    def expire() -> None:
        if not result.called:
            result.errback(Unavailable(f"database did not answer within {seconds:g} s"))

    call = reactor.callLater(seconds, expire)

    def done(value: Any) -> None:
        if call.active():
            call.cancel()
        if result.called:
            return None  # already answered 503; drop the late result or error
        if isinstance(value, Failure):
            result.errback(value)
        else:
            result.callback(value)
        return None

    d.addBoth(done)
    return result
