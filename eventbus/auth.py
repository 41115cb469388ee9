"""Access control: the pure rules (scopes, who is local, issuers, token format).

Invariant: every decision about what a request may do is a function of this
module, of the request's :class:`Principal` and of the action, context and
channel the route names; nothing here does I/O, so the rules are tested
exhaustively in ``tests/unit/test_auth.py``.

Scopes are ``ACTION:CONTEXT/CHANNEL``, each segment a name or ``*`` (any);
``admin`` alone (or ``admin:*/*``) allows everything.  ``metrics`` (alone,
or ``metrics:*/*``: a process's metrics are not split by channel) allows
reading ``/metrics`` and nothing else.  Actions do not imply
one another, except that ``admin`` implies all of them.  A ``*`` in a
request (a webhook subscription to every channel of a context) is matched
only by a ``*`` in the scope: ``manage:ctx/*`` allows it, ``manage:ctx/A``
does not.

A token is ``ebt_`` and 32 random bytes in unpadded base64url; only its
SHA-256 (hex) is stored and compared, so looking a token up is a dictionary
or index lookup on the hash (no comparison of secrets that could leak
timing) and nothing that reaches a log can be turned back into a token.

Layer rule: a domain module; imports only model and errors (no SQL, no HTTP).
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from eventbus.errors import Forbidden, InvalidInput
from eventbus.model import NAME_PATTERN, NAME_RE, check_issuer

#: The three modes of ``--auth``.
LOCAL, REQUIRED, OFF = "local", "required", "off"
MODES = (LOCAL, REQUIRED, OFF)

TOKEN_PREFIX = "ebt_"
TOKEN_BYTES = 32
#: A token as we make them: the prefix and 43 base64url characters.
TOKEN_RE = re.compile(r"ebt_[A-Za-z0-9_-]{43}")
#: Longest scope list and issuer list of one token.
MAX_SCOPES = 100
MAX_ISSUERS = 100
ANY = "*"


class Action(enum.Enum):
    PUBLISH = "publish"
    READ = "read"
    CONSUME = "consume"
    MANAGE = "manage"
    ADMIN = "admin"
    #: Reading the process's metrics; only ever on every context and channel.
    METRICS = "metrics"


@dataclass(frozen=True)
class Scope:
    action: Action
    context: str
    channel: str

    def __str__(self) -> str:
        return f"{self.action.value}:{self.context}/{self.channel}"

    def allows(self, action: Action, context: str, channel: str) -> bool:
        if self.action is not Action.ADMIN and self.action is not action:
            return False
        return self.context in (ANY, context) and self.channel in (ANY, channel)


def parse_scope(text: str) -> Scope:
    """A scope from its text form; :class:`InvalidInput` names what is wrong."""
    if not isinstance(text, str):
        raise InvalidInput("a scope must be a string like publish:context/channel")
    if text in (Action.ADMIN.value, Action.METRICS.value):
        return Scope(Action(text), ANY, ANY)
    action_text, sep, pattern = text.partition(":")
    try:
        action = Action(action_text)
    except ValueError:
        raise InvalidInput(
            f"scope {text[:140]!r}: the action must be one of {', '.join(a.value for a in Action)}"
        ) from None
    context, slash, channel = pattern.partition("/")
    if not sep or not slash:
        raise InvalidInput(f"scope {text[:140]!r} must look like ACTION:CONTEXT/CHANNEL")
    for kind, value in (("context", context), ("channel", channel)):
        if value != ANY and not NAME_RE.match(value):
            raise InvalidInput(f"scope {text[:140]!r}: the {kind} must be * or match {NAME_PATTERN}")
    if action is Action.METRICS and (context, channel) != (ANY, ANY):
        raise InvalidInput(f"scope {text[:140]!r}: metrics are the whole process's; the scope is 'metrics'")
    return Scope(action, context, channel)


def parse_scopes(texts: object) -> tuple[Scope, ...]:
    if not isinstance(texts, (list, tuple)) or not texts:
        raise InvalidInput("scopes must be a non-empty list of strings like publish:context/channel")
    if len(texts) > MAX_SCOPES:
        raise InvalidInput(f"a token may have at most {MAX_SCOPES} scopes")
    return tuple(dict.fromkeys(parse_scope(t) for t in texts))


def parse_issuers(values: object) -> tuple[str, ...] | None:
    """A token's issuer list (None: any issuer)."""
    if values is None:
        return None
    if not isinstance(values, (list, tuple)) or not values:
        raise InvalidInput("issuers must be a non-empty list of strings (or left out: any issuer)")
    if len(values) > MAX_ISSUERS:
        raise InvalidInput(f"a token may have at most {MAX_ISSUERS} issuers")
    out = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidInput("issuers must be strings")
        out.append(check_issuer(value, "an issuer"))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a token's grants, or the unrestricted local/off case."""

    #: The token's name; None: no token (``local`` mode on loopback, or ``off``).
    token: str | None
    scopes: tuple[Scope, ...] = ()
    #: Issuers the token may publish under; None: any.
    issuers: tuple[str, ...] | None = None
    #: SHA-256 of the token (the key of its held requests); None without one.
    digest: str | None = None

    @property
    def unrestricted(self) -> bool:
        return self.token is None

    def may(self, action: Action, context: str, channel: str) -> bool:
        return self.unrestricted or any(s.allows(action, context, channel) for s in self.scopes)

    def may_any(self, action: Action) -> bool:
        """Holds a scope with this action for some context and channel."""
        return self.unrestricted or any(s.action in (action, Action.ADMIN) for s in self.scopes)


#: Requests that need no token (``local`` mode on loopback, ``off`` mode).
UNRESTRICTED = Principal(token=None)


def require(principal: Principal, actions: Iterable[Action], context: str, channel: str) -> None:
    """Raise :class:`Forbidden` unless ``principal`` may do one of ``actions``
    (the first one is named in the message) on ``context``/``channel``."""
    wanted = list(actions)
    if any(principal.may(a, context, channel) for a in wanted):
        return
    scope = str(Scope(wanted[0], context, channel))
    raise Forbidden(f"token {principal.token!r} lacks the scope {scope}", scope=scope)


def require_metrics(principal: Principal) -> None:
    """Reading the metrics needs ``metrics`` or ``admin`` on everything."""
    if not principal.may(Action.METRICS, ANY, ANY):
        raise Forbidden(f"token {principal.token!r} lacks the scope metrics", scope="metrics")


def require_admin(principal: Principal) -> None:
    if not principal.may(Action.ADMIN, ANY, ANY):
        raise Forbidden(f"token {principal.token!r} lacks the scope admin", scope="admin")


def publishing_issuer(principal: Principal, sent: str | None) -> str:
    """The issuer a publish is stored under, given the header (None: not sent).

    A token with issuers may publish only under them; with exactly one the
    header may be left out.  Without a header and without a single bound
    issuer the request is invalid, as it always was.
    """
    allowed = principal.issuers
    if sent is None:
        if allowed is not None and len(allowed) == 1:
            return allowed[0]
        raise InvalidInput("missing X-EVENT-ISSUER header")
    if allowed is not None and sent not in allowed:
        raise Forbidden(
            f"token {principal.token!r} may not publish as issuer {sent[:140]!r}; its issuers: "
            + ", ".join(allowed)[:400]
        )
    return sent


# -- who is local -------------------------------------------------------------------
#: Headers that say a proxy forwarded the request: its real client is elsewhere.
PROXY_HEADERS = (b"Forwarded", b"X-Forwarded-For", b"X-Real-IP")


@functools.lru_cache(maxsize=4096)  # parsing an address is most of a local request's check
def is_loopback(host: str | None) -> bool:
    """An IP address in 127.0.0.0/8 or ::1 (IPv4-mapped included); None means
    a unix socket, which is local too."""
    if host is None:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def needs_token(mode: str, host: str | None, proxied: bool) -> bool:
    """Does a request from ``host`` (None: a unix socket) need a token?"""
    if mode == OFF:
        return False
    if mode == REQUIRED:
        return True
    return proxied or not is_loopback(host)


# -- tokens ----------------------------------------------------------------------------
def new_token() -> str:
    random = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=")
    return TOKEN_PREFIX + random.decode("ascii")


def digest(token: str) -> str:
    """What is stored and compared: the SHA-256 of the token, in hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_token_name(name: object) -> str:
    """A token name: the channel-name charset, not made only of dots (its
    URL, ``/tokens/{name}``, must reach it)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or not name.strip("."):
        raise InvalidInput(f"a token name must match {NAME_PATTERN} and not be made only of dots")
    return name


_SECRET_IN_QUERY = re.compile(r"(access_token=)[^&\s\"]*", re.I)
_TOKEN_ANYWHERE = re.compile(r"ebt_[A-Za-z0-9_-]{20,}")


def redact(text: str) -> str:
    """``text`` (a request line, a URL) with every token and ``access_token``
    value replaced, for logs."""
    return _TOKEN_ANYWHERE.sub("ebt_[redacted]", _SECRET_IN_QUERY.sub(r"\1[redacted]", text))
