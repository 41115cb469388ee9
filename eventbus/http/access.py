"""Access control on the HTTP side: who a request is, what it may hold, CORS.

Invariant: every request but ``GET /health``, the console's static files
(``/ui``) and CORS preflights goes through :meth:`Gate.admit` once, before
routing (the router's :class:`~eventbus.http.router.Root` calls it), and
its handler then sees the :class:`~eventbus.auth.Principal` it acts as
(:func:`principal_of`).
Each route declares the actions it needs (``Router.route(..., need=...)``);
a handler whose context and channel are not in its path (``POST
/subscriptions``, ids) checks with :func:`authorize` itself.  Every request
that is held open (a long poll, a consumer ``next``, an SSE stream) runs
through :func:`held`, which counts it against its client's cap and cancels
it when its token is revoked or expires.

Credentials, in this order: ``Authorization: Bearer <token>``, the cookie
``eventbus_token``, the query parameter ``access_token`` (GET only).  A
token that is sent is always checked, even where none is needed.

Layer rule: the HTTP layer; the rules themselves are :mod:`eventbus.auth`'s,
the tokens :mod:`eventbus.tokens`'.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.server import Request

from eventbus import auth
from eventbus.auth import OFF, PROXY_HEADERS, UNRESTRICTED, Action, Principal
from eventbus.errors import Forbidden, InvalidInput, Unauthorized
from eventbus.tokens import Hold, Holds, TokenCache

T = TypeVar("T")

COOKIE = b"eventbus_token"
QUERY_PARAMETER = "access_token"
#: What a token-authenticated read may be kept as: by nobody.
PRIVATE = b"private, no-store"
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")

CORS_ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE"
CORS_ALLOW_HEADERS = (
    b"Authorization, Content-Type, X-EVENT-ISSUER, X-JISS-ISSUER, Idempotency-Key,"
    b" Expected-Last-Id, Last-Event-ID, X-Request-Id"
)
CORS_EXPOSE_HEADERS = (
    b"Location, Retry-After, WWW-Authenticate, Allow, Link, Events-Missed, Events-First-Id,"
    b" Idempotent-Replayed, X-Request-Id"
)
CORS_MAX_AGE = b"600"

#: Digests of recently presented tokens kept by the gate (it costs a hash
#: and a pattern match to compute one; each publish would pay it).
DIGEST_MEMO = 4096

#: Where the gate leaves its findings on a request.
_PRINCIPAL = "_eventbus_principal"
_GATE = "_eventbus_gate"
_HOLD = "_eventbus_hold"


class Gate:
    """The one check before routing, and the holds of held requests."""

    def __init__(
        self, mode: str, cache: TokenCache | None, holds: Holds, cors_origins: Iterable[str] = ()
    ) -> None:
        self.mode = mode
        self.cache = cache
        self.holds = holds
        self.cors_origins = frozenset(o.lower() for o in cors_origins)
        #: token -> digest (well-formed tokens only), bounded.
        self._digests: dict[str, str] = {}

    # -- before routing ------------------------------------------------------------
    def admit(self, request: Request) -> Principal | defer.Deferred[Principal]:
        """The request's principal (or a Deferred of it, when the token is
        not in the cache); raises the domain errors of a refusal."""
        setattr(request, _GATE, self)
        if self.mode == OFF:
            return self._admitted(request, UNRESTRICTED)
        token, by_cookie = credentials(request)
        if token is None:
            if auth.needs_token(self.mode, peer_host(request), proxied(request)):
                raise Unauthorized(
                    "this request needs a token: send Authorization: Bearer <token>", token_sent=False
                )
            return self._admitted(request, UNRESTRICTED)
        if by_cookie and request.method not in SAFE_METHODS:
            self._check_origin(request)
        if self.cache is None:
            raise Unauthorized("invalid token", token_sent=True)
        digest = self._digests.get(token)
        if digest is None:
            if not auth.TOKEN_RE.fullmatch(token):
                raise Unauthorized("invalid token", token_sent=True)
            if len(self._digests) >= DIGEST_MEMO:
                self._digests.clear()
            digest = self._digests[token] = auth.digest(token)
        if self.cache.knows(digest):
            return self._admitted(request, self._valid(self.cache.cached(digest)))
        d = self.cache.lookup(digest)
        return d.addCallback(lambda found: self._admitted(request, self._valid(found)))

    def _valid(self, found: Principal | None) -> Principal:
        if found is None:
            raise Unauthorized("invalid, expired or revoked token", token_sent=True)
        return found

    def _admitted(self, request: Request, principal: Principal) -> Principal:
        setattr(request, _PRINCIPAL, principal)
        if principal.token is not None and request.method in (b"GET", b"HEAD"):
            request.setHeader(b"Cache-Control", PRIVATE)
        return principal

    def _check_origin(self, request: Request) -> None:
        """A cookie rides along on cross-site form posts: a write authenticated
        by one must come from our own origin or a listed one."""
        origin = _header(request, b"Origin")
        if origin is None:
            return
        origin = origin.lower()
        scheme = "https" if request.isSecure() else "http"
        own = f"{scheme}://{(_header(request, b'Host') or '').lower()}"
        if origin != own and origin not in self.cors_origins:
            raise Forbidden("a cookie authenticates writes only from this server's origin or a --cors-origin")

    # -- CORS ---------------------------------------------------------------------------
    def cors(self, request: Request) -> bool:
        """Add the CORS headers for a listed origin; True if the request is a
        preflight, which they answer."""
        if not self.cors_origins:
            return False
        request.setHeader(b"Vary", b"Origin")
        origin = _header(request, b"Origin")
        if origin is None or origin.lower() not in self.cors_origins:
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)
        if request.method != b"OPTIONS" or not request.getHeader(b"Access-Control-Request-Method"):
            return False
        request.setHeader(b"Access-Control-Allow-Methods", CORS_ALLOW_METHODS)
        request.setHeader(b"Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
        request.setHeader(b"Access-Control-Max-Age", CORS_MAX_AGE)
        return True

    # -- held requests ----------------------------------------------------------------
    def hold(self, request: Request, principal: Principal) -> Hold:
        if self.cache is not None and not self.cache.alive(principal):
            raise Unauthorized("invalid, expired or revoked token", token_sent=True)
        if principal.token is not None:
            key = "token:" + principal.token
        else:
            key = "peer:" + (peer_host(request) or "unix")
        return self.holds.acquire(key, principal.digest)


# -- what handlers use ---------------------------------------------------------------------
def principal_of(request: Request) -> Principal:
    """Who the request acts as (unrestricted where no gate is installed)."""
    principal: Principal = getattr(request, _PRINCIPAL, UNRESTRICTED)
    return principal


def authorize(request: Request, actions: Iterable[Action], context: str, channel: str) -> Principal:
    principal = principal_of(request)
    if principal.token is not None:
        auth.require(principal, actions, context, channel)
    return principal


def hold_of(request: Request) -> Hold | None:
    """The hold of a held request (an SSE stream ends itself when it ends)."""
    hold: Hold | None = getattr(request, _HOLD, None)
    return hold


async def held(request: Request, run: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a held request: counted against its client's cap, cancelled (and
    answered 401) when its token dies."""
    gate: Gate | None = getattr(request, _GATE, None)
    if gate is None:
        return await run()
    hold = gate.hold(request, principal_of(request))
    setattr(request, _HOLD, hold)
    try:
        work: defer.Deferred[T] = defer.Deferred.fromCoroutine(run())
        hold.on_end(work.cancel)
        try:
            return await work
        except defer.CancelledError:
            if hold.reason is not None:
                raise Unauthorized(hold.reason, token_sent=True) from None
            raise
    finally:
        hold.release()


# -- reading the request -------------------------------------------------------------------
def credentials(request: Request) -> tuple[str | None, bool]:
    """The token a request presents (None: none) and whether it came in the cookie."""
    header = _header(request, b"Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'", token_sent=True)
        return value.strip(), False
    cookie = request.getCookie(COOKIE)
    if cookie:
        return cookie.decode("latin-1"), True
    _, _, raw = request.uri.partition(b"?")
    if QUERY_PARAMETER.encode() in raw:
        values = [
            v for k, v in parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if k == QUERY_PARAMETER
        ]
        if values:
            if request.method not in (b"GET", b"HEAD"):
                raise InvalidInput(f"{QUERY_PARAMETER} is accepted on GET requests only")
            if len(values) > 1:
                raise InvalidInput(f"query parameter {QUERY_PARAMETER!r} given more than once")
            return values[0], False
    return None, False


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def peer_host(request: Request) -> str | None:
    """The peer's IP address; None for a unix socket."""
    address: Any = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    if isinstance(address, UNIXAddress):
        return None
    return str(getattr(address, "host", "unknown"))  # anything else is not local


def proxied(request: Request) -> bool:
    headers = request.requestHeaders
    return any(headers.hasHeader(name) for name in PROXY_HEADERS)
