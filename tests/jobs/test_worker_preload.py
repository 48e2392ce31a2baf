"""Preloading (`MOTIONSERVE_PRELOAD`): a worker loads the named pipelines before it says it is ready,
claims nothing until then, and finds them warm for its first job; a preload that cannot be had ends it.

The fake registry's preload "loads" until the test creates a gate file, so the test looks at the
worker while it is loading instead of guessing how long that takes. The last two tests run the real
`motionserve worker` command (tiny weights, or a weights map whose folders do not exist).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from motionserve.cli import main
from motionserve.config import Settings
from motionserve.endpoints.registry import PRELOAD_NAMES, preload_endpoints
from motionserve.jobs.child import PreloadError
from motionserve.jobs.models import JobState
from motionserve.jobs.runner import COLD_START_LOG
from motionserve.jobs.store import Store
from motionserve.metrics import serve_worker_http
from tests.jobs.jobs_fake_registry import PRELOAD_GATE, PRELOAD_STARTED
from tests.jobs.test_worker import WAIT_S, Running, wait_for

T2V = PRELOAD_NAMES["t2v"]
V2V = PRELOAD_NAMES["v2v"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def preloading(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path, {"preload": ("test/echo",)})
    yield running
    (tmp_path / PRELOAD_GATE).touch()  # whatever the test did, let the model process finish
    running.close()


def test_the_worker_claims_only_once_its_preload_is_loaded_and_then_finds_it_warm(preloading: Running, tmp_path: Path) -> None:
    job = preloading.submit("echo", message="first", steps=1)
    wait_for(lambda: (tmp_path / PRELOAD_STARTED).exists(), "the model process to start preloading")

    (record,) = wait_for(lambda: preloading.store.live_workers(WAIT_S), "the worker to register")
    assert record.state == "starting" and record.warm == ()
    assert not preloading.supervisor.is_ready()
    assert preloading.store.get(job.id).state is JobState.QUEUED  # type: ignore[union-attr]

    (tmp_path / PRELOAD_GATE).touch()
    done = preloading.wait_done(job)
    assert done.state is JobState.SUCCEEDED, done.error
    assert preloading.supervisor.is_ready()
    assert COLD_START_LOG not in [line.message for line in preloading.store.logs(job.id)]
    (record,) = preloading.store.live_workers(WAIT_S)
    assert record.state in ("idle", "busy") and record.warm == ("test/echo",)


def test_a_preload_that_cannot_be_loaded_ends_the_worker_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(data_dir=tmp_path, lease_s=6.0, preload=("test/missing-weights",))
    store = Store(settings.resolved_database_url)
    store.create_all()
    from motionserve.jobs.worker import WorkerSupervisor

    supervisor = WorkerSupervisor(settings, store, "cpu", registry_module="jobs_fake_registry")
    raised: list[BaseException] = []

    def run() -> None:
        try:
            supervisor.run_forever(threading.Event())
        except BaseException as exc:
            raised.append(exc)

    with caplog.at_level(logging.ERROR, logger="motionserve.jobs.worker"):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(WAIT_S)
    assert not thread.is_alive(), "the worker kept retrying a preload that cannot succeed"
    (error,) = raised
    assert isinstance(error, PreloadError) and "checkpoint 'sd15_base'" in str(error)
    (line,) = [r.getMessage() for r in caplog.records if "cannot preload" in r.getMessage()]
    assert "\n" not in line and "test/missing-weights on cpu" in line and "/models/sd15 does not exist" in line
    assert store.live_workers(WAIT_S) == []  # marked stopped, not left "starting"
    store.close()


def test_preload_names_are_short_names_or_endpoint_ids() -> None:
    assert preload_endpoints(["t2v", "svd-lcm", T2V, "v2v"]) == [T2V, PRELOAD_NAMES["svd-lcm"], V2V]
    assert Settings(preload="t2v, turbo").preload == ("t2v", "turbo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pipeline 'svd'; known: t2v, v2v, turbo, svd-lcm"):
        preload_endpoints(["t2v", "svd"])


def test_an_unknown_preload_name_stops_the_command_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MOTIONSERVE_PRELOAD", "t2v,animatediff")
    assert main(["worker", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("motionserve: bad setting MOTIONSERVE_PRELOAD: unknown pipeline 'animatediff'")
    assert "\n" not in err and not (tmp_path / "motionserve.db").exists()


def test_the_ready_probe_answers_503_until_ready() -> None:
    ready = threading.Event()
    port = free_port()
    serve_worker_http(port, ready=ready.is_set)
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: _get(f"{url}/ready"), "the worker's HTTP port").status_code == 503
    ready.set()
    assert httpx.get(f"{url}/ready").status_code == 200
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200 and "# TYPE" in metrics.text


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def _answers_200(url: str) -> bool:
    response = _get(url)
    return response is not None and response.status_code == 200


# ---- the real `motionserve worker` --------------------------------------------------------------


def _worker(data_dir: Path, db_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "motionserve", "worker", "--data-dir", str(data_dir), "--database-url", db_url,
         "--devices", "cpu", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )


def test_missing_weights_make_the_worker_exit_non_zero(tmp_path: Path) -> None:
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"sd15_base": "/nonexistent/sd15", "motion_adapter": "/nonexistent/adapter"}))
    proc = _worker(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", "--weights", str(weights), "--preload", "t2v")
    try:
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("motionserve: worker-cpu: cannot preload: checkpoint"), err
    assert "/nonexistent/" in last and "does not exist" in last


def test_a_real_worker_is_ready_with_its_preload_warm_and_runs_the_first_request_warm(
    tmp_path: Path, data_dir: Path, tiny_weights: Path
) -> None:
    # The session's data dir holds the tiny weights, already built; the database is this test's own.
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(db_url)
    store.create_all()
    port = free_port()
    proc = _worker(data_dir, db_url, "--weights", "tiny", "--preload", "t2v", "--metrics-port", str(port))
    try:
        wait_for(lambda: proc.poll() is not None or _answers_200(f"http://127.0.0.1:{port}/ready"),
                 "the worker to be ready", timeout=300)
        assert proc.poll() is None, proc.communicate()[1]
        (record,) = store.live_workers(WAIT_S)
        assert record.state in ("idle", "busy") and set(record.warm) == {T2V, V2V}  # one pipeline group
        job = store.submit(owner="alice", endpoint_id=T2V, base_url="http://127.0.0.1:8000", input={
            "prompt": "a red rocket", "video_size": {"width": 64, "height": 64}, "num_frames": 4,
            "num_inference_steps": 1, "fps": 8})
        done = wait_for(lambda: (j := store.get(job.id)) is not None and j.is_terminal and j, "the request", timeout=300)
        assert done.state is JobState.SUCCEEDED, done.error
        assert COLD_START_LOG not in [line.message for line in store.logs(job.id)]
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        store.close()
