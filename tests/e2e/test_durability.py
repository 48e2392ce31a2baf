"""Crashes: the store outlives any process, so queued and running requests survive kill -9."""

from __future__ import annotations

from typing import Any

import pytest

from motionserve.config import Settings
from motionserve.jobs.models import Job
from motionserve.jobs.store import Store
from tests.services import fresh_postgres_database

from .common import SMALL_T2V, T2V, download
from .http_queue import QueueClient, Submitted
from .media import probe_mp4
from .server import Server, start_worker

pytestmark = pytest.mark.e2e

# A short lease, so a request held by a dead process is handed out again within seconds.
LEASE_ENV = {"MOTIONSERVE_LEASE_S": "3"}
# Runs for a few seconds on 2 cores: long enough to be caught mid-way by a kill.
MEDIUM_T2V: dict[str, Any] = {**SMALL_T2V, "num_inference_steps": 25, "video_size": {"width": 96, "height": 96}}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Any:
    """None (SQLite in the data dir) or a fresh PostgreSQL database (tests/services.py), dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres_database("motionserve_e2e") as url:
        yield url


def assert_completed_with_video(client: QueueClient, server: Server, job: Submitted) -> None:
    final = client.wait(job)
    assert final.get("error") is None, final
    r = client.result(job)
    assert r.status_code == 200, r.text
    info = probe_mp4(download(server, r.json()["video"]["url"]))
    assert info.frames == SMALL_T2V["num_frames"]


def stored_job(server: Server, request_id: str) -> Job:
    """The store's own record: who ran the request and how many tries it took."""
    store = Store(Settings(data_dir=server.data_dir, database_url=server.database_url).resolved_database_url)
    try:
        job = store.get(request_id)
    finally:
        store.close()
    assert job is not None
    return job


def test_kill_9_server_with_queued_and_running_requests_then_restart(server_factory) -> None:
    server = server_factory("crash", env=LEASE_ENV)
    client = QueueClient(server, server.create_key("durability"))
    try:
        # The first one is running when the server dies; the two behind it are still queued.
        jobs = [client.submit(T2V, {**(MEDIUM_T2V if n == 0 else SMALL_T2V), "seed": n}) for n in range(3)]
        assert client.wait(jobs[0], until="IN_PROGRESS")["status"] == "IN_PROGRESS"
        assert client.status(jobs[2])["status"] == "IN_QUEUE"

        server.kill9()
        server.restart()

        for job in jobs:
            assert_completed_with_video(client, server, job)
        # The request that was running when the server died was run again, not lost or duplicated.
        assert stored_job(server, jobs[0].request_id).attempts == 2
    finally:
        client.close()
        server.stop()


def test_request_moves_to_the_other_worker_when_its_worker_is_killed(server_factory, log_dir, models_cache, database_url) -> None:
    server = server_factory("split", workers=False, env=LEASE_ENV, database_url=database_url)
    client = QueueClient(server, server.create_key("workers"))
    first = start_worker(server.data_dir, log_dir=log_dir, name="worker-a", env=LEASE_ENV, models_cache=models_cache,
                         database_url=database_url)
    second = None
    try:
        job = client.submit(T2V, MEDIUM_T2V)
        assert client.wait(job, until="IN_PROGRESS")["status"] == "IN_PROGRESS"  # only worker-a can hold it
        second = start_worker(server.data_dir, log_dir=log_dir, name="worker-b", env=LEASE_ENV, models_cache=models_cache,
                              database_url=database_url)

        first.kill9()

        assert_completed_with_video(client, server, job)
        record = stored_job(server, job.request_id)
        assert record.attempts == 2 and str(second.pid) in (record.worker_id or "").split(":"), record
        assert second.alive()
        # And the survivor keeps serving new work.
        assert_completed_with_video(client, server, client.submit(T2V, SMALL_T2V))
    finally:
        client.close()
        first.stop()
        server.stop()
        if second is not None:
            second.stop()
