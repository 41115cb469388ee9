"""Helpers for tests of access control: the token command line as a
subprocess, and requests that carry a token."""
from __future__ import annotations

import subprocess
import sys
from typing import Any, Optional

from twisted.internet import threads

from tests.client import Response, request
from tests.servers import REPO


def token_cli(*args: str, dsn: Optional[str] = None, data_dir: Optional[str] = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """``python -m eventbus token ARGS --dsn DSN`` (blocking)."""
    where = ["--dsn", dsn] if dsn else ["--data-dir", str(data_dir)]
    done = subprocess.run([sys.executable, "-m", "eventbus", "token", *args, *where], cwd=str(REPO),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"token {args} failed ({done.returncode}): {done.stderr}")
    return done


async def token_cli_async(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    return await threads.deferToThread(token_cli, *args, **kw)


async def create_token(name: str, *scopes: str, dsn: Optional[str] = None,
                       data_dir: Optional[str] = None, extra: tuple[str, ...] = ()) -> str:
    args = ["create", name, *(a for s in scopes for a in ("--scope", s)), *extra]
    done = await token_cli_async(*args, dsn=dsn, data_dir=data_dir)
    token = done.stdout.strip()
    assert token.startswith("ebt_") and "\n" not in token, done.stdout
    return token


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


async def call(method: str, url: str, token: Optional[str] = None, *, json_body: Any = None,
               headers: Optional[dict[str, str]] = None) -> Response:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    return await request(method, url, json_body=json_body, headers=h)
