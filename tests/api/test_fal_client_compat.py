"""The unmodified `fal-client` (PyPI) against the app served by uvicorn in a thread, over plain HTTP.

Its module-level URLs are patched the way fal-protocol.md §4.1(a) describes; a store-level worker
thread stands in for the model worker. (The TLS + separate-process versions live in tests/e2e.)
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import fal_client
import fal_client.client as fc
import httpx
import pytest
import uvicorn

from motionserve.api.app import create_app
from motionserve.config import Settings
from motionserve.jobs.store import Store
from motionserve.storage import open_file_store

from .conftest import ENDPOINTS, StoreWorker


class Served:
    def __init__(self, base: str, key: str, store: Store) -> None:
        self.base, self.key, self.store = base, key, store
        self.worker = StoreWorker(store)

    def work_once(self, logs: tuple[str, ...] = (), fail: bool = False, timeout_s: float = 10) -> threading.Thread:
        def run() -> None:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                job = self.worker.claim()
                if job is None:
                    time.sleep(0.02)
                    continue
                time.sleep(0.2)  # long enough for a status poll to see IN_PROGRESS
                self.worker.log(job, *logs)
                if fail:
                    self.worker.fail(job, 422, [{"loc": ["body", "video_url"], "msg": "unreadable", "type": "value_error"}], "validation_error")
                else:
                    self.worker.succeed(job)
                return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    settings = Settings(data_dir=tmp_path, max_frames=32)
    store = Store(settings.resolved_database_url)
    store.create_all()
    app = create_app(settings, store, open_file_store(settings), endpoints=ENDPOINTS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(fc, "REST_URL", f"{base}/rest")
    monkeypatch.setattr(fc, "CDN_URL", f"{base}/cdn")
    monkeypatch.setattr(fc, "QUEUE_URL_FORMAT", f"{base}/queue/")
    monkeypatch.setattr(fc, "RUN_URL_FORMAT", f"{base}/run/")
    key_id, secret = store.create_key("alice")
    yield Served(base, f"{key_id}:{secret}", store)
    server.should_exit = True
    thread.join(10)
    store.close()


def test_uploads_single_multipart_and_fallback(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    client = fal_client.SyncClient(key=served.key)
    url = client.upload(b"small file", "text/plain", "notes.txt")
    assert url.startswith(served.base + "/files/") and httpx.get(url).content == b"small file"

    monkeypatch.setattr(fc, "MULTIPART_THRESHOLD", 1000)
    monkeypatch.setattr(fc, "MULTIPART_CHUNK_SIZE", 300)
    data = bytes(range(256)) * 10  # 2560 bytes: 9 parts, uploaded 10 at a time
    url = client.upload(data, "application/octet-stream", "big.bin")
    r = httpx.get(url)
    assert r.content == data and r.headers["content-type"] == "application/octet-stream"

    url = client.upload(b"via gcs", "text/plain", "g.txt", repository="fal", fallback_repository=[])
    assert httpx.get(url).content == b"via gcs"


def test_subscribe_with_logs_and_subpath(served: Served) -> None:
    client = fal_client.SyncClient(key=served.key)
    updates: list[object] = []
    enqueued: list[str] = []
    worker = served.work_once(logs=("step 1", "step 2"))
    result = client.subscribe(
        "test-owner/echo/slow", arguments={"prompt": "hello"}, with_logs=True,
        on_enqueue=enqueued.append, on_queue_update=updates.append, priority="low",
    )
    worker.join()
    assert result == {"echo": "hello"}
    assert any(isinstance(u, fal_client.InProgress) for u in updates)
    final = client.status("test-owner/echo/slow", enqueued[0], with_logs=True)
    assert isinstance(final, fal_client.Completed)
    assert [line["message"] for line in final.logs or []] == ["step 1", "step 2"]


def test_run_and_failures_surface_as_fal_client_errors(served: Served) -> None:
    client = fal_client.SyncClient(key=served.key)
    worker = served.work_once()
    assert client.run("test-owner/echo", arguments={"prompt": "sync"}) == {"echo": "sync"}
    worker.join()

    with pytest.raises(fal_client.FalClientHTTPError) as bad_input:
        client.submit("test-owner/echo", arguments={"prompt": "x", "num_frames": 999})
    assert bad_input.value.status_code == 422

    worker = served.work_once(fail=True)
    handle = client.submit("test-owner/echo", arguments={"prompt": "x"})
    with pytest.raises(fal_client.FalClientHTTPError) as failed:
        handle.get()
    worker.join()
    assert failed.value.status_code == 422

    handle = client.submit("test-owner/echo", arguments={"prompt": "x"})
    handle.cancel()
    with pytest.raises(fal_client.FalClientHTTPError) as cancelled:
        handle.get()
    assert cancelled.value.status_code == 499


def test_start_timeout_is_a_user_504(served: Served) -> None:
    client = fal_client.SyncClient(key=served.key)
    handle = client.submit("test-owner/echo", arguments={"prompt": "x"}, start_timeout=1.1)
    time.sleep(1.3)
    assert served.worker.claim() is None  # a worker's claim expires it
    with pytest.raises(fal_client.FalClientHTTPError) as timed_out:
        handle.get()
    assert timed_out.value.status_code == 504
    assert timed_out.value.error_type == "request_timeout"
    # What makes both clients give up at once instead of retrying a 504:
    assert timed_out.value.response_headers["x-fal-request-timeout-type"] == "user"
    assert "x-fal-request-id" in timed_out.value.response_headers
