"""Fault: the model process is SIGKILLed mid-job, as the kernel's OOM killer does.

The supervisor outlives its model process: the job fails with a 503 `runner_disconnected` naming the
signal (not retried: such a crash is usually caused by the request itself, and a retry would only
kill the next process), a fresh model process is started, and the next job runs. tests/jobs/
test_worker.py checks the same in-process; this is the real `motionserve serve`, killed from outside.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from .common import SMALL_T2V, T2V, step_numbers
from .fleet import wait_for
from .http_queue import QueueClient, Submitted
from .procfs import model_processes
from .test_durability import assert_completed_with_video, stored_job

pytestmark = pytest.mark.e2e

LONG_T2V: dict[str, Any] = {**SMALL_T2V, "num_inference_steps": 30}  # killed at its first step
KILLED = "model process exited with code -9 (signal SIGKILL; out of memory?)"


def _stepping(client: QueueClient, job: Submitted) -> bool:
    """The job's handler is in its denoising loop (a step logged): the model process holds it."""
    status = client.status(job, logs=True)
    assert status["status"] in ("IN_QUEUE", "IN_PROGRESS"), status
    return bool(step_numbers(status.get("logs")))


def test_model_process_killed_mid_job(server_factory) -> None:
    server = server_factory("model-kill")
    client = QueueClient(server, server.create_key("oom"))
    try:
        victim = client.submit(T2V, LONG_T2V)
        after = client.submit(T2V, {**SMALL_T2V, "seed": 2})
        wait_for(lambda: _stepping(client, victim), 300, "the victim's first denoising step")
        [model] = model_processes(server.process.pid)

        os.kill(model, signal.SIGKILL)

        final = client.wait(victim)
        print("status:", final)
        assert final["error"] == KILLED and final["error_type"] == "runner_disconnected", final
        r = client.result(victim)
        print("result:", r.status_code, r.text)
        assert r.status_code == 503 and r.json() == {"detail": KILLED, "error_type": "runner_disconnected"}
        assert stored_job(server, victim.request_id).attempts == 1  # failed, not retried

        # The next job runs on a fresh model process; the server itself never went down.
        assert_completed_with_video(client, server, after)
        assert server.process.alive()
        wait_for(lambda: model_processes(server.process.pid) not in ([], [model]), 60, "a fresh model process")
    finally:
        client.close()
        server.stop()
