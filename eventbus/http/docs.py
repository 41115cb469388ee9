"""``/openapi.json`` and ``/docs``: the API's description, for programs and for people.

Invariant: both are built once, when the process starts, from what ships
in the package (:mod:`eventbus.http.openapi` and its ``docs.html``):
nothing is fetched from elsewhere, by the server or by the page (its
Content-Security-Policy allows its own inline script and style, by hash,
and requests to this origin only).  Neither needs a token.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection
from importlib import resources

from twisted.web.server import Request

from eventbus.http import openapi, render
from eventbus.http.router import PUBLIC, Router

DOCS_PAGE = "docs.html"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


def page() -> bytes:
    """The docs page as shipped in the package."""
    return resources.files(openapi).joinpath(DOCS_PAGE).read_bytes()


def content_security_policy(html: bytes) -> bytes:
    """Only the page's own inline script and style run, and it talks to this origin only."""
    hashes: dict[bytes, list[bytes]] = {b"script": [], b"style": []}
    for kind, text in _INLINE.findall(html):
        hashes[kind].append(b"'sha256-" + base64.b64encode(hashlib.sha256(text).digest()) + b"'")
    return (
        b"default-src 'none'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none';"
        b" script-src " + b" ".join(hashes[b"script"]) + b"; style-src " + b" ".join(hashes[b"style"])
    )


class DocsResource:
    """The routes ``/openapi.json`` and ``/docs``."""

    router = Router()

    #: The first path segments of these routes.
    SEGMENTS = (b"openapi.json", b"docs")

    def __init__(
        self, *, max_wait: float, max_batch: int, auth_mode: str, mounted: Collection[bytes]
    ) -> None:
        """``mounted``: the first path segments of the API's other resources."""
        self.document = openapi.rendered(
            max_wait=max_wait, max_batch=max_batch, auth_mode=auth_mode, mounted={*mounted, *self.SEGMENTS}
        )
        self.page = page()
        self.policy = content_security_policy(self.page)

    @router.route("/openapi.json", methods=["GET"], need=PUBLIC)
    def openapi_json(self, request: Request) -> bytes:
        return render.body(request, self.document)

    @router.route("/docs", methods=["GET"], need=PUBLIC)
    def docs(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(self.page))
        request.setHeader(b"Content-Security-Policy", self.policy)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return self.page
