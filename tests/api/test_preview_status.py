"""The status (and its SSE stream) carries `preview: {url, step}` while a job runs and has one."""

from __future__ import annotations

import json
import threading
import time

from .conftest import Api

APP = "/queue/test-owner/echo"


def _preview(step: int) -> dict:
    return {"url": f"http://testserver/files/token{step}/preview.webp", "step": step}


def _status(api: Api, rid: str) -> dict:
    r = api.client.get(f"{APP}/requests/{rid}/status", headers=api.auth)
    assert r.status_code in (200, 202), r.text
    return r.json()


def test_the_status_shows_the_preview_only_while_in_progress(api: Api) -> None:
    rid = api.submit()["request_id"]
    assert "preview" not in _status(api, rid)  # queued
    job = api.worker.claim()
    assert job is not None
    assert "preview" not in _status(api, rid)  # running, none yet
    assert api.store.set_preview(job.id, api.worker.worker_id, _preview(5))
    assert _status(api, rid)["preview"] == _preview(5)
    api.worker.succeed(job)
    assert "preview" not in _status(api, rid)  # the result is what matters now


def test_the_stream_sends_each_new_preview_at_once(api: Api) -> None:
    rid = api.submit()["request_id"]
    job = api.worker.claim()
    assert job is not None

    def work() -> None:
        for step in (5, 10):
            time.sleep(0.3)
            assert api.store.set_preview(job.id, api.worker.worker_id, _preview(step))
        time.sleep(0.3)
        api.worker.succeed(job)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with api.client.stream("GET", f"{APP}/requests/{rid}/status/stream", headers=api.auth) as r:
        events = [json.loads(line[len("data: "):]) for line in r.iter_lines() if line.startswith("data: ")]
    thread.join()
    assert [(e["status"], e.get("preview", {}).get("step")) for e in events] == [
        ("IN_PROGRESS", None), ("IN_PROGRESS", 5), ("IN_PROGRESS", 10), ("COMPLETED", None),
    ]
    assert events[1]["preview"]["url"] == _preview(5)["url"]
