"""Verify a fal-style webhook delivery the way a receiving application would.

Scheme (fal-protocol.md §2): Ed25519 over `request_id\\nuser_id\\ntimestamp\\nsha256_hex(body)`, in the
X-Fal-Webhook-* headers; public keys from the server's JWKS document (OKP / Ed25519, `x` base64url).
"""

from __future__ import annotations

import base64
import hashlib
import time

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOLERANCE_S = 300


def _b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def fetch_jwks_keys(jwks_url: str, ca_file: str) -> list[Ed25519PublicKey]:
    doc = httpx.get(jwks_url, verify=ca_file, timeout=30).raise_for_status().json()
    keys = [
        Ed25519PublicKey.from_public_bytes(_b64url(k["x"]))
        for k in doc.get("keys", [])
        if k.get("kty") == "OKP" and k.get("crv") == "Ed25519"
    ]
    assert keys, f"no Ed25519 key in {jwks_url}: {doc}"
    return keys


def verify(headers: dict[str, str], body: bytes, keys: list[Ed25519PublicKey]) -> None:
    """Raise AssertionError unless one of `keys` signed this delivery recently."""
    h = {k.lower(): v for k, v in headers.items()}
    request_id = h["x-fal-webhook-request-id"]
    user_id = h["x-fal-webhook-user-id"]
    timestamp = h["x-fal-webhook-timestamp"]
    signature = bytes.fromhex(h["x-fal-webhook-signature"])
    assert abs(time.time() - int(timestamp)) <= TOLERANCE_S, f"stale webhook timestamp {timestamp}"
    message = "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode()
    for key in keys:
        try:
            key.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise AssertionError("webhook signature does not verify against any JWKS key")
