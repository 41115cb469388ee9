"""``/tokens``: create, list, show and revoke access tokens (``admin`` only).

Invariant: a token's secret appears in exactly one answer, the ``201`` to
its creation; lists and shows carry its name, scopes, issuers and times,
never the secret nor its digest.

Layer rule: the HTTP layer.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from eventbus.auth import Action, require_admin
from eventbus.http import access, params, render
from eventbus.http.router import Router
from eventbus.model import TokenRecord
from eventbus.tokens import TokenService

#: The fields of ``POST /tokens``.
FIELDS = ("name", "scopes", "issuers", "expires_in")
ADMIN = (Action.ADMIN,)


def token_object(record: TokenRecord, secret: str | None = None) -> dict[str, Any]:
    """The token as the API shows it; ``secret`` only in the answer to its creation."""
    shown: dict[str, Any] = {
        "name": record.name,
        "scopes": list(record.scopes),
        "issuers": None if record.issuers is None else list(record.issuers),
        "created": record.created,
        "expires": record.expires,
        "last_used": record.last_used,
    }
    if secret is not None:
        shown["token"] = secret
    return shown


class TokensResource:
    """The routes under ``/tokens``."""

    router = Router()

    def __init__(self, tokens: TokenService) -> None:
        self.tokens = tokens

    @router.route("/tokens", methods=["POST"], need=ADMIN)
    async def create(self, request: Request) -> bytes:
        require_admin(access.principal_of(request))
        fields = params.object_body(params.body(request), FIELDS)
        record, secret = await self.tokens.create(
            fields.get("name"), fields.get("scopes"), fields.get("issuers"), fields.get("expires_in")
        )
        request.setHeader(b"Location", f"/tokens/{record.name}".encode())
        request.setHeader(b"Cache-Control", b"no-store")
        return render.json(request, token_object(record, secret), 201)

    @router.route("/tokens", methods=["GET"], need=ADMIN)
    async def list_all(self, request: Request) -> bytes:
        require_admin(access.principal_of(request))
        return render.json(request, [token_object(r) for r in await self.tokens.list()])

    @router.route("/tokens/<token_name>", methods=["GET"], need=ADMIN)
    async def get(self, request: Request, token_name: str) -> bytes:
        require_admin(access.principal_of(request))
        return render.json(request, token_object(await self.tokens.get(token_name)))

    @router.route("/tokens/<token_name>", methods=["DELETE"], need=ADMIN)
    async def revoke(self, request: Request, token_name: str) -> bytes:
        require_admin(access.principal_of(request))
        await self.tokens.revoke(token_name)
        return render.no_content(request)
