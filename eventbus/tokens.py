"""Access tokens at run time: the service that manages them, the cache that
checks them, and the registry of held requests that dies with them.

Invariants:

* Checking a known token costs no database round trip and no write: every
  process keeps every token in memory (:class:`TokenCache`), keyed by its
  digest, reloaded whenever a ``eventbus_tokens`` notification says one was
  created or revoked (and after a ``LISTEN`` outage, when notifications may
  have been lost).  A token the cache does not know (one created a moment
  ago in another process, whose notification is still on its way) is looked
  up once by digest; the answer, found or not, is kept until the next
  change.  ``last_used`` is written at most once a minute per token per
  process.
* A revoked or expired token stops working everywhere within about the time
  a notification takes (expiry: at once, on this process's clock), and so do
  the requests it holds open: every long poll, consumer ``next`` and SSE
  stream registers a :class:`Hold` in :class:`Holds`, which the cache ends
  when the token is revoked (on reload) or expires (a timer).  That is the
  one mechanism; the HTTP layer decides what an ended hold means for its
  request (a 401, or an SSE error message).
* One client (a token, or a peer address without one) holds at most
  ``limit`` requests at a time; beyond that :class:`TooManyRequests`.

Layer rule: a domain module; SQL through :mod:`eventbus.storage.tokens`, no HTTP.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventbus.auth import Principal, check_token_name, digest, new_token, parse_issuers, parse_scopes
from eventbus.errors import InvalidInput, NotFound, TooManyRequests, Unavailable
from eventbus.model import TokenRecord
from eventbus.retry import retrying
from eventbus.storage.tokens import TokenStore

log = Logger()

#: Longest lifetime a token may be given (ten years), in seconds.
MAX_EXPIRES_S = 10 * 365 * 86400
#: ``last_used`` is written at most this often per token per process.
TOUCH_INTERVAL_S = 60.0
#: Unknown digests remembered (each cost one lookup); cleared on every change.
MAX_UNKNOWN = 10_000
#: Seconds a client over its cap is told to wait (``Retry-After``).
RETRY_AFTER_S = 5
#: Why a hold ended, as a client is told.
REVOKED, EXPIRED = "token revoked", "token expired"


class TokenService:
    """Create, list, show and revoke tokens (the command line and ``/tokens``)."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    async def create(
        self, name: object, scopes: object, issuers: object = None, expires_in: object = None
    ) -> tuple[TokenRecord, str]:
        """A new token: its record and the secret, which is never shown again."""
        name = check_token_name(name)
        parsed = parse_scopes(scopes)
        bound = parse_issuers(issuers)
        expires = None
        if expires_in is not None:
            if (
                isinstance(expires_in, bool)
                or not isinstance(expires_in, (int, float))
                or not (1 <= expires_in <= MAX_EXPIRES_S)
            ):
                raise InvalidInput(f"expires_in must be a number of seconds from 1 to {MAX_EXPIRES_S}")
            expires = float(expires_in)
        secret = new_token()
        record = await self.store.create(name, digest(secret), tuple(map(str, parsed)), bound, expires)
        return record, secret

    async def list(self) -> list[TokenRecord]:
        return await self.store.all()

    async def get(self, name: str) -> TokenRecord:
        record = await self.store.by_name(check_token_name(name))
        if record is None:
            raise NotFound(f"no token named {name!r}")
        return record

    async def revoke(self, name: str) -> None:
        if not await self.store.revoke(check_token_name(name)):
            raise NotFound(f"no token named {name!r}")


class Hold:
    """One held request (a long poll, a consumer ``next``, an SSE stream)."""

    __slots__ = ("_on_end", "digest", "key", "owner", "reason")

    def __init__(self, owner: Holds, key: str, digest: str | None) -> None:
        self.owner = owner
        self.key = key
        self.digest = digest
        #: Why the token died (None while it lives).
        self.reason: str | None = None
        self._on_end: Callable[[], None] | None = None

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the token dies (at once if it has)."""
        self._on_end = callback
        if self.reason is not None:
            callback()

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            if self._on_end is not None:
                self._on_end()

    def release(self) -> None:
        self.owner._release(self)


class Holds:
    """Held requests, counted per client and grouped per token digest."""

    def __init__(self, limit: int) -> None:
        #: Most held requests per client; 0: no limit.
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._by_digest: dict[str, set[Hold]] = {}

    def acquire(self, key: str, digest: str | None) -> Hold:
        count = self._counts.get(key, 0)
        if self.limit and count >= self.limit:
            raise TooManyRequests(
                f"this client holds {count} open requests (long polls, consumer next, SSE streams),"
                f" the most it may (--max-held-per-client); retry later",
                retry_after=RETRY_AFTER_S,
            )
        self._counts[key] = count + 1
        hold = Hold(self, key, digest)
        if digest is not None:
            self._by_digest.setdefault(digest, set()).add(hold)
        return hold

    def _release(self, hold: Hold) -> None:
        count = self._counts.get(hold.key, 0) - 1
        if count > 0:
            self._counts[hold.key] = count
        else:
            self._counts.pop(hold.key, None)
        if hold.digest is not None:
            holds = self._by_digest.get(hold.digest)
            if holds is not None:
                holds.discard(hold)
                if not holds:
                    del self._by_digest[hold.digest]

    def end(self, digest: str, reason: str) -> int:
        """End every request held with this token; how many there were."""
        holds = self._by_digest.pop(digest, set())
        for hold in list(holds):
            try:
                hold.end(reason)
            except Exception:
                log.failure("ending a held request failed")
        return len(holds)

    def held(self, key: str) -> int:
        return self._counts.get(key, 0)


class _Known(NamedTuple):
    principal: Principal
    expires: float | None


class TokenCache:
    """Every token of the database, in memory, by digest."""

    def __init__(
        self, reactor: IReactorTime, store: TokenStore, holds: Holds, touch_interval: float = TOUCH_INTERVAL_S
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.holds = holds
        self.touch_interval = touch_interval
        self._known: dict[str, _Known] = {}
        self._unknown: OrderedDict[str, None] = OrderedDict()
        self._timers: dict[str, IDelayedCall] = {}
        self._touched: dict[str, float] = {}
        #: Counts changes; an answer read before the latest change is not kept.
        self._generation = 0
        self._reloading = False
        self._dirty = False
        self._lookups: dict[str, defer.Deferred[Principal | None]] = {}

    # -- what a request asks ------------------------------------------------------
    def knows(self, token_digest: str) -> bool:
        """Can :meth:`cached` tell (else ask :meth:`lookup`)?"""
        return token_digest in self._known or token_digest in self._unknown

    def cached(self, token_digest: str) -> Principal | None:
        """The token's principal, or None if it is not valid (unknown, expired)."""
        known = self._known.get(token_digest)
        if known is None:
            return None
        if known.expires is not None and self.reactor.seconds() >= known.expires:
            return None
        self._touch(token_digest)
        return known.principal

    def lookup(self, token_digest: str) -> defer.Deferred[Principal | None]:
        """Ask the database about a digest the cache does not know (concurrent
        requests with the same one share the read)."""
        pending = self._lookups.get(token_digest)
        if pending is not None:
            return _follow(pending)
        d = defer.ensureDeferred(self._lookup(token_digest))
        self._lookups[token_digest] = d
        d.addBoth(self._looked_up, token_digest)
        return _follow(d)

    def _looked_up(self, result: object, token_digest: str) -> object:
        self._lookups.pop(token_digest, None)
        return result

    async def _lookup(self, token_digest: str) -> Principal | None:
        generation = self._generation
        record = await self.store.by_digest(token_digest)
        # What was read before the latest change is answered but not kept.
        current = generation == self._generation
        if record is None:
            if current:
                self._unknown[token_digest] = None
                while len(self._unknown) > MAX_UNKNOWN:
                    self._unknown.popitem(last=False)
            return None
        try:
            principal = _principal(record)
        except InvalidInput:
            return None  # a row written by hand, with scopes we cannot read
        if current:
            self._add(record, principal)
        return None if _expired(record, self.reactor.seconds()) else principal

    def alive(self, principal: Principal) -> bool:
        """Is this token still valid (for a request about to be held)?"""
        if principal.digest is None:
            return True
        return self.cached(principal.digest) is not None

    # -- keeping up with the database -----------------------------------------------
    async def load(self) -> None:
        """Read every token (start-up, and after each change)."""
        records = await self.store.all()
        self._replace(records)

    def changed(self, name: str = "") -> None:
        """A token was created or revoked somewhere (or notifications were lost)."""
        self._generation += 1
        self._unknown.clear()
        if self._reloading:
            self._dirty = True
            return
        self._reloading = True
        defer.ensureDeferred(self._reload())

    async def _reload(self) -> None:
        try:
            while True:
                self._dirty = False
                await retrying(self.reactor, self.load, what="token cache reload")
                if not self._dirty:
                    return
        except Exception:
            log.failure("reloading the token cache failed")
        finally:
            self._reloading = False

    def _replace(self, records: list[TokenRecord]) -> None:
        gone = set(self._known) - {r.digest for r in records}
        for token_digest in gone:
            self._forget(token_digest)
            self.holds.end(token_digest, REVOKED)
        for record in records:
            try:
                principal = _principal(record)
            except InvalidInput as e:
                log.warn("ignoring token {name}: {error}", name=record.name, error=e.message)
                continue
            self._add(record, principal)

    def _add(self, record: TokenRecord, principal: Principal) -> None:
        self._known[record.digest] = _Known(principal, record.expires)
        self._unknown.pop(record.digest, None)
        timer = self._timers.pop(record.digest, None)
        if timer is not None and timer.active():
            timer.cancel()
        if record.expires is not None:
            delay = max(0.0, record.expires - self.reactor.seconds())
            self._timers[record.digest] = self.reactor.callLater(delay, self._expire, record.digest)

    def _forget(self, token_digest: str) -> None:
        self._known.pop(token_digest, None)
        self._touched.pop(token_digest, None)
        timer = self._timers.pop(token_digest, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _expire(self, token_digest: str) -> None:
        self._timers.pop(token_digest, None)
        self.holds.end(token_digest, EXPIRED)

    def stop(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    # -- last used ------------------------------------------------------------------------
    def _touch(self, token_digest: str) -> None:
        now = self.reactor.seconds()
        if now - self._touched.get(token_digest, -math.inf) < self.touch_interval:
            return
        self._touched[token_digest] = now
        d = defer.ensureDeferred(self.store.touch({token_digest: now}))
        d.addErrback(lambda f: None if f.check(Unavailable) else log.failure("last_used write failed", f))


def _principal(record: TokenRecord) -> Principal:
    return Principal(
        token=record.name,
        scopes=parse_scopes(list(record.scopes)),
        issuers=record.issuers,
        digest=record.digest,
    )


def _expired(record: TokenRecord, now: float) -> bool:
    return record.expires is not None and now >= record.expires


def _follow(d: defer.Deferred[Principal | None]) -> defer.Deferred[Principal | None]:
    """A Deferred with ``d``'s result that can be cancelled without cancelling ``d``."""
    out: defer.Deferred[Principal | None] = defer.Deferred()

    def passed(result: object) -> object:
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(cast("Principal | None", result))
        return result

    d.addBoth(passed)
    d.addErrback(lambda _: None)  # reported through ``out``
    return out
