"""Short-lived CDN upload tokens (`POST /rest/storage/auth/token`), as fal's Python client expects.

The client trades its API key for a bearer token and then uploads with that token only. Tokens are
stateless: `base64url(json{owner, exp}).base64url(HMAC-SHA256)`, keyed by a secret kept in the data
directory (created once, 0600), so every server process on the host accepts every other's tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

TOKEN_TTL_S = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: Path) -> bytes:
    """The HMAC key at `path`; the first process to start writes it (exclusive create, 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    for _ in range(50):  # another process may be between create and write
        data = path.read_bytes()
        if len(data) == 32:
            return data
        time.sleep(0.01)
    raise RuntimeError(f"Upload token key {path} is corrupt (expected 32 bytes); delete it to regenerate")


class UploadTokens:
    def __init__(self, secret: bytes, ttl_s: float = TOKEN_TTL_S) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, owner: str, now: float | None = None) -> tuple[str, float]:
        """A token for `owner` and the epoch time it expires at."""
        expires_at = (time.time() if now is None else now) + self.ttl_s
        payload = _b64(json.dumps({"o": owner, "e": expires_at}, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", expires_at

    def verify(self, token: str, now: float | None = None) -> str | None:
        """The owner a valid, unexpired token was issued to; None otherwise."""
        payload, sep, signature = token.partition(".")
        if not sep or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            claims = json.loads(_unb64(payload))
            owner, expires_at = str(claims["o"]), float(claims["e"])
        except (ValueError, KeyError, TypeError):
            return None
        return owner if expires_at > (time.time() if now is None else now) else None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("utf-8"), hashlib.sha256).digest())
