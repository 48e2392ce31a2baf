"""Submitting through `/queue/...` and `/run/...`: responses, validation, headers, sync runs."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from motionserve.jobs.models import JobState, Priority

from .conftest import Api, make_api

BASE = "http://testserver"


def test_submit_returns_fal_queue_body_with_absolute_urls_without_subpath(api: Api) -> None:
    r = api.client.post("/queue/test-owner/echo/slow", json={"prompt": "hi"}, headers=api.auth)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    rid = body["request_id"]
    assert r.headers["x-fal-request-id"] == rid
    assert body == {
        "status": "IN_QUEUE",
        "request_id": rid,
        "gateway_request_id": rid,
        "response_url": f"{BASE}/queue/test-owner/echo/requests/{rid}",
        "status_url": f"{BASE}/queue/test-owner/echo/requests/{rid}/status",
        "cancel_url": f"{BASE}/queue/test-owner/echo/requests/{rid}/cancel",
        "queue_position": 0,
    }
    job = api.store.get(rid)
    assert job is not None
    assert job.endpoint_id == "test-owner/echo/slow"  # the full id, subpath included
    assert job.owner == "alice" and api.store.get(job.id, with_input=True).input == {"prompt": "hi"}  # type: ignore[union-attr]
    assert job.base_url == BASE
    assert job.file_retention_s == api.settings.file_retention_s


def test_trailing_slash_on_submit_is_tolerated(api: Api) -> None:
    r = api.client.post("/queue/test-owner/echo/", json={"prompt": "hi"}, headers=api.auth)
    assert r.status_code == 200
    assert api.store.get(r.json()["request_id"]).endpoint_id == "test-owner/echo"  # type: ignore[union-attr]


@pytest.mark.parametrize("path", ["/queue/test-owner/nope", "/queue/just-one-segment", "/run/test-owner/echo/nope"])
def test_unknown_endpoint_is_404_json(api: Api, path: str) -> None:
    r = api.client.post(path, json={"prompt": "hi"}, headers=api.auth)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["detail"], str)


def test_queue_position_counts_jobs_ahead_and_priority_jumps_low(api: Api) -> None:
    low = api.submit(headers={"X-Fal-Queue-Priority": "low"})
    first = api.submit()
    second = api.submit()
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    assert api.store.get(low["request_id"]).priority == Priority.LOW  # type: ignore[union-attr]
    status = api.client.get(f"/queue/test-owner/echo/requests/{low['request_id']}/status", headers=api.auth).json()
    assert status["queue_position"] == 2  # both normal jobs run before it
    assert api.worker.run_one().id == first["request_id"]


@pytest.mark.parametrize(
    ("payload", "loc", "type_"),
    [
        ({}, ["body", "prompt"], "missing"),
        ({"prompt": 5}, ["body", "prompt"], "string_type"),
        ({"prompt": "x", "num_frames": "many"}, ["body", "num_frames"], "int_parsing"),
        ({"prompt": "x", "num_frames": 0}, ["body", "num_frames"], "greater_than_equal"),
        ({"prompt": "x", "num_frames": 40}, ["body", "num_frames"], "value_error"),  # over settings.max_frames=32
    ],
)
@pytest.mark.parametrize("route", ["/queue", "/run"])
def test_invalid_input_is_422_with_fal_detail_list(api: Api, route: str, payload: dict[str, Any], loc: list[str], type_: str) -> None:
    r = api.client.post(f"{route}/test-owner/echo", json=payload, headers=api.auth)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert set(r.json()) == {"detail"}
    assert [(d["loc"], d["type"]) for d in detail] == [(loc, type_)]
    assert all(isinstance(d["msg"], str) for d in detail)
    assert api.worker.claim() is None  # nothing was queued


@pytest.mark.parametrize(("raw", "type_"), [(b"{not json", "json_invalid"), (b"[1, 2]", "dict_type"), (b'"text"', "dict_type")])
def test_malformed_or_non_object_body_is_422_in_the_same_shape(api: Api, raw: bytes, type_: str) -> None:
    r = api.client.post("/queue/test-owner/echo", content=raw, headers={**api.auth, "Content-Type": "application/json"})
    assert r.status_code == 422
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["body"] and entry["type"] == type_


def test_oversized_body_is_413_json(api: Api) -> None:
    big = b'{"prompt": "' + b"x" * (64 * 1024 * 1024 + 10) + b'"}'
    r = api.client.post("/queue/test-owner/echo", content=big, headers={**api.auth, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert "too large" in r.json()["detail"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Fal-Queue-Priority", "urgent"),
        ("X-Fal-Request-Timeout", "soon"),
        ("X-Fal-Request-Timeout", "0"),
        ("X-Fal-Request-Timeout", "-3"),
        ("X-Fal-Object-Lifecycle-Preference", "{bad"),
        ("X-Fal-Object-Lifecycle-Preference", '{"expiration_duration_seconds": -1}'),
        ("X-Fal-Runner-Hint", "h" * 201),
    ],
)
def test_bad_fal_headers_are_422_naming_the_header(api: Api, header: str, value: str) -> None:
    r = api.client.post("/queue/test-owner/echo", json={"prompt": "x"}, headers={**api.auth, header: value})
    assert r.status_code == 422
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["header", header.lower()]


def test_other_fal_headers_are_accepted(api: Api) -> None:
    headers = {"X-Fal-Runner-Hint": "abc", "x-fal-no-retry": "1", "X-Fal-Request-Timeout": "30.0"}
    api.submit(headers=headers)
    api.submit(headers={"x-fal-request-timeout": "30"})


def test_runner_hint_and_no_retry_are_kept_with_the_job(api: Api) -> None:
    hinted = api.submit(headers={"X-Fal-Runner-Hint": "loras:ghibli", "X-Fal-No-Retry": "true"})["request_id"]
    plain = api.submit(headers={"X-Fal-No-Retry": "0"})["request_id"]
    job, other = api.store.get(hinted), api.store.get(plain)
    assert job.runner_hint == "loras:ghibli" and job.no_retry  # type: ignore[union-attr]
    assert other.runner_hint is None and not other.no_retry  # type: ignore[union-attr]


def test_request_timeout_expires_queued_job_as_user_504(api: Api) -> None:
    body = api.submit(headers={"X-Fal-Request-Timeout": "0.05"})
    time.sleep(0.1)
    assert api.worker.claim() is None  # the claim expires it instead of running it
    rid = body["request_id"]
    status = api.client.get(f"/queue/test-owner/echo/requests/{rid}/status", headers=api.auth)
    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED" and status.json()["error_type"] == "request_timeout"
    r = api.client.get(f"/queue/test-owner/echo/requests/{rid}", headers=api.auth)
    assert r.status_code == 504
    assert r.headers["x-fal-request-timeout-type"] == "user"
    assert r.headers["x-fal-error-type"] == "request_timeout"
    assert r.json() == {"detail": "Request timed out", "error_type": "request_timeout"}


def test_lifecycle_preference_sets_output_retention(api: Api) -> None:
    lifecycle = json.dumps({"expiration_duration_seconds": 120, "initial_acl": {"default": "allow"}})
    body = api.submit(headers={"X-Fal-Object-Lifecycle-Preference": lifecycle})
    assert api.store.get(body["request_id"]).file_retention_s == 120  # type: ignore[union-attr]


def test_webhook_url_is_stored_and_must_be_http(api: Api) -> None:
    body = api.submit(params={"fal_webhook": "https://hooks.example/x?a=1"})
    assert api.store.get(body["request_id"]).webhook_url == "https://hooks.example/x?a=1"  # type: ignore[union-attr]
    r = api.client.post("/queue/test-owner/echo", params={"fal_webhook": "ftp://x"}, json={"prompt": "x"}, headers=api.auth)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


@pytest.mark.parametrize("hook", ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest",
                                  "https://[::1]/hook", "http://localhost/hook"])
def test_a_webhook_the_server_will_never_call_is_refused_at_submit(api: Api, hook: str) -> None:
    r = api.client.post("/queue/test-owner/echo", params={"fal_webhook": hook}, json={"prompt": "x"}, headers=api.auth)
    assert r.status_code == 422, r.text
    (entry,) = r.json()["detail"]
    assert entry["loc"] == ["query", "fal_webhook"] and "non-public address" in entry["msg"]


def test_private_webhooks_are_accepted_when_the_operator_allows_them(tmp_path: Any) -> None:
    for api in make_api(tmp_path, allow_private_urls=True):
        api.submit(params={"fal_webhook": "http://127.0.0.1:9/hook"})


def _work_in_background(api: Api, action: str = "succeed") -> threading.Thread:
    def work() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            job = api.worker.claim()
            if job is not None:
                if action == "succeed":
                    api.worker.succeed(job, {"echo": job.input["prompt"], "video": None})
                else:
                    api.worker.fail(job, 503, "The model is not installed", "model_unavailable")
                return
            time.sleep(0.02)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_run_waits_for_the_output(api: Api) -> None:
    worker = _work_in_background(api)
    r = api.client.post("/run/test-owner/echo", json={"prompt": "sync"}, headers=api.auth)
    worker.join()
    assert r.status_code == 200
    assert r.json() == {"echo": "sync", "video": None}
    assert api.store.get(r.headers["x-fal-request-id"]).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_run_returns_the_failure_status_and_detail(api: Api) -> None:
    worker = _work_in_background(api, "fail")
    r = api.client.post("/run/test-owner/echo/slow", json={"prompt": "sync"}, headers=api.auth)
    worker.join()
    assert r.status_code == 503
    assert r.json() == {"detail": "The model is not installed", "error_type": "model_unavailable"}
    assert r.headers["x-fal-error-type"] == "model_unavailable"


def test_run_times_out_and_cancels(tmp_path: Any) -> None:
    from .conftest import make_api

    for api in make_api(tmp_path, sync_run_timeout_s=0.2):
        r = api.client.post("/run/test-owner/echo", json={"prompt": "x"}, headers=api.auth)
        assert r.status_code == 504
        assert api.store.get(r.headers["x-fal-request-id"]).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_run_cancels_the_job_when_the_client_disconnects(api: Api) -> None:
    """Driven at the ASGI level: the client sends its body, then hangs up while the job is queued."""
    import anyio

    body = json.dumps({"prompt": "x"}).encode()
    sent: list[dict[str, Any]] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/run/test-owner/echo", "raw_path": b"/run/test-owner/echo", "query_string": b"", "root_path": "",
        "headers": [(b"authorization", f"Key {api.key}".encode()), (b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    anyio.run(api.client.app, scope, receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 499
    request_id = dict(start["headers"])[b"x-fal-request-id"].decode()
    assert api.store.get(request_id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Any) -> None:
    for api in make_api(tmp_path, max_queue_length=2):
        api.submit()
        api.submit()
        r = api.client.post("/queue/test-owner/echo", json={"prompt": "x"}, headers=api.auth)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert "full" in r.json()["detail"]
        api.worker.run_one()  # one leaves the queue: there is room again
        api.submit()
