"""Status, SSE status stream, result and cancel of a submitted request, as the fal clients use them."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime

import pytest

from .conftest import Api

APP = "/queue/test-owner/echo"


def _status(api: Api, rid: str, logs: str | None = None, app: str = APP, suffix: str = "") -> tuple[int, dict]:
    params = {"logs": logs} if logs is not None else {}
    r = api.client.get(f"{app}/requests/{rid}/status{suffix}", params=params, headers=api.auth)
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-fal-request-id"] == rid
    return r.status_code, r.json()


def test_status_through_the_lifecycle(api: Api) -> None:
    rid = api.submit()["request_id"]
    code, body = _status(api, rid)
    assert code == 202
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0
    assert body["response_url"].endswith(f"/queue/test-owner/echo/requests/{rid}")
    assert {"status_url", "cancel_url", "request_id"} <= set(body)

    job = api.worker.claim()
    assert job is not None
    api.worker.log(job, "step 1/2", "step 2/2")
    code, body = _status(api, rid)
    assert code == 202 and body["status"] == "IN_PROGRESS"
    assert body["logs"] is None  # present but null without logs=1
    code, body = _status(api, rid, logs="1")
    assert [line["message"] for line in body["logs"]] == ["step 1/2", "step 2/2"]
    line = body["logs"][0]
    assert line["level"] == "INFO" and line["source"] == "USER"
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None

    api.worker.succeed(job)
    code, body = _status(api, rid, logs="true")
    assert code == 200
    assert body["status"] == "COMPLETED" and body["metrics"] == {"inference_time": 0.25}
    assert len(body["logs"]) == 2 and "error" not in body
    code, body = _status(api, rid, logs="false")
    assert body["logs"] is None


def test_failure_is_completed_with_error_and_result_carries_status(api: Api) -> None:
    rid = api.submit()["request_id"]
    job = api.worker.claim()
    detail = [{"loc": ["body", "video_url"], "msg": "Could not fetch the file", "type": "file_download_error"}]
    api.worker.fail(job, 422, detail, "file_download_error")  # type: ignore[arg-type]
    code, body = _status(api, rid)
    assert code == 200
    assert body["status"] == "COMPLETED"
    assert body["error"] == "video_url: Could not fetch the file" and body["error_type"] == "file_download_error"
    r = api.client.get(f"{APP}/requests/{rid}", headers=api.auth)
    assert r.status_code == 422 and r.json() == {"detail": detail}
    assert r.headers["x-fal-request-id"] == rid


def test_result_states(api: Api) -> None:
    rid = api.submit({"prompt": "done"})["request_id"]
    r = api.client.get(f"{APP}/requests/{rid}", headers=api.auth)
    assert r.status_code == 400 and r.json() == {"detail": "Request is still in progress"}
    api.worker.run_one()
    r = api.client.get(f"{APP}/requests/{rid}", headers=api.auth)
    assert r.status_code == 200 and r.json() == {"echo": "done"}
    assert r.headers["x-fal-request-id"] == rid


@pytest.mark.parametrize("suffix", ["", "/"])
def test_trailing_slash_and_subpath_are_tolerated_on_lookups(api: Api, suffix: str) -> None:
    rid = api.submit(endpoint="test-owner/echo/slow")["request_id"]
    api.worker.run_one()
    for app in (APP, APP + "/slow"):  # clients drop the subpath; tolerate it if one is sent anyway
        code, body = _status(api, rid, app=app, suffix=suffix)
        assert code == 200 and body["status"] == "COMPLETED"
        assert body["status_url"].endswith(f"/queue/test-owner/echo/requests/{rid}/status")
        r = api.client.get(f"{app}/requests/{rid}{suffix}", headers=api.auth)
        assert r.status_code == 200, r.text


def test_lookup_under_another_app_or_owner_is_404(api: Api) -> None:
    rid = api.submit()["request_id"]
    r = api.client.get(f"/queue/test-owner/other/requests/{rid}/status", headers=api.auth)
    assert r.status_code == 404
    bob = api.key_for("bob")
    for method, path in [("GET", "/status"), ("GET", ""), ("PUT", "/cancel"), ("GET", "/status/stream")]:
        r = api.client.request(method, f"{APP}/requests/{rid}{path}", headers=bob)
        assert r.status_code == 404, (method, path)
        assert r.headers["content-type"] == "application/json"
    assert api.client.get(f"{APP}/requests/no-such-id/status", headers=api.auth).status_code == 404


def test_cancel_responses(api: Api) -> None:
    queued = api.submit()["request_id"]
    r = api.client.put(f"{APP}/requests/{queued}/cancel", headers={**api.auth, "Content-Type": "application/json"})
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
    r = api.client.get(f"{APP}/requests/{queued}", headers=api.auth)
    assert r.status_code == 499 and r.json() == {"detail": "Request was cancelled"}
    code, body = _status(api, queued)
    assert body["status"] == "COMPLETED" and body["error_type"] == "client_cancelled"

    running = api.submit()["request_id"]
    job = api.worker.claim()
    r = api.client.put(f"{APP}/requests/{running}/cancel/", headers=api.auth)
    assert r.status_code == 202
    assert api.store.heartbeat(job.id, api.worker.worker_id, 30).cancel_requested  # type: ignore[union-attr]
    api.worker.cancel(job)  # type: ignore[arg-type]
    r = api.client.put(f"{APP}/requests/{running}/cancel", headers=api.auth)
    assert r.status_code == 400 and r.json() == {"status": "ALREADY_COMPLETED"}
    r = api.client.put(f"{APP}/requests/nope/cancel", headers=api.auth)
    assert r.status_code == 404 and r.json() == {"status": "NOT_FOUND"}


def _events(text: str) -> list[dict]:
    return [json.loads(chunk[len("data: "):]) for chunk in text.split("\n\n") if chunk.startswith("data: ")]


def test_status_stream_sends_changes_with_only_new_logs_and_closes_after_completed(api: Api) -> None:
    rid = api.submit()["request_id"]
    api.submit()  # a second job, so the first can be watched moving

    def work() -> None:
        time.sleep(0.5)
        job = api.worker.claim()
        assert job is not None and job.id == rid
        time.sleep(0.5)
        api.worker.log(job, "a", "b")
        time.sleep(0.5)
        api.worker.log(job, "c")
        time.sleep(0.5)
        api.worker.succeed(job)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with api.client.stream("GET", f"{APP}/requests/{rid}/status/stream", params={"logs": "1"}, headers=api.auth) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-fal-request-id"] == rid
        text = r.read().decode()  # returns only because the server closes the stream
    thread.join()
    events = _events(text)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "COMPLETED"
    assert statuses.count("COMPLETED") == 1
    assert statuses == sorted(statuses, key=["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].index)
    sent = [line["message"] for e in events if e.get("logs") for line in e["logs"]]
    assert sent == ["a", "b", "c"]  # each line exactly once, in order
    assert all(e["response_url"].endswith(f"/requests/{rid}") for e in events)


def test_status_stream_of_finished_request_is_one_event(api: Api) -> None:
    rid = api.submit()["request_id"]
    api.worker.run_one()
    r = api.client.get(f"{APP}/requests/{rid}/status/stream", headers=api.auth)
    (event,) = _events(r.text)
    assert event["status"] == "COMPLETED" and event["logs"] is None


def test_status_stream_sends_keepalive_comments_while_nothing_changes(api: Api) -> None:
    import anyio

    from motionserve.api.status import RequestUrls, status_events

    rid = api.submit()["request_id"]
    urls = RequestUrls.build("http://testserver", "test-owner/echo", rid)

    async def first_three() -> list[str]:
        job_events = api.client.app.state.job_events  # type: ignore[attr-defined]
        events = status_events(api.store, job_events, rid, urls, with_logs=False, keepalive_s=0.0)
        out = [await events.__anext__() for _ in range(3)]
        await events.aclose()
        return out

    first, *rest = anyio.run(first_three)
    assert first.startswith("data: ") and json.loads(first[6:])["status"] == "IN_QUEUE"
    assert rest == [": keepalive\n\n", ": keepalive\n\n"]


def test_a_queued_stream_follows_its_position_as_the_queue_moves(api: Api) -> None:
    for _ in range(2):
        api.submit()
    rid = api.submit()["request_id"]
    events: list[dict] = []

    def read() -> None:
        with api.client.stream("GET", f"{APP}/requests/{rid}/status/stream", headers=api.auth) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))

    def seen(predicate) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(predicate(e) for e in events):
                return True
            time.sleep(0.02)
        return False

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen(lambda e: e.get("queue_position") == 2)
    for expected in (1, 0):  # each job ahead leaves the queue: one query for every stream moves this one
        api.worker.run_one()
        assert seen(lambda e, p=expected: e.get("queue_position") == p), events
    job = api.worker.claim()
    assert job is not None and job.id == rid
    assert seen(lambda e: e["status"] == "IN_PROGRESS")
    api.worker.succeed(job)
    reader.join(10)
    assert events[-1]["status"] == "COMPLETED" and [e["request_id"] for e in events] == [rid] * len(events)
