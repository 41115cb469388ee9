"""Small HTTP helpers over real loopback connections (treq)."""
from __future__ import annotations

import json
from typing import Any, Optional

import treq
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

_pool = HTTPConnectionPool(reactor, persistent=True)
_pool.maxPersistentPerHost = 64
_agent = Agent(reactor, pool=_pool)


class Response:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.body[:200]!r}>"


async def request(method: str, url: str, *, data: Any = None, json_body: Any = None,
                  headers: Optional[dict[str, str]] = None, persistent: bool = True) -> Response:
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if json_body is not None:
        data = json.dumps(json_body).encode()
    if data is not None:
        kwargs["data"] = data
    if persistent:
        kwargs["agent"] = _agent
    else:
        kwargs["persistent"] = False
    resp = await treq.request(method, url, **kwargs)
    body = await resp.content()
    return Response(resp.code, resp.headers, body)


async def publish(base: str, context: str, channel: str, payload: Any,
                  issuer: str = "tests") -> Response:
    return await request("POST", f"{base}/events/{context}/{channel}",
                         json_body=payload, headers={"X-EVENT-ISSUER": issuer})


async def get(url: str, **kw: Any) -> Response:
    return await request("GET", url, **kw)
