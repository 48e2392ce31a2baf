"""The worker supervisor with a real spawned model process running the fake endpoints of jobs_fake_registry."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from motionserve.config import Settings
from motionserve.jobs.models import CancelOutcome, Job, JobState
from motionserve.jobs.runner import COLD_START_LOG
from motionserve.jobs.store import Store
from motionserve.jobs.worker import WorkerSupervisor

REGISTRY = "jobs_fake_registry"  # tests/jobs/jobs_fake_registry.py (importable in the child via sys.path)
WAIT_S = 60.0  # generous: the machine is shared; this only bounds a hung test


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """A supervisor running in a thread, as `motionserve serve` runs one per device."""

    def __init__(self, tmp_path: Path, settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.settings = Settings(data_dir=tmp_path, lease_s=6.0, max_attempts=2, **(settings or {}))
        self.store = Store(self.settings.resolved_database_url)
        self.store.create_all()
        self.supervisor = WorkerSupervisor(self.settings, self.store, "cpu", registry_module=kwargs.pop("registry_module", REGISTRY), **kwargs)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.supervisor.run_forever, args=(self.stop,), daemon=True)
        self.thread.start()

    def submit(self, endpoint: str, **input: Any) -> Job:
        return self.store.submit(owner="alice", endpoint_id=f"test/{endpoint}", input=input,
                                 base_url="http://127.0.0.1:8000")

    def wait_state(self, job: Job, *states: JobState) -> Job:
        return wait_for(lambda: (j := self.store.get(job.id)) is not None and j.state in states and j, f"{job.id} in {states}")

    def wait_done(self, job: Job) -> Job:
        return wait_for(lambda: (j := self.store.get(job.id)) is not None and j.is_terminal and j, f"{job.id} to finish")

    def child_pid(self) -> int:
        return wait_for(lambda: self.supervisor._child is not None and self.supervisor._child.ready and self.supervisor._child.pid,
                        "a ready model process")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the supervisor did not stop"
        self.store.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # One supervisor (and model process) for the module: spawning one per test would be slow.
    running = Running(tmp_path_factory.mktemp("worker"), cancel_grace_s=1.0)
    yield running
    running.close()


def test_job_runs_and_logs_reach_the_store(worker: Running) -> None:
    job = worker.wait_done(worker.submit("echo", message="hello", steps=3))
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.result["echo"] == "hello" and job.result["models_built"] == 1  # type: ignore[index]
    assert job.inference_time is not None and job.inference_time >= 0
    assert job.worker_id == worker.supervisor.worker_id and job.attempts == 1
    # Its pipelines were loaded for it: its log says why it took longer than the next one.
    assert [l.message for l in worker.store.logs(job.id)] == ["step 1/3", "step 2/3", "step 3/3", COLD_START_LOG]
    again = worker.wait_done(worker.submit("echo", message="again", steps=1))
    assert COLD_START_LOG not in [l.message for l in worker.store.logs(again.id)]
    # Same warm process, and the model manager was built once for it.
    assert again.result["pid"] == job.result["pid"] and again.result["models_built"] == 1  # type: ignore[index]


def test_handler_errors_become_fal_errors(worker: Running) -> None:
    broken = worker.wait_done(worker.submit("broken", message="x"))
    assert broken.state is JobState.FAILED
    assert broken.error == {"status_code": 500, "detail": "Internal Server Error", "error_type": "internal_error"}
    (trace,) = worker.store.logs(broken.id)
    assert trace.level == "ERROR" and "ValueError: tensor shapes do not match" in trace.message

    invalid = worker.wait_done(worker.submit("echo", message="x", steps="many"))
    assert invalid.state is JobState.FAILED and invalid.error["status_code"] == 422  # type: ignore[index]
    assert invalid.error["detail"][0]["loc"] == ["body", "steps"]  # type: ignore[index]

    missing = worker.wait_done(worker.submit("unavailable", message="x"))
    assert missing.error["status_code"] == 503 and missing.error["error_type"] == "model_unavailable"  # type: ignore[index]
    assert "animatediff-motion-adapter" in missing.error["detail"]  # type: ignore[index]

    unknown = worker.wait_done(worker.store.submit(owner="a", endpoint_id="test/nope", input={}, base_url="http://x"))
    assert unknown.state is JobState.FAILED and unknown.error["status_code"] == 404  # type: ignore[index]


def test_output_files_are_saved_with_public_urls(worker: Running) -> None:
    from motionserve.storage import open_file_store

    job = worker.wait_done(worker.submit("save", message="not really an mp4"))
    assert job.state is JobState.SUCCEEDED, job.error
    video = job.result["video"]  # type: ignore[index]
    assert video["url"].startswith("http://127.0.0.1:8000/files/") and video["url"].endswith("/out.mp4")
    assert video["content_type"] == "video/mp4" and video["file_size"] == len(b"not really an mp4")
    files = open_file_store(worker.settings)  # any node reads it: the metadata is in the database
    token = files.token_from_url(video["url"], ["http://127.0.0.1:8000"])
    assert token is not None and files.read_bytes(token, 1000) == b"not really an mp4"
    stored = files.get(token)
    assert stored is not None and stored.kind == "output" and stored.expires_at is not None
    files.close()


def test_inputs_are_read_from_data_uris_and_our_own_files(worker: Running) -> None:
    saved = worker.wait_done(worker.submit("save", message="my own file"))
    own = worker.wait_done(worker.submit("read", file_url=saved.result["video"]["url"]))  # type: ignore[index]
    assert own.state is JobState.SUCCEEDED and own.result["echo"] == "my own file"  # type: ignore[index]
    inline = worker.wait_done(worker.submit("read", file_url="data:text/plain;base64,aW5saW5l"))
    assert inline.result["echo"] == "inline"  # type: ignore[index]
    # Loopback is refused (allow_private_urls is off): a 422 that names the field.
    refused = worker.wait_done(worker.submit("read", file_url="http://127.0.0.1:9/secret"))
    assert refused.state is JobState.FAILED and refused.error["status_code"] == 422  # type: ignore[index]
    assert refused.error["detail"][0]["loc"] == ["body", "file_url"]  # type: ignore[index]
    gone = worker.wait_done(worker.submit("read", file_url="http://127.0.0.1:8000/files/" + "A" * 32 + "/x.mp4"))
    assert gone.error["status_code"] == 422 and "expired" in gone.error["detail"][0]["msg"]  # type: ignore[index]


def test_cancel_stops_a_running_job(worker: Running) -> None:
    job = worker.submit("echo", message="long", steps=10_000, step_s=0.01)
    wait_for(lambda: worker.store.logs(job.id), "the job to start logging")
    assert worker.store.request_cancel(job.id) is CancelOutcome.REQUESTED
    done = worker.wait_done(job)
    assert done.state is JobState.CANCELLED and done.error["error_type"] == "client_cancelled"  # type: ignore[index]
    assert len(worker.store.logs(job.id)) < 10_000
    assert worker.wait_done(worker.submit("echo", message="next", steps=1)).state is JobState.SUCCEEDED


def test_handler_ignoring_cancel_is_killed_and_replaced(worker: Running) -> None:
    job = worker.submit("stubborn", message="x")
    wait_for(lambda: worker.store.logs(job.id), "the stubborn job to start")
    old_pid = worker.child_pid()
    worker.store.request_cancel(job.id)
    assert worker.wait_done(job).state is JobState.CANCELLED
    after = worker.wait_done(worker.submit("echo", message="after", steps=1))
    assert after.state is JobState.SUCCEEDED and after.result["pid"] != old_pid  # type: ignore[index]


def test_killed_model_process_fails_the_job_and_worker_continues(worker: Running) -> None:
    job = worker.submit("echo", message="doomed", steps=10_000, step_s=0.01)
    wait_for(lambda: worker.store.logs(job.id), "the job to start")
    pid = worker.child_pid()
    os.kill(pid, signal.SIGKILL)
    failed = worker.wait_done(job)
    assert failed.state is JobState.FAILED
    assert failed.error == {"status_code": 503, "error_type": "runner_disconnected",
                            "detail": "model process exited with code -9 (signal SIGKILL; out of memory?)"}
    after = worker.wait_done(worker.submit("echo", message="survivor", steps=1))
    assert after.state is JobState.SUCCEEDED and after.result["pid"] != pid  # type: ignore[index]


def test_stopping_the_worker_returns_its_job_to_the_queue(tmp_path: Path) -> None:
    running = Running(tmp_path, shutdown_grace_s=0.2)
    try:
        job = running.submit("stubborn", message="x")
        running.wait_state(job, JobState.RUNNING)
        pid = running.child_pid()
    finally:
        running.close()
    back = Store(running.settings.resolved_database_url).get(job.id)  # the running one was closed
    assert back is not None and back.state is JobState.QUEUED and back.worker_id is None
    wait_for(lambda: not _alive(pid), "the model process to exit")


def test_the_worker_is_in_the_registry_with_what_it_has_warm(worker: Running) -> None:
    worker.wait_done(worker.submit("echo", message="warm up", steps=1))
    me = wait_for(
        lambda: [w for w in worker.store.live_workers(seen_within_s=30)
                 if w.id == worker.supervisor.worker_id and w.state == "idle" and w.warm],
        "the registry to show the idle worker",
    )[0]
    assert me.warm == ("test/echo",) and me.device == "cpu" and me.pid == os.getpid() and me.current_job is None


def test_a_busy_worker_stays_in_the_registry_while_its_job_runs_past_the_lease(worker: Running) -> None:
    lease_s = worker.settings.lease_s
    job = worker.submit("echo", message="long", steps=int(4 * lease_s), step_s=0.5)
    worker.wait_state(job, JobState.RUNNING)
    time.sleep(lease_s + 1.0)  # longer than a registry row goes stale without a refresh
    me = [w for w in worker.store.live_workers(seen_within_s=lease_s) if w.id == worker.supervisor.worker_id]
    assert me and me[0].state == "busy" and me[0].current_job == job.id, me
    assert worker.wait_done(job).state is JobState.SUCCEEDED


def test_a_job_past_the_execution_limit_is_killed_and_fails(tmp_path: Path) -> None:
    running = Running(tmp_path, settings={"job_timeout_s": 1.0})
    try:
        hung = running.wait_done(running.submit("stubborn", message="x"))
        assert hung.state is JobState.FAILED and hung.error["status_code"] == 504  # type: ignore[index]
        assert "limit of 1 s" in hung.error["detail"]  # type: ignore[index]
        after = running.wait_done(running.submit("echo", message="next", steps=1))
        assert after.state is JobState.SUCCEEDED  # a fresh model process took over
    finally:
        running.close()


def test_a_stopping_worker_lets_its_job_finish_within_the_drain_timeout(tmp_path: Path) -> None:
    running = Running(tmp_path, shutdown_grace_s=60.0)
    job = running.submit("echo", message="almost done", steps=20, step_s=0.05)
    running.wait_state(job, JobState.RUNNING)
    running.close()  # what SIGTERM does to `motionserve worker`
    store = Store(running.settings.resolved_database_url)
    done = store.get(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED
    assert store.live_workers(seen_within_s=30) == []  # it said it stopped


def test_model_process_that_cannot_start_claims_nothing(tmp_path: Path) -> None:
    running = Running(tmp_path, registry_module="jobs_no_such_registry")
    try:
        job = running.submit("echo", message="x")
        wait_for(lambda: running.supervisor._startup_failures >= 1, "a failed start")
        assert running.store.get(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    finally:
        running.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; it is gone for our purposes once it is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
