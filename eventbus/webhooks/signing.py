"""Webhook secrets and signatures, as Standard Webhooks defines them.

Invariant: a secret is ``whsec_`` + base64 of 24 to 64 random bytes, and
the signature of a delivery is ``v1,`` + base64(HMAC-SHA256(key,
"<webhook-id>.<webhook-timestamp>.<body>")) with the decoded bytes as key,
so any Standard Webhooks library verifies our requests with the secret as is.

Layer rule: pure functions; imports only :mod:`eventbus.errors`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from eventbus.errors import InvalidInput

SECRET_PREFIX = "whsec_"
#: Random bytes in a secret the server generates.
SECRET_BYTES = 32
#: Key sizes the Standard Webhooks specification allows.
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret: the decoded bytes."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidInput(
            f"secret must be {SECRET_PREFIX!r} followed by base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"secret is not {SECRET_PREFIX!r} followed by valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidInput(f"secret must encode {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {len(key)}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: HMAC-SHA256 over ``id.timestamp.body``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")
