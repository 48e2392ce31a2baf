"""Outputs stored after the handler returned: the model process takes the next job meanwhile, and the
job completes only once its file is stored (jobs/outputs.py, `FinishingRuns` in jobs/job_run.py).

The fake endpoint `save_later`'s encoder waits for a gate file, so each test decides when the output
gets stored instead of guessing how long it takes."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from motionserve.jobs.models import CancelOutcome, Job, JobState
from motionserve.jobs.runner import OUTPUT_PENDING_LOG
from motionserve.jobs.store import Store
from motionserve.storage import open_file_store
from tests.jobs.test_worker import Running, wait_for


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = Running(tmp_path_factory.mktemp("outputs"), cancel_grace_s=1.0)
    yield running
    running.close()


def stored_bytes(running: Running, job: Job) -> bytes | None:
    files = open_file_store(running.settings)
    try:
        token = files.token_from_url(job.result["video"]["url"], ["http://127.0.0.1:8000"])  # type: ignore[index]
        return files.read_bytes(token, 1000) if token else None
    finally:
        files.close()


def handler_returned(running: Running, job: Job) -> Any:
    return wait_for(lambda: "handler returned" in [l.message for l in running.store.logs(job.id)],
                    f"{job.id}'s handler to return")


def test_a_job_completes_only_once_its_output_is_stored(worker: Running, tmp_path: Path) -> None:
    gate = tmp_path / "encode"
    job = worker.submit("save_later", message="first video", gate=str(gate))
    handler_returned(worker, job)

    # The model process is free while the output waits: the next job runs and completes first.
    meanwhile = worker.wait_done(worker.submit("echo", message="meanwhile", steps=1))
    assert meanwhile.state is JobState.SUCCEEDED
    waiting = worker.store.get(job.id)
    assert waiting is not None and waiting.state is JobState.RUNNING and waiting.result is None

    gate.touch()
    done = worker.wait_done(job)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.attempts == 1  # its lease was kept while it waited
    assert done.result["video"]["file_size"] == len(b"first video")  # type: ignore[index]
    assert stored_bytes(worker, done) == b"first video"  # readable the moment it is COMPLETED
    # Its logs say when the model was done with it (what came after is the encode and the store).
    assert any(l.message.startswith(OUTPUT_PENDING_LOG) for l in worker.store.logs(job.id))


def test_back_to_back_jobs_each_complete_with_their_own_file(worker: Running) -> None:
    jobs = [worker.submit("save_later", message=f"video {i}") for i in range(6)]
    for i, job in enumerate(jobs):
        done = worker.wait_done(job)
        assert done.state is JobState.SUCCEEDED, done.error
        assert stored_bytes(worker, done) == f"video {i}".encode()


def test_an_encoder_failure_fails_the_job_with_a_reason(worker: Running) -> None:
    failed = worker.wait_done(worker.submit("encoder_crash"))
    assert failed.state is JobState.FAILED
    assert failed.error["status_code"] == 500 and failed.error["error_type"] == "internal_error"  # type: ignore[index]
    assert "output file (out.mp4) could not be encoded or stored" in failed.error["detail"]  # type: ignore[index]
    assert any("Cannot allocate memory" in l.message for l in worker.store.logs(failed.id))  # the traceback
    pid = worker.child_pid()
    after = worker.wait_done(worker.submit("echo", message="after", steps=1))
    assert after.state is JobState.SUCCEEDED and after.result["pid"] == pid  # type: ignore[index]


def test_cancelling_a_job_whose_output_is_pending_ends_it_and_spares_the_model(worker: Running, tmp_path: Path) -> None:
    gate = tmp_path / "encode"
    job = worker.submit("save_later", message="unwanted", gate=str(gate))
    handler_returned(worker, job)
    pid = worker.child_pid()
    assert worker.store.request_cancel(job.id) is CancelOutcome.REQUESTED
    assert worker.wait_done(job).state is JobState.CANCELLED
    after = worker.wait_done(worker.submit("echo", message="after", steps=1))
    assert after.state is JobState.SUCCEEDED and after.result["pid"] == pid  # type: ignore[index]
    gate.touch()  # its output is stored now, too late: the job stays cancelled
    later = worker.wait_done(worker.submit("save_later", message="later"))
    assert later.state is JobState.SUCCEEDED and worker.store.get(job.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_a_dead_model_process_fails_the_job_whose_output_was_pending(worker: Running, tmp_path: Path) -> None:
    job = worker.submit("save_later", message="lost", gate=str(tmp_path / "never"))
    handler_returned(worker, job)
    os.kill(worker.child_pid(), signal.SIGKILL)
    failed = worker.wait_done(job)
    assert failed.state is JobState.FAILED
    assert failed.error["status_code"] == 503 and failed.error["error_type"] == "runner_disconnected"  # type: ignore[index]
    assert worker.wait_done(worker.submit("echo", message="survivor", steps=1)).state is JobState.SUCCEEDED


def test_a_pending_output_past_the_execution_limit_fails_the_job(tmp_path: Path) -> None:
    running = Running(tmp_path, settings={"job_timeout_s": 2.0})
    try:
        job = running.submit("save_later", message="slow", gate=str(tmp_path / "never"))
        handler_returned(running, job)
        pid = running.child_pid()
        hung = running.wait_done(job)
        assert hung.state is JobState.FAILED and hung.error["status_code"] == 504  # type: ignore[index]
        after = running.wait_done(running.submit("echo", message="next", steps=1))
        assert after.state is JobState.SUCCEEDED and after.result["pid"] == pid  # type: ignore[index]
    finally:
        running.close()


def test_a_stopping_worker_waits_for_pending_outputs(tmp_path: Path) -> None:
    running = Running(tmp_path, shutdown_grace_s=60.0)
    gate = tmp_path / "encode"
    job = running.submit("save_later", message="stored before exit", gate=str(gate))
    handler_returned(running, job)
    closing = threading.Thread(target=running.close)  # what SIGTERM does to `motionserve worker`
    closing.start()
    gate.touch()
    closing.join(60)
    assert not closing.is_alive()
    done = Store(running.settings.resolved_database_url).get(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED, done
    assert stored_bytes(running, done) == b"stored before exit"


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="threads have no CPU priority of their own here")
def test_the_encoder_thread_yields_the_cpu_to_the_next_jobs_denoising() -> None:
    # The encode overlaps the next request's denoising, which is what that request waits for.
    from motionserve.endpoints.base import File, PendingOutput
    from motionserve.jobs.events import Done
    from motionserve.jobs.outputs import ENCODER_NICENESS, OutputEncoder, OutputJob

    seen: dict[str, int] = {}

    def encode() -> bytes:
        seen["encoder"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return b"frames"

    def save(data: bytes, *, content_type: str, file_name: str) -> File:
        return File(url="http://127.0.0.1/f", content_type=content_type, file_name=file_name, file_size=len(data))

    sent: list[Any] = []
    encoder = OutputEncoder(sent.append)
    pending = PendingOutput(encode=encode, content_type="video/mp4", file_name="out.mp4", finish=lambda file: file)
    encoder.submit(OutputJob("job-1", pending, save, started=0.0, warm=None))
    encoder.drain()

    assert isinstance(sent[0], Done) and sent[0].error is None
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen["encoder"] == min(19, own + ENCODER_NICENESS)  # the calling thread keeps its own
