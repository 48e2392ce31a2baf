"""In-process API fixtures: a real SQLite store and file store in tmp_path, a test-only echo endpoint,
and a test worker that plays the worker's part by calling store methods directly (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from motionserve.api.app import create_app
from motionserve.config import Settings
from motionserve.endpoints.base import Endpoint, EndpointInput, File, Limits
from motionserve.errors import InputValidationError
from motionserve.jobs.models import Job, error_dict
from motionserve.jobs.store import Store
from motionserve.storage import FileStore, open_file_store


class EchoInput(EndpointInput):
    prompt: str = Field(description="Text to echo back.")
    num_frames: int = Field(16, ge=1, le=64, description="Frames (bounded by the server's max_frames too).")
    video_url: str | None = None


class EchoOutput(BaseModel):
    echo: str
    video: File | None = None


def _check(inputs: EchoInput, limits: Limits) -> None:
    if inputs.num_frames > limits.max_frames:
        raise InputValidationError.for_field("num_frames", f"At most {limits.max_frames} frames", input=inputs.num_frames)


def _never_run(inputs: Any, ctx: Any) -> BaseModel:  # the test worker stands in for the runner
    raise AssertionError("not called in API tests")


ECHO = Endpoint("test-owner/echo", "Echo", "Echoes its prompt.", EchoInput, EchoOutput, _never_run, check=_check)
ECHO_SUB = Endpoint("test-owner/echo/slow", "Echo (sub)", "Echo under a subpath.", EchoInput, EchoOutput, _never_run, check=_check)
ENDPOINTS = {e.endpoint_id: e for e in (ECHO, ECHO_SUB)}


class StoreWorker:
    """Claims and finishes jobs through the store, as a WorkerSupervisor would."""

    worker_id = "test-worker"

    def __init__(self, store: Store) -> None:
        self.store = store

    def claim(self) -> Job | None:
        return self.store.claim(self.worker_id, lease_s=30)

    def log(self, job: Job, *messages: str) -> None:
        self.store.append_logs(job.id, [("INFO", m) for m in messages])

    def succeed(self, job: Job, result: dict[str, Any] | None = None) -> None:
        assert self.store.finish(job.id, self.worker_id, result=result or {"echo": job.input["prompt"]}, inference_time=0.25)

    def fail(self, job: Job, status_code: int, detail: Any, error_type: str) -> None:
        assert self.store.finish(job.id, self.worker_id, error=error_dict(status_code, detail, error_type))

    def cancel(self, job: Job) -> None:
        assert self.store.finish(job.id, self.worker_id, cancelled=True)

    def run_one(self) -> Job:
        job = self.claim()
        assert job is not None, "no queued job"
        self.succeed(job)
        return job


@dataclass
class Api:
    client: TestClient
    store: Store
    file_store: FileStore
    settings: Settings
    key: str  # "KEY_ID:SECRET" of owner alice
    worker: StoreWorker

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.key}"}

    def key_for(self, owner: str) -> dict[str, str]:
        key_id, secret = self.store.create_key(owner)
        return {"Authorization": f"Key {key_id}:{secret}"}

    def submit(self, payload: dict[str, Any] | None = None, endpoint: str = "test-owner/echo", **kwargs: Any) -> dict[str, Any]:
        headers = {**self.auth, **kwargs.pop("headers", {})}
        r = self.client.post(f"/queue/{endpoint}", json=payload or {"prompt": "hi"}, headers=headers, **kwargs)
        assert r.status_code == 200, r.text
        return r.json()


def make_api(tmp_path: Path, **settings_overrides: Any) -> Iterator[Api]:
    settings_overrides.setdefault("database_url", f"sqlite:///{tmp_path / 'test.db'}")
    settings = Settings(data_dir=tmp_path, max_frames=32, **settings_overrides)
    store = Store(settings.resolved_database_url)
    store.create_all()
    file_store = open_file_store(settings)
    app = create_app(settings, store, file_store, endpoints=ENDPOINTS)
    key_id, secret = store.create_key("alice")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, store, file_store, settings, f"{key_id}:{secret}", StoreWorker(store))
    file_store.close()
    store.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)
