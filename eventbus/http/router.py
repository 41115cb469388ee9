"""One router: mounts every resource's Klein app, checks names, renders every error.

Invariant: every answer the server gives that is not a success is rendered
here, as ``{"error": ...}`` JSON with the status of :data:`STATUS`; a
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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import RequestRedirect

from eventbus.errors import Conflict, EventBusError, InvalidInput, NotFound, TooLarge, Unavailable
from eventbus.http import params, render
from eventbus.model import check_name

log = Logger()

F = TypeVar("F", bound=Callable[..., Any])

#: The HTTP status of each domain error.
STATUS: dict[type[EventBusError], int] = {
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unavailable: 503,
}

#: Path variables that hold names, and what the error message calls them.
NAME_VARIABLES = {"context": "context", "channel": "channel", "name": "consumer name"}


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
    return render.error(cast(Request, request), status_of(error), error.message)


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
    log.failure("unhandled error serving {uri}", failure, uri=request.uri)
    return render.error(cast(Request, request), 500, "internal error")


def not_found(request: Request) -> bytes:
    return render.error(request, 404, f"no such resource: {request.path.decode('latin-1')[:200]}")


class Router(Klein):
    """A resource's Klein app: routes check their names and query parameters,
    errors render here."""

    def __init__(self) -> None:
        super().__init__()
        self.handle_errors(EventBusError)(domain_error)
        self.handle_errors(HTTPException)(routing_error)
        self.handle_errors(Exception)(unexpected)

    def route(
        self,
        url: str,
        *args: Any,
        branch: bool = False,
        query: params.QueryParams = params.NO_QUERY,
        **kwargs: Any,
    ) -> Callable[[F], F]:
        """Klein's ``route``; ``query``: the query parameters the route takes
        (any other is a 400; GET routes also take ``access_token``)."""
        register = super().route(url, *args, branch=branch, **kwargs)
        names = {var: kind for var, kind in NAME_VARIABLES.items() if f"<{var}>" in url}

        def deco(f: F) -> F:
            @functools.wraps(f)
            def checked(resource: Any, request: Request, *a: Any, **kw: Any) -> Any:
                for var, kind in names.items():
                    check_name(kind, kw[var])
                if b"?" in request.uri:
                    query.check(params.query(request), request.method)
                return f(resource, request, *a, **kw)

            register(checked)
            return f

        return deco


class Root(Resource):
    """Mounts each resource by its first path segment, after checking the path."""

    isLeaf = True

    def __init__(self, apps: Mapping[bytes, Resource]) -> None:
        super().__init__()
        self.apps = dict(apps)

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
        app = self.apps.get(request.postpath[0] if request.postpath else b"")
        if app is None:
            return not_found(request)
        return app.render(request)
