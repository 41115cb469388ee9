"""One module per scenario; each has ``NAME`` and ``run(ctx) -> Result``.

Shared here: the context name and the payloads every scenario publishes,
so the event bus and its baselines carry exactly the same bytes.
"""
from __future__ import annotations

import json

CONTEXT = "bench"
ISSUER = "bench"
PUBLISH_HEADERS = {"X-EVENT-ISSUER": ISSUER, "Content-Type": "application/json"}
#: A typical small event: 63 bytes of JSON.
EVENT = b'{"n": 1, "kind": "benchmark", "text": "0123456789abcdef012345"}'


def event(n: int) -> str:
    return json.dumps({"n": n, "kind": "benchmark", "text": "0123456789abcdef012345"})


def batch_body(size: int) -> bytes:
    """A batch publish body: a JSON array of ``size`` events."""
    return ("[" + ",".join(event(n) for n in range(size)) + "]").encode()
