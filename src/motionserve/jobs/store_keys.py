"""API keys and the webhook signing key: the store's credentials tables (mixed into `Store`).

Key secrets are 32 random bytes, so a salted SHA-256 is enough (no slow KDF needed: there is no
low-entropy password to brute-force); comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from motionserve.jobs.models import ApiKey, Caller
from motionserve.database import api_keys, server_secrets, signing_keys

if TYPE_CHECKING:
    _Tx = Callable[[], AbstractContextManager[Connection]]


FIRST_ADMIN_KEY_LABEL = "created on first start"
FIRST_ADMIN_KEY_MARKER = "first_admin_key"  # a server_secrets row: only one node creates the first key


def _hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8")).digest()


class KeysMixin:
    if TYPE_CHECKING:
        _write: _Tx
        _read: _Tx
        _clock: Callable[[], float]
        _signing_key_cache: Any

    # -- API keys ---------------------------------------------------------------------------

    def create_key(self, owner: str, label: str = "", *, admin: bool = False) -> tuple[str, str]:
        """A new key; the secret is returned once and only its salted hash is stored.

        Clients send it as `Authorization: Key <key_id>:<secret>` (FAL_KEY="<key_id>:<secret>").
        Admin keys may also read the fleet's state (`GET /workers`, `/metrics`).
        """
        key_id = str(uuid.uuid4())
        secret = secrets.token_hex(32)
        salt = secrets.token_bytes(16)
        with self._write() as conn:
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id, owner=owner, label=label, salt=salt,
                    secret_hash=_hash_secret(salt, secret), created_at=self._clock(), revoked=False,
                    role="admin" if admin else "user",
                )
            )
        return key_id, secret

    def create_first_admin_key(self) -> tuple[str, str] | None:
        """The admin key of a fresh store, created by exactly one of the nodes that start together on
        it (the one whose marker row lands); None when keys exist or another node made it."""
        if self.has_keys():
            return None
        try:
            with self._write() as conn:
                conn.execute(insert(server_secrets).values(name=FIRST_ADMIN_KEY_MARKER, value=b"", created_at=self._clock()))
        except IntegrityError:
            return None  # another node won
        return self.create_key("admin", FIRST_ADMIN_KEY_LABEL, admin=True)

    def verify_key(self, key_id: str, secret: str) -> str | None:
        """The key's owner if `secret` matches an unrevoked key, else None."""
        caller = self.authenticate(key_id, secret)
        return caller.owner if caller is not None else None

    def authenticate(self, key_id: str, secret: str) -> Caller | None:
        """Who an unrevoked key whose `secret` matches belongs to, and whether it is an admin key."""
        with self._read() as conn:
            row = conn.execute(
                select(api_keys.c.owner, api_keys.c.salt, api_keys.c.secret_hash, api_keys.c.revoked, api_keys.c.role)
                .where(api_keys.c.key_id == key_id)
            ).first()
        if row is None:
            return None
        matches = hmac.compare_digest(_hash_secret(bytes(row.salt), secret), bytes(row.secret_hash))
        return Caller(row.owner, row.role == "admin") if matches and not row.revoked else None

    def list_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(
                select(api_keys.c.key_id, api_keys.c.owner, api_keys.c.label, api_keys.c.created_at, api_keys.c.revoked,
                       api_keys.c.role)
                .order_by(api_keys.c.created_at, api_keys.c.key_id)
            ).all()
        return [ApiKey(r.key_id, r.owner, r.label, r.created_at, bool(r.revoked), r.role == "admin") for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        """True if the key existed and was active."""
        with self._write() as conn:
            return bool(
                conn.execute(
                    update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked.is_(False)).values(revoked=True)
                ).rowcount
            )

    def has_keys(self) -> bool:
        """Whether any key was ever created (revoked ones count).

        The API enforces authentication once keys exist; revoking the last key must lock the
        server, not silently open it.
        """
        with self._read() as conn:
            return bool(conn.execute(select(func.count()).select_from(api_keys)).scalar_one())

    # -- webhook signing key ----------------------------------------------------------------

    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key webhooks are signed with: created on first use, then shared by every process."""
        if self._signing_key_cache is not None:
            return self._signing_key_cache
        raw = self._load_signing_key()
        if raw is None:
            fresh = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            try:
                with self._write() as conn:
                    conn.execute(insert(signing_keys).values(slot=1, private_key=fresh, created_at=self._clock()))
            except IntegrityError:
                pass  # another process created it first: use theirs, read below
            raw = self._load_signing_key()
            if raw is None:
                raise RuntimeError("could not create the webhook signing key in the store")
        self._signing_key_cache = Ed25519PrivateKey.from_private_bytes(raw)
        return self._signing_key_cache

    def _load_signing_key(self) -> bytes | None:
        with self._read() as conn:
            value = conn.execute(select(signing_keys.c.private_key).where(signing_keys.c.slot == 1)).scalar()
        return bytes(value) if value is not None else None
