"""Short-lived CDN upload tokens (`POST /rest/storage/auth/token`), as fal's Python client expects.

The client trades its API key for a bearer token and then uploads with that token only. Tokens are
stateless: `base64url(json{owner, exp}).base64url(HMAC-SHA256)`, keyed by a secret kept in the
database (`server_secrets`), so every API node accepts every other node's tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from motionserve.database import WRITE_OPTION, server_secrets

TOKEN_TTL_S = 3600
SECRET_NAME = "upload_token_hmac"
SECRET_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(engine: Engine) -> bytes:
    """The HMAC key every node shares: the first node to start inserts it, the others read it."""
    secret = _load_secret(engine)
    if secret is None:
        try:
            with engine.connect() as conn, conn.execution_options(**{WRITE_OPTION: True}).begin():
                conn.execute(insert(server_secrets).values(
                    name=SECRET_NAME, value=secrets.token_bytes(SECRET_BYTES), created_at=time.time()
                ))
        except IntegrityError:
            pass  # another node inserted it first: use theirs, read below
        secret = _load_secret(engine)
    if secret is None or len(secret) != SECRET_BYTES:
        raise RuntimeError(f"the upload token key ({SECRET_NAME} in server_secrets) is missing or corrupt")
    return secret


def _load_secret(engine: Engine) -> bytes | None:
    with engine.connect() as conn:
        value = conn.execute(select(server_secrets.c.value).where(server_secrets.c.name == SECRET_NAME)).scalar()
    return bytes(value) if value is not None else None


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
