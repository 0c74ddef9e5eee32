"""Standard Webhooks signatures for signed POST postbacks.

The receiver checks `webhook-signature` = `v1,` + base64(HMAC-SHA256(key,
f"{webhook-id}.{webhook-timestamp}.{body}")). `webhook-id` is the pair's stable event id,
so a receiver can also drop duplicates; the timestamp is fresh on every attempt, because
receivers refuse stale timestamps (replay protection).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """`whsec_<base64>` is the Standard Webhooks spelling; anything else is raw text."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if key:
            return key
    return secret.encode("utf-8")


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    if not secret:
        raise ValueError("a signing secret is required")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{base64.b64encode(digest).decode('ascii')}",
    }
