"""Webhook delivery the way fal does it: signed POSTs, a JWKS document, 10 tries over about 2 hours.

Signature (fal-protocol.md §2): headers `X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp` (unix
seconds) and `-Signature`, the hex Ed25519 signature of
`request_id \\n user_id \\n timestamp \\n sha256_hex(body)`; receivers fetch our public key from
`/.well-known/jwks.json` and reject timestamps more than 5 minutes off.

Deliveries are rows in the store (created when the job finished), so they survive restarts and
any process running a dispatcher can send them.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Mapping

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from motionserve.database import log_failure
from motionserve.errors import AddressRefusedError, FetchError
from motionserve.jobs.models import PendingWebhook
from motionserve.jobs.webhook_payload import fal_webhook_payload, webhook_body
from motionserve.storage.fetch import checked_addresses, tls_context

if TYPE_CHECKING:
    from motionserve.jobs.store import Store

__all__ = [
    "RETRY_DELAYS_S", "WebhookDispatcher", "fal_webhook_payload", "jwks", "key_id",
    "signature_headers", "verify_signature", "webhook_body",
]

log = logging.getLogger(__name__)

# Wait before attempt 2, 3, ... 10: 10 attempts over ~2 h (7215 s), as fal documents.
RETRY_DELAYS_S: tuple[float, ...] = (15, 60, 180, 360, 600, 900, 1200, 1800, 2100)
DELIVERY_TIMEOUT_S = 15.0
TIMESTAMP_TOLERANCE_S = 300

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"


# -- signing -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public_key: Ed25519PublicKey) -> str:
    """A stable `kid`: derived from the key itself, so every process names it the same way."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()[:16]


def _signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join((request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())).encode("utf-8")


def signature_headers(
    private_key: Ed25519PrivateKey, request_id: str, user_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    ts = str(int(time.time() if timestamp is None else timestamp))
    signature = private_key.sign(_signed_message(request_id, user_id, ts, body)).hex()
    return {REQUEST_ID_HEADER: request_id, USER_ID_HEADER: user_id, TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature}


def jwks(store: "Store") -> dict[str, Any]:
    """The public half of the signing key as a JWKS document (OKP / Ed25519)."""
    public = store.signing_key().public_key()
    return {
        "keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public.public_bytes_raw()), "kid": key_id(public),
             "use": "sig", "alg": "EdDSA"}
        ]
    }


def verify_signature(
    jwks_document: Mapping[str, Any],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = TIMESTAMP_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver does: a fresh timestamp and a valid signature by one of the JWKS keys."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        request_id = lower[REQUEST_ID_HEADER.lower()]
        user_id = lower[USER_ID_HEADER.lower()]
        timestamp = lower[TIMESTAMP_HEADER.lower()]
        signature = bytes.fromhex(lower[SIGNATURE_HEADER.lower()])
        if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
            return False
    except (KeyError, ValueError):
        return False
    message = _signed_message(request_id, user_id, timestamp, body)
    for jwk in jwks_document.get("keys", ()):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"])).verify(signature, message)
            return True
        except (InvalidSignature, ValueError, KeyError):
            continue
    return False


# -- target address policy -----------------------------------------------------------------


class _Target:
    """Where to POST: the URL (pinned to a checked IP address unless private targets are allowed)."""

    def __init__(self, url: httpx.URL, headers: dict[str, str], extensions: dict[str, Any]) -> None:
        self.url, self.headers, self.extensions = url, headers, extensions


def resolve_webhook_target(url: str, allow_private: bool) -> _Target:
    """Refuse non-http(s) URLs and, unless allowed, hosts with any non-public address.

    Same policy as input fetches (motionserve.storage.addresses): a webhook must not be a way to
    make the server POST into the operator's network. The connection goes to the address that was
    checked (the name travels in Host and TLS SNI), so DNS rebinding cannot change it afterwards.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise AddressRefusedError(f"invalid webhook URL {url[:120]!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise AddressRefusedError(f"webhook URL must be http(s) with a host: {url[:120]!r}")
    if allow_private:
        return _Target(parsed, {}, {})
    host = parsed.raw_host.decode("ascii")
    addresses = checked_addresses(host, parsed.port or (443 if parsed.scheme == "https" else 80))
    extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
    return _Target(parsed.copy_with(host=str(addresses[0])), {"Host": parsed.netloc.decode("ascii")}, extensions)


# -- delivery ------------------------------------------------------------------------------


def next_attempt_delay(failed_attempts: int) -> float | None:
    """Seconds to wait after the `failed_attempts`-th failure; None once all 10 tries are used."""
    if failed_attempts < 1 or failed_attempts > len(RETRY_DELAYS_S):
        return None
    return RETRY_DELAYS_S[failed_attempts - 1]


class WebhookDispatcher:
    """Sends due deliveries from the store. Safe to run in several processes at once."""

    def __init__(
        self,
        store: "Store",
        allow_private: bool = False,
        fetch_timeout: float = DELIVERY_TIMEOUT_S,
        *,
        batch_size: int = 16,
        concurrency: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.allow_private = allow_private
        self.timeout = fetch_timeout
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.clock = clock

    def deliver_due(self) -> int:
        """Attempt every delivery that is due now; returns how many were delivered."""
        due = self.store.due_webhooks(self.clock(), self.batch_size)
        if not due:
            return 0
        # One slow receiver (15 s timeout) must not hold up the others.
        self.store.signing_key()  # create it (once, race-safe) before the threads need it
        # trust_env=False: a proxy would make the address check meaningless (as for input fetches).
        verify = tls_context()
        with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(due))) as pool:
                return sum(pool.map(lambda hook: self._deliver(client, hook), due))

    def _deliver(self, client: httpx.Client, hook: PendingWebhook) -> bool:
        error: str | None
        refused = False
        try:
            target = resolve_webhook_target(hook.url, self.allow_private)
            headers = signature_headers(self.store.signing_key(), hook.job_id, hook.owner, hook.body, int(self.clock()))
            headers.update({"Content-Type": "application/json", "User-Agent": "motionserve-webhook", **target.headers})
            response = client.post(target.url, content=hook.body, headers=headers, extensions=target.extensions)
            error = None if response.is_success else f"HTTP {response.status_code}"
        except AddressRefusedError as exc:
            error, refused = f"refused: {exc.message}", True  # policy: never tried again
        except FetchError as exc:
            error = f"refused: {exc.message}"  # e.g. the name does not resolve (yet): worth a retry
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivered = error is None
        delay = None if delivered or refused else next_attempt_delay(hook.attempts + 1)
        try:
            self.store.record_webhook_attempt(
                hook.id, delivered, error, None if delay is None else self.clock() + delay
            )
        except Exception:
            log.exception("could not record webhook attempt %s for request %s", hook.id, hook.job_id)
        if error is not None:
            log.warning("webhook for request %s to %s failed (attempt %d): %s",
                        hook.job_id, hook.url, hook.attempts + 1, error)
        return delivered

    def run_forever(self, stop_event: threading.Event, poll_s: float = 1.0) -> None:
        while not stop_event.is_set():
            try:
                self.deliver_due()
            except Exception:  # a database hiccup must not end webhook delivery for good
                log_failure(log, "webhook delivery round failed")
            stop_event.wait(poll_s)
