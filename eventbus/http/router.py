"""One router: mounts every resource's Klein app, checks names, renders every error.

Invariant: every answer the server gives that is not a success is rendered
here, as ``{"error": ...}`` JSON (plus the error's ``details``, e.g.
``"last_id"`` of a 409) with the status of :data:`STATUS`; a
domain error never reaches a client as anything else, and an unexpected one
is a logged 500 with no detail.  Every path variable that names a context,
channel or consumer, and the names of the query parameters (each route
declares those it takes: :class:`~eventbus.http.params.QueryParams`), are
checked before its handler runs.

Shape (from ranger-ims-server): each resource is a class with its own
:class:`Router` (a Klein app whose routes check names and whose error
handlers are registered once, here); :class:`Root` mounts them by their
first path segment.  Mounting is twisted.web's resource dispatch on one
segment rather than a Klein ``branch=True`` route, which would be a second
Klein dispatch (URL map bind and match, Deferred chain) on every request:
measured with ``python -m bench --only publish`` (3 rounds of 5 s), 3,204
req/s mounted by a branch route against 3,917 req/s mounted here, 18 %
fewer publishes.  Routes keep their full paths (``/events/<context>/<channel>``)
so they read as the README does.

Layer rule: the HTTP layer; may import the domain modules, storage (through
their public functions), model and errors.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, cast
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import RequestRedirect

from eventbus.auth import Action, redact
from eventbus.errors import (
    Conflict,
    EventBusError,
    Forbidden,
    Gone,
    InvalidInput,
    NotFound,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from eventbus.http import access, console, params, render, requestid
from eventbus.metrics.values import UNMATCHED
from eventbus.model import check_name

log = Logger()

F = TypeVar("F", bound=Callable[..., Any])

#: The HTTP status of each domain error.
STATUS: dict[type[EventBusError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    TooLarge: 413,
    Unprocessable: 422,
    TooManyRequests: 429,
    Unavailable: 503,
}
#: The ``WWW-Authenticate`` challenge of a 401 (RFC 6750).
CHALLENGE = b'Bearer realm="eventbus"'
INVALID_TOKEN_CHALLENGE = b'Bearer realm="eventbus", error="invalid_token"'

#: What a route needs: nothing (``PUBLIC``), or one of these actions on the
#: context and channel of its path.  A route without both in its path (ids,
#: lists, ``POST /subscriptions``) declares the action for the reader and
#: its handler checks each object's context and channel itself.
Need = tuple[Action, ...]
PUBLIC: Need = ()

#: Path variables that hold names, and what the error message calls them.
NAME_VARIABLES = {
    "context": "context",
    "channel": "channel",
    "name": "consumer name",
    "token_name": "token name",
}


def route_pattern(url: str) -> str:
    """A Klein route as OpenAPI writes its path: ``/events/{context}/{channel}``."""
    return re.sub(r"<(?:[a-z]+:)?([A-Za-z_]+)>", r"{\1}", url)


def status_of(error: EventBusError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


# Error handlers are Klein "methods": every app is bound to its resource
# instance, which Klein passes first (as ``self``, the name Klein's type says).
def domain_error(self: Any, request: IRequest, failure: Failure) -> bytes:
    error = failure.value
    assert isinstance(error, EventBusError)
    return error_response(cast(Request, request), error)


def error_response(request: Request, error: EventBusError) -> bytes:
    """The answer to a domain error: its status, its headers, its JSON body."""
    if isinstance(error, Unauthorized):
        request.setHeader(b"WWW-Authenticate", INVALID_TOKEN_CHALLENGE if error.token_sent else CHALLENGE)
    elif isinstance(error, TooManyRequests):
        request.setHeader(b"Retry-After", b"%d" % error.retry_after)
    return render.error(request, status_of(error), error.message, **error.details)


def routing_error(self: Any, request: IRequest, failure: Failure) -> bytes:
    error = failure.value
    assert isinstance(error, HTTPException)
    return _routing_error(cast(Request, request), error)


def _routing_error(request: Request, error: HTTPException) -> bytes:
    if isinstance(error, WerkzeugMethodNotAllowed):
        allowed = sorted(error.valid_methods or [])
        request.setHeader(b"Allow", ", ".join(allowed).encode())
        method = request.method.decode("latin-1")
        return render.error(request, 405, f"method {method} not allowed here; allowed: {', '.join(allowed)}")
    # RequestRedirect: werkzeug would merge "//" and redirect to another
    # resource ("/events/c//1" to channel "1"); an empty name is no path.
    if isinstance(error, (WerkzeugNotFound, RequestRedirect)):
        return not_found(request)
    return render.error(request, error.code or 400, error.description or error.name)


def unexpected(self: Any, request: IRequest, failure: Failure) -> bytes:
    log.failure(
        "unhandled error serving {uri}",
        failure,
        uri=redact(request.uri.decode("latin-1")),
        request_id=requestid.of(request),
        route=requestid.route_of(request),
    )
    return render.error(cast(Request, request), 500, "internal error")


def not_found(request: Request) -> bytes:
    return render.error(request, 404, f"no such resource: {request.path.decode('latin-1')[:200]}")


#: Where a request's route pattern is left, once its handler is called.
_ROUTE = "_eventbus_route"


def route_of(request: Request) -> str:
    """The route pattern (``/events/<context>/<channel>``) a request was
    served by, the one its path matches if it was answered before its
    handler ran (refused by the gate, a method not allowed, a preflight),
    else :data:`~eventbus.metrics.values.UNMATCHED`: the ``route`` label of
    its metrics, never a raw path.  The console's files are not a Klein
    app: :func:`eventbus.http.console.route` names theirs."""
    route: str | None = getattr(request, _ROUTE, None)
    if route is not None:
        return route
    if not isinstance(getattr(request, "path", None), bytes):
        return UNMATCHED  # refused before its request line was read
    path = unquote_to_bytes(request.path).decode("utf-8", "replace")
    static = console.route(path)
    if static is not None:
        return static
    method = request.method.decode("latin-1")
    for router in Router.every:
        adapter = router.url_map.bind("localhost")
        try:
            try:
                rule, _ = adapter.match(path, method, return_rule=True)
            except WerkzeugMethodNotAllowed as e:  # the route of a 405 (or a preflight)
                rule, _ = adapter.match(path, sorted(e.valid_methods or ["GET"])[0], return_rule=True)
        except (HTTPException, RequestRedirect):
            continue
        return str(rule.rule)
    return UNMATCHED


class Router(Klein):
    """A resource's Klein app: routes check their names, access and query
    parameters; errors render here."""

    #: Every router made (one per resource class), for :func:`route_of`.
    every: ClassVar[list[Router]] = []

    def __init__(self) -> None:
        super().__init__()
        Router.every.append(self)
        self.handle_errors(EventBusError)(domain_error)
        self.handle_errors(HTTPException)(routing_error)
        self.handle_errors(Exception)(unexpected)

    def route(
        self,
        url: str,
        *args: Any,
        need: Need | None = None,
        branch: bool = False,
        query: params.QueryParams = params.NO_QUERY,
        **kwargs: Any,
    ) -> Callable[[F], F]:
        """Klein's route, whose handler runs only once the path's names are
        valid, the request may do one of the ``need`` actions (every route
        says what it needs, if only ``PUBLIC``) and its query parameters are
        the ones ``query`` declares (any other is a 400; GET routes also take
        ``access_token``)."""
        if need is None:
            raise TypeError(f"route {url} must declare need= (PUBLIC or the actions it needs)")
        register = super().route(url, *args, branch=branch, **kwargs)
        names = {var: kind for var, kind in NAME_VARIABLES.items() if f"<{var}>" in url}
        pattern = route_pattern(url)
        scoped = bool(need) and "<context>" in url and "<channel>" in url

        def deco(f: F) -> F:
            @functools.wraps(f)
            def checked(instance: Any, request: Request, *a: Any, **kw: Any) -> Any:
                requestid.set_route(request, pattern)
                setattr(request, _ROUTE, url)
                for var, kind in names.items():
                    check_name(kind, kw[var])
                if scoped:
                    access.authorize(request, need, kw["context"], kw["channel"])
                if b"?" in request.uri:
                    query.check(params.query(request), request.method)
                return f(instance, request, *a, **kw)

            register(checked)
            return f

        return deco


class Root(Resource):
    """Mounts each resource by its first path segment, after checking the
    path and admitting the request (:class:`~eventbus.http.access.Gate`)."""

    isLeaf = True

    def __init__(
        self,
        apps: Mapping[bytes, Resource],
        gate: access.Gate | None = None,
        routers: Mapping[bytes, Klein] | None = None,
    ) -> None:
        """``routers``: the Klein app of each mount that is part of the API
        (what ``/openapi.json`` describes; other mounts serve files)."""
        super().__init__()
        self.apps = dict(apps)
        self.gate = gate
        self.routers = dict(routers or {})

    def render(self, request: Request) -> Any:
        # Klein's answer to these is plain text; ours is JSON.  An encoded
        # slash is refused too: twisted.web decodes each segment and Klein
        # joins them with "/", so a name "a%2Fb" would route as two segments.
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return render.error(request, 400, "request path is not valid UTF-8")
        if b"%2f" in request.path.lower():
            return render.error(request, 400, "a name in the request path contains an encoded '/'")
        first = request.postpath[0] if request.postpath else b""
        gate = self.gate
        if gate is not None and first not in PUBLIC_SEGMENTS:
            if gate.cors(request):
                return render.no_content(request)  # a CORS preflight
            try:
                admitted = gate.admit(request)
            except EventBusError as e:
                return error_response(request, e)
            if isinstance(admitted, defer.Deferred):
                admitted.addCallbacks(
                    lambda _: self._finish(request, self._dispatch(request, first)),
                    lambda f: self._finish(request, self._refused(request, f)),
                )
                return NOT_DONE_YET
        return self._dispatch(request, first)

    def _dispatch(self, request: Request, first: bytes) -> Any:
        app = self.apps.get(first)
        if app is None:
            return not_found(request)
        return app.render(request)

    def _refused(self, request: Request, failure: Failure) -> bytes:
        if isinstance(failure.value, EventBusError):
            return error_response(request, failure.value)
        log.failure(
            "admitting a request to {uri} failed",
            failure,
            uri=redact(request.uri.decode("latin-1")),
            request_id=requestid.of(request),
        )
        return render.error(request, 500, "internal error")

    def _finish(self, request: Request, result: Any) -> None:
        if (
            result is not NOT_DONE_YET
            and not request.finished
            and not getattr(request, "_disconnected", False)
        ):
            request.write(result)
            request.finish()


#: What needs no token (and gets no CORS headers): ``/health``, the API's
#: description (``/openapi.json``, ``/docs``), and the console's static files
#: under ``/ui`` (they hold no data; the console then calls the API like any
#: client, with its user's token).
PUBLIC_SEGMENTS = frozenset({b"health", b"openapi.json", b"docs", b"ui"})
