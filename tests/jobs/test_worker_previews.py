"""Live previews on the worker side: the store column, the model process's throttle and publisher, and
the whole path (handler -> file store -> supervisor -> jobs.preview) with a real spawned model process."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select

from motionserve.config import Settings
from motionserve.database import files
from motionserve.jobs.changes import Change
from motionserve.jobs.events import ChildEvent, Preview
from motionserve.jobs.models import Job, JobState
from motionserve.jobs.runner import PREVIEW_MIN_INTERVAL_S, PREVIEW_RETENTION_S, JobContext, PreviewPublisher, preview_step
from motionserve.jobs.store import ChangeKind, Store
from motionserve.storage import open_file_store
from tests.jobs.test_changes import _next, watched  # noqa: F401 (a fixture)
from tests.jobs.test_worker import Running, wait_for

BASE = "http://127.0.0.1:8000"
SHOWN = {"url": f"{BASE}/files/abc/preview.webp", "step": 5}

# -- the store ---------------------------------------------------------------------------------------


def _running(store: Store, worker_id: str = "w") -> Job:
    store.submit(owner="a", endpoint_id="e", input={}, base_url=BASE)
    job = store.claim(worker_id, 30)
    assert job is not None
    return job


def test_set_preview_shows_on_the_running_job_of_its_worker(store: Store) -> None:
    job = _running(store)
    assert job.preview is None
    assert store.set_preview(job.id, "w", SHOWN)
    assert store.get(job.id).preview == SHOWN  # type: ignore[union-attr]
    assert not store.set_preview(job.id, "another worker", {**SHOWN, "step": 10})
    assert store.get(job.id).preview == SHOWN  # type: ignore[union-attr]


def test_set_preview_of_a_job_not_running_does_nothing(store: Store) -> None:
    queued = store.submit(owner="a", endpoint_id="e", input={}, base_url=BASE)
    assert not store.set_preview(queued.id, "w", SHOWN) and store.get(queued.id).preview is None  # type: ignore[union-attr]
    job = _running(store)
    assert store.finish(job.id, "w", result={})
    assert not store.set_preview(job.id, "w", SHOWN) and store.get(job.id).preview is None  # type: ignore[union-attr]


def test_a_new_attempt_starts_without_the_previous_attempts_preview(store: Store) -> None:
    job = _running(store)
    assert store.set_preview(job.id, "w", SHOWN)
    assert store.release(job.id, "w")
    again = store.claim("w2", 30)
    assert again is not None and again.id == job.id and again.preview is None


def test_set_preview_wakes_status_streams(watched: tuple[Store, "queue.Queue[Change]"]) -> None:  # noqa: F811
    store, seen = watched
    job = _running(store)
    _next(seen, lambda c: c == Change(ChangeKind.STATE, job.id))
    assert store.set_preview(job.id, "w", SHOWN)
    _next(seen, lambda c: c == Change(ChangeKind.STATE, job.id))  # NOTIFY on PostgreSQL, changed_at on SQLite


# -- the model process's side, in this process --------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "every", "steps"),
    [(25, 5, [5, 10, 15, 20, 25]), (4, 5, [2, 4]), (8, 5, [4, 8]), (1, 5, [1]), (3, 5, [1, 2, 3]),
     (None, 5, [5, 10]), (10, 1, list(range(1, 11)))],
)
def test_preview_steps(total: int | None, every: int, steps: list[int]) -> None:
    assert [s for s in range(1, (total or 10) + 1) if preview_step(s, total, every)] == steps


class _Sent:
    def __init__(self) -> None:
        self.events: list[ChildEvent] = []

    def send(self, event: ChildEvent) -> None:
        self.events.append(event)


class _Publisher:
    def __init__(self) -> None:
        self.submitted: list[int] = []

    def submit(self, job: Job, image: bytes, step: int, content_type: str) -> None:
        self.submitted.append(step)


def _context(tmp_path: Path, publisher: Any, **settings: Any) -> JobContext:
    job = Job(id="j", owner="a", endpoint_id="e", input={}, state=JobState.RUNNING, priority=0, created_at=0.0,
              started_at=0.0, finished_at=None, start_deadline=None, attempts=1, worker_id="w", lease_expires_at=None,
              cancel_requested=False, result=None, error=None, webhook_url=None, base_url=BASE, file_retention_s=None,
              inference_time=None)
    return JobContext(job, Settings(data_dir=tmp_path, **settings), _Sent(), threading.Event(), dict,  # type: ignore[arg-type]
                      None, publisher)  # type: ignore[arg-type]


def test_previews_faster_than_two_a_second_are_dropped_before_they_cost_anything(tmp_path: Path) -> None:
    publisher = _Publisher()
    ctx = _context(tmp_path, publisher, preview_every_steps=1)
    assert ctx.preview_due(1, 10)
    for step in range(1, 6):
        ctx.preview(b"img", step=step, content_type="image/webp")
    assert publisher.submitted == [1] and not ctx.preview_due(6, 10)
    time.sleep(PREVIEW_MIN_INTERVAL_S)
    assert ctx.preview_due(6, 10)
    ctx.preview(b"img", step=6, content_type="image/webp")
    assert publisher.submitted == [1, 6]


def test_previews_off_are_never_due_nor_published(tmp_path: Path) -> None:
    publisher = _Publisher()
    ctx = _context(tmp_path, publisher, previews=False, preview_every_steps=1)
    assert not ctx.preview_due(1, 10)
    ctx.preview(b"img", step=1, content_type="image/webp")
    assert publisher.submitted == []


class _BrokenFiles:
    def put(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")


def test_a_preview_the_file_store_refuses_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    sent = _Sent()
    publisher = PreviewPublisher(_BrokenFiles(), sent)  # type: ignore[arg-type]
    job = _context(Path("."), None)._job
    publisher.submit(job, b"img", 3, "image/webp")
    wait_for(lambda: "could not publish the preview of step 3" in caplog.text, "the warning", timeout=10)
    assert sent.events == []


def test_the_publisher_stores_the_image_and_tells_the_supervisor(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    Store(settings.resolved_database_url).create_all()
    file_store = open_file_store(settings)
    sent = _Sent()
    job = _context(tmp_path, None)._job
    PreviewPublisher(file_store, sent).submit(job, b"webp bytes", 5, "image/webp")
    (event,) = wait_for(lambda: sent.events, "the Preview event", timeout=10)
    assert isinstance(event, Preview) and event.job_id == "j" and event.step == 5
    assert event.url.startswith(f"{BASE}/files/") and event.url.endswith("/preview.webp")
    token = file_store.token_from_url(event.url, [BASE])
    stored = file_store.get(token)  # type: ignore[arg-type]
    assert stored is not None and stored.kind == "preview" and stored.content_type == "image/webp"
    assert stored.expires_at == pytest.approx(time.time() + PREVIEW_RETENTION_S, abs=60)
    assert file_store.read_bytes(token, 100) == b"webp bytes"  # type: ignore[arg-type]
    file_store.close()


# -- the whole path, with a spawned model process ----------------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = Running(tmp_path_factory.mktemp("previews"))
    yield running
    running.close()


def test_a_running_job_shows_its_latest_preview(worker: Running) -> None:
    # 6 steps: every min(5, 6 // 2) = 3 steps -> previews of steps 3 and 6, 0.6 s apart.
    job = worker.submit("preview", message="frame", steps=6, step_s=0.3)
    first = wait_for(lambda: (j := worker.store.get(job.id)) is not None and j.preview and j, "a preview")
    assert first.state is JobState.RUNNING and first.preview["step"] == 3  # type: ignore[index]
    files_ = open_file_store(worker.settings)
    token = files_.token_from_url(first.preview["url"], [BASE])  # type: ignore[index]
    assert token is not None and files_.read_bytes(token, 100) == b"frame 3"
    files_.close()
    done = worker.wait_done(job)
    assert done.state is JobState.SUCCEEDED and done.preview is not None and done.preview["step"] == 6


def _preview_files(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(files).where(files.c.kind == "preview")).scalar_one())


def test_previews_off_publish_nothing(tmp_path: Path) -> None:
    running = Running(tmp_path, settings={"previews": False})
    try:
        done = running.wait_done(running.submit("preview", message="frame", steps=4, step_s=0.2))
        assert done.state is JobState.SUCCEEDED and done.preview is None
        assert _preview_files(running.store) == 0
    finally:
        running.close()
