"""Fault: the PostgreSQL server goes away under a running `motionserve serve`, then comes back.

The server runs on a private PostgreSQL instance the test starts itself (private_postgres.py), so
stopping it harms nothing else. While it is down the API answers 503 with a reason and Retry-After,
promptly; once it is back the server recovers by itself and every queued and running request
completes, each run exactly once. Separately, every database session is cut with
pg_terminate_backend: pooled connections are replaced without the clients noticing.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest

from .common import SMALL_T2V, T2V, step_numbers
from .fleet import wait_for
from .http_queue import QueueClient, Submitted
from .private_postgres import PrivatePostgres, private_postgres
from .test_durability import assert_completed_with_video, stored_job

pytestmark = pytest.mark.e2e

# Running for a few seconds: usually still running when the database comes back. One that finishes
# during the outage must complete too (its output waits for the database), so this is not a race.
LONG_T2V: dict[str, Any] = {**SMALL_T2V, "num_inference_steps": 30}
OUTAGE_S = 4.0  # shorter than the lease (30 s): the worker keeps its job through it
ANSWER_TIMEOUT_S = 30.0  # a request during the outage must be answered within this (not hang)


@pytest.fixture()
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def answer(http: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, printed as the user sees it; a hang is a failure (the client times out)."""
    r = http.request(method, url, timeout=ANSWER_TIMEOUT_S, **kwargs)
    print(f"{method} {url} -> {r.status_code} {r.headers.get('retry-after', '')} {r.text[:200]}")
    return r


def assert_database_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["detail"] == "The server's database is unreachable; try again shortly", body
    assert body["error_type"] == "database_unavailable" and int(r.headers["retry-after"]) > 0


def test_database_restart_mid_run(server_factory, postgres: PrivatePostgres) -> None:
    server = server_factory("pg-restart", database_url=postgres.url)
    client = QueueClient(server, server.create_key("outage"))
    try:
        jobs = [client.submit(T2V, {**(LONG_T2V if n == 0 else SMALL_T2V), "seed": n}) for n in range(3)]
        wait_for(lambda: _stepping(client, jobs[0]), 300, "the first request's first denoising step")
        assert client.status(jobs[2])["status"] == "IN_QUEUE"

        postgres.stop()
        _while_database_is_down(client, jobs[0])
        time.sleep(OUTAGE_S)  # the worker, the upkeep and the change watcher all meet the outage
        postgres.start()

        # Recovers by itself: no restart of motionserve.
        wait_for(lambda: _answers(client, jobs[0]), 120, "the API to answer again after the database returned")
        for job in jobs:
            assert_completed_with_video(client, server, job)
        # Nothing ran twice: the running request kept its lease through the outage, and its
        # denoising steps were logged once each, none lost (lines are kept until the store takes them).
        assert [stored_job(server, job.request_id).attempts for job in jobs] == [1, 1, 1]
        steps = step_numbers(client.status(jobs[0], logs=True).get("logs"))
        assert steps == list(range(1, LONG_T2V["num_inference_steps"] + 1)), steps
        assert "unhandled error" not in server.process.log()  # every API error was the 503 above
    finally:
        client.close()
        server.stop()


def _while_database_is_down(client: QueueClient, running: Submitted) -> None:
    http = client.http
    assert_database_unavailable(answer(http, "GET", running.status_url))
    assert_database_unavailable(answer(http, "POST", f"/queue/{T2V}", json=SMALL_T2V))
    assert_database_unavailable(answer(http, "GET", running.response_url))
    health = answer(http, "GET", "/health")
    assert health.status_code == 503 and health.json()["status"] == "unhealthy", health.text


def _stepping(client: QueueClient, job: Submitted) -> bool:
    """The job is in its denoising loop (a step logged), not still waiting for its model to load."""
    status = client.status(job, logs=True)
    assert status["status"] in ("IN_QUEUE", "IN_PROGRESS"), status
    return bool(step_numbers(status.get("logs")))


def _answers(client: QueueClient, job: Submitted) -> bool:
    r = client.http.get(job.status_url, timeout=ANSWER_TIMEOUT_S)
    assert r.status_code in (200, 202, 503), f"{r.status_code} {r.text[:300]}"
    return r.status_code in (200, 202)


def test_every_database_session_terminated(server_factory, postgres: PrivatePostgres) -> None:
    server = server_factory("pg-terminate", database_url=postgres.url)
    client = QueueClient(server, server.create_key("terminate"))
    try:
        running = client.submit(T2V, {**LONG_T2V, "seed": 1})
        queued = client.submit(T2V, {**SMALL_T2V, "seed": 2})
        wait_for(lambda: _stepping(client, running), 300, "the running request's first denoising step")

        ended = postgres.terminate_all_connections()
        print(f"pg_terminate_backend ended {ended} sessions")
        assert ended >= 1  # at least the change watcher's LISTEN session

        # The pool replaces dropped connections at checkout: clients see no error at all.
        for _ in range(5):
            r = answer(client.http, "GET", running.status_url)
            assert r.status_code in (200, 202), r.text
        after = client.submit(T2V, {**SMALL_T2V, "seed": 3})
        for job in (running, queued, after):
            assert_completed_with_video(client, server, job)
        assert [stored_job(server, job.request_id).attempts for job in (running, queued, after)] == [1, 1, 1]
    finally:
        client.close()
        server.stop()
