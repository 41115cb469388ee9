"""``/ui/``: the web console, static files shipped in the package.

Invariant: the console is a handful of files read once from
``eventbus/http/static/`` when the server starts and served as they are,
never built from a request: nothing a client sends reaches a page.  Every
answer under ``/ui`` carries :data:`SECURITY_HEADERS` (a strict
Content-Security-Policy: scripts and styles from this origin only, no inline
script, ``connect-src 'self'``; no framing), ``Cache-Control: no-cache``
with a strong ``ETag`` (a browser revalidates and gets a ``304`` until the
server runs a new version), and the content type of its extension.

The console is public, like ``/health``: it holds no data, so it loads in
every ``--auth`` mode, and then reads everything through the public API
with the token its user enters (the router's ``Root`` skips the gate for
``/ui``; see :data:`~eventbus.http.router.PUBLIC_SEGMENTS`).

Layer rule: the HTTP layer; reads only its own package data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from twisted.web.resource import Resource
from twisted.web.server import Request

from eventbus.http import render

#: Where the files are, inside this package.
STATIC_PACKAGE = "eventbus.http"
STATIC_DIRECTORY = "static"
#: The console's path, and the page its folder answers with.
PREFIX = b"ui"
INDEX = "index.html"

#: Content type by file extension; a file of any other kind is not served.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}

#: What the browser may do with the console's pages.  ``style-src`` has no
#: ``'unsafe-inline'``: styles come from console.css, and the scripts set
#: sizes through the CSSOM, which CSP does not restrict.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY,
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cross-Origin-Resource-Policy": b"same-origin",
}
#: Revalidate every time (cheap: a 304), so a new server version shows at once.
CACHE_CONTROL = b"no-cache"
ALLOWED_METHODS = b"GET, HEAD"
#: The console's route patterns, as the metrics label its requests.
ROUTES = ("/ui", "/ui/", "/ui/<file>")


def route(path: str) -> str | None:
    """The console's route pattern a (decoded) path matches, if any: ``/ui``
    (the redirect), ``/ui/`` (the page), ``/ui/<file>`` (any one name: a
    bounded label, whether the file exists or not)."""
    if path in ("/ui", "/ui/"):
        return path
    if path.startswith("/ui/") and "/" not in path[4:]:
        return "/ui/<file>"
    return None


@dataclass(frozen=True)
class StaticFile:
    content: bytes
    content_type: bytes
    etag: bytes


def load_files() -> dict[bytes, StaticFile]:
    """Every servable file of the static folder, by name (no subfolders)."""
    files: dict[bytes, StaticFile] = {}
    folder = resources.files(STATIC_PACKAGE).joinpath(STATIC_DIRECTORY)
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or entry.name.startswith(".") or suffix not in CONTENT_TYPES:
            continue
        content = entry.read_bytes()
        etag = b'"' + hashlib.sha256(content).hexdigest()[:32].encode() + b'"'
        files[entry.name.encode()] = StaticFile(content, CONTENT_TYPES[suffix], etag)
    if INDEX.encode() not in files:
        raise RuntimeError(f"the console's {INDEX} is missing from the package: reinstall eventbus")
    return files


class ConsoleResource(Resource):
    """Answers ``/ui`` (a redirect to ``/ui/``), ``/ui/`` (the page) and ``/ui/<file>``."""

    isLeaf = True

    def __init__(self, files: dict[bytes, StaticFile] | None = None) -> None:
        super().__init__()
        self.files = load_files() if files is None else files

    def render(self, request: Request) -> bytes:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", ALLOWED_METHODS)
            method = request.method.decode("latin-1")
            return render.error(request, 405, f"method {method} not allowed here; allowed: GET, HEAD")
        path = request.postpath or []
        segments = path[1:] if path[:1] == [PREFIX] else path
        if not segments:
            # "/ui": the page's relative links need the folder's slash.
            request.setResponseCode(308)
            request.setHeader(b"Location", b"ui/" + self._query(request))
            request.setHeader(b"Content-Length", b"0")
            return b""
        name = segments[0] or INDEX.encode()
        found = self.files.get(name) if len(segments) == 1 else None
        if found is None:
            return render.error(request, 404, f"no such resource: {request.path.decode('latin-1')[:200]}")
        request.setHeader(b"ETag", found.etag)
        request.setHeader(b"Cache-Control", CACHE_CONTROL)
        if found.etag in _etags(request.getHeader(b"If-None-Match")):
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Type", found.content_type)
        request.setHeader(b"Content-Length", b"%d" % len(found.content))
        return found.content

    @staticmethod
    def _query(request: Request) -> bytes:
        _, mark, query = request.uri.partition(b"?")
        return mark + query


def _etags(header: bytes | None) -> set[bytes]:
    if header is None:
        return set()
    return {tag.strip().removeprefix(b"W/") for tag in header.split(b",")}
