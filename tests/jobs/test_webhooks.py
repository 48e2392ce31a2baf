"""Webhook signing, JWKS verification and delivery with retries, against a real local HTTP receiver."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from motionserve.jobs.store import Store
from motionserve.jobs.webhooks import (
    RETRY_DELAYS_S,
    WebhookDispatcher,
    jwks,
    next_attempt_delay,
    signature_headers,
    verify_signature,
)


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers with the queued status codes (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def finished_job(store: Store, url: str, **finish: object) -> str:
    job = store.submit(owner="alice", endpoint_id="e", input={}, base_url="http://x", webhook_url=url)
    store.claim("w", 30)
    store.finish(job.id, "w", **(finish or {"result": {"video": {"url": "http://x/files/t/v.mp4"}}}))  # type: ignore[arg-type]
    return job.id


def test_delivery_is_signed_and_verifiable_with_jwks(store: Store, clock, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    job_id = finished_job(store, receiver.url)
    dispatcher = WebhookDispatcher(store, allow_private=True, clock=clock)
    assert dispatcher.deliver_due() == 1
    ((headers, body),) = receiver.requests
    assert json.loads(body) == {"request_id": job_id, "gateway_request_id": job_id, "status": "OK",
                                "payload": {"video": {"url": "http://x/files/t/v.mp4"}}, "error": None}
    assert headers["X-Fal-Webhook-Request-Id"] == job_id
    assert headers["X-Fal-Webhook-User-Id"] == "alice"
    assert headers["X-Fal-Webhook-Timestamp"] == str(int(clock.now))
    assert headers["Content-Type"] == "application/json"
    document = jwks(store)
    (key,) = document["keys"]
    assert {k: key[k] for k in ("kty", "crv", "use", "alg")} == {"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA"}
    assert "=" not in key["x"] and key["kid"]
    assert verify_signature(document, headers, body, now=clock.now)
    assert not verify_signature(document, headers, body + b" ", now=clock.now)  # tampered body
    assert not verify_signature(document, headers, body, now=clock.now + 301)  # replayed late
    assert store.webhook_deliveries(job_id)[0]["state"] == "delivered"
    assert dispatcher.deliver_due() == 0


def test_signature_is_ed25519_over_fal_message(store: Store) -> None:
    import hashlib

    body = b'{"a":1}'
    headers = signature_headers(store.signing_key(), "req", "bob", body, timestamp=1700000000)
    message = f"req\nbob\n1700000000\n{hashlib.sha256(body).hexdigest()}".encode()
    store.signing_key().public_key().verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)
    assert not verify_signature({"keys": []}, headers, body, now=1700000000)


def test_failed_delivery_is_retried_on_schedule(store: Store, clock, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    job_id = finished_job(store, receiver.url, error={"status_code": 422, "detail": [{"msg": "m"}],
                                                     "error_type": "validation_error"})
    receiver.statuses = [500, 503]
    dispatcher = WebhookDispatcher(store, allow_private=True, clock=clock)
    assert dispatcher.deliver_due() == 0
    assert store.webhook_deliveries(job_id)[0]["last_error"] == "HTTP 500"
    clock.advance(RETRY_DELAYS_S[0] - 1)
    assert dispatcher.deliver_due() == 0 and len(receiver.requests) == 1  # not due yet
    clock.advance(1)
    assert dispatcher.deliver_due() == 0 and len(receiver.requests) == 2
    clock.advance(RETRY_DELAYS_S[1])
    assert dispatcher.deliver_due() == 1
    bodies = [json.loads(b) for _, b in receiver.requests]
    assert bodies[0] == bodies[2] == {"request_id": job_id, "gateway_request_id": job_id, "status": "ERROR",
                                      "error": "Invalid status code: 422", "payload": {"detail": [{"msg": "m"}]}}
    record = store.webhook_deliveries(job_id)[0]
    assert record["state"] == "delivered" and record["attempts"] == 3


def test_retry_schedule_is_ten_attempts_over_about_two_hours() -> None:
    delays = [next_attempt_delay(n) for n in range(1, 11)]
    assert delays[-1] is None and all(d is not None for d in delays[:-1])
    assert 1.5 * 3600 <= sum(RETRY_DELAYS_S) <= 2.5 * 3600


def test_private_target_refused_unless_allowed_and_never_retried(store: Store, clock, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    job_id = finished_job(store, receiver.url)
    assert WebhookDispatcher(store, allow_private=False, clock=clock).deliver_due() == 0
    assert receiver.requests == []
    record = store.webhook_deliveries(job_id)[0]
    # Refused by policy: no later try could succeed, so it is given up at once (not 10 tries over 2 h).
    assert record["state"] == "failed" and record["attempts"] == 1 and "refused" in record["last_error"]
    clock.advance(3 * 3600)
    assert store.due_webhooks(clock.now) == []


def test_unreachable_receiver_is_an_attempt(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    closed = Receiver()
    closed.close()
    job_id = finished_job(store, closed.url)
    assert WebhookDispatcher(store, allow_private=True, clock=clock).deliver_due() == 0
    record = store.webhook_deliveries(job_id)[0]
    assert record["attempts"] == 1 and record["next_attempt_at"] == clock.now + RETRY_DELAYS_S[0]
    assert record["last_error"].startswith("ConnectError")


def test_run_forever_stops(store: Store, receiver: Receiver) -> None:
    job_id = finished_job(store, receiver.url)
    stop = threading.Event()
    dispatcher = WebhookDispatcher(store, allow_private=True)
    thread = threading.Thread(target=dispatcher.run_forever, args=(stop, 0.05))
    thread.start()
    try:
        for _ in range(200):
            if store.webhook_deliveries(job_id)[0]["state"] == "delivered":
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert store.webhook_deliveries(job_id)[0]["state"] == "delivered"


def test_webhook_target_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from motionserve.errors import FetchError
    from motionserve.jobs.webhooks import resolve_webhook_target

    for refused in ("http://127.0.0.1:9/x", "http://[::1]/x", "http://169.254.169.254/latest", "ftp://example.com/x",
                    "http://10.0.0.8/x"):
        with pytest.raises(FetchError):
            resolve_webhook_target(refused, allow_private=False)
    assert str(resolve_webhook_target("http://127.0.0.1:9/x", allow_private=True).url) == "http://127.0.0.1:9/x"

    answers = {"hooks.example.com": ["93.184.216.34"], "split.example.com": ["93.184.216.34", "192.168.1.5"]}
    monkeypatch.setattr("socket.getaddrinfo", lambda host, port, **kw: [(0, 0, 0, "", (a, port)) for a in answers[host]])
    target = resolve_webhook_target("https://hooks.example.com:8443/in?x=1", allow_private=False)
    # Connect to the address that was checked; the name still goes in Host and TLS SNI.
    assert str(target.url) == "https://93.184.216.34:8443/in?x=1"
    assert target.headers == {"Host": "hooks.example.com:8443"}
    assert target.extensions == {"sni_hostname": "hooks.example.com"}
    with pytest.raises(FetchError, match="192.168.1.5"):
        resolve_webhook_target("https://split.example.com/in", allow_private=False)
