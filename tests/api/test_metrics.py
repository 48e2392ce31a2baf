"""GET /metrics: admin only, fleet state read from the store, process instruments, valid exposition text."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from motionserve import metrics
from motionserve.database import files, workers
from tests.api.conftest import Api

ECHO = "test-owner/echo"


def admin_auth(api: Api) -> dict[str, str]:
    key_id, secret = api.store.create_key("ops", admin=True)
    return {"Authorization": f"Key {key_id}:{secret}"}


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics as {(name, sorted labels): value}; the text must parse."""
    r = api.client.get("/metrics", headers=admin_auth(api))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_need_an_admin_key(api: Api) -> None:
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers={"Authorization": "Key nope:nope"}).status_code == 401
    assert api.client.get("/metrics", headers=api.auth).status_code == 403  # alice's key is a user key
    assert api.client.get("/metrics", headers=admin_auth(api)).status_code == 200


def test_queue_depth_per_endpoint_and_priority(api: Api) -> None:
    idle = scrape(api)
    assert value(idle, "motionserve_database_up") == 1
    # Every served endpoint is reported, with zeros, before any job exists.
    for endpoint in (ECHO, "test-owner/echo/slow"):
        for priority in ("normal", "low"):
            assert value(idle, "motionserve_queue_depth", endpoint=endpoint, priority=priority) == 0
        assert value(idle, "motionserve_running_jobs", endpoint=endpoint) == 0

    for _ in range(3):
        api.submit()
    api.submit(headers={"X-Fal-Queue-Priority": "low"})
    api.submit(endpoint="test-owner/echo/slow")
    api.worker.claim()  # the oldest normal echo job starts running

    samples = scrape(api)
    assert value(samples, "motionserve_queue_depth", endpoint=ECHO, priority="normal") == 2
    assert value(samples, "motionserve_queue_depth", endpoint=ECHO, priority="low") == 1
    assert value(samples, "motionserve_queue_depth", endpoint="test-owner/echo/slow", priority="normal") == 1
    assert value(samples, "motionserve_running_jobs", endpoint=ECHO) == 1
    assert value(samples, "motionserve_running_jobs", endpoint="test-owner/echo/slow") == 0


def test_workers_webhooks_and_files_from_the_database(api: Api) -> None:
    now = time.time()  # the SQLite store's database clock
    stale = now - 10 * api.settings.lease_s
    rows = [("w1", "idle", now), ("w2", "busy", now), ("w3", "busy", now), ("w4", "busy", stale), ("w5", "stopped", now)]
    with api.store.engine.begin() as conn:
        conn.execute(insert(workers), [
            {"id": i, "host": "h", "pid": 1, "device": "cpu", "version": "0", "state": state,
             "started_at": seen, "last_seen": seen}
            for i, state, seen in rows
        ])
        conn.execute(insert(files), [
            {"token": t, "file_name": "f", "content_type": "video/mp4", "size": size, "created_at": now, "kind": kind}
            for t, size, kind in [("a", 100, "upload"), ("b", 23, "upload"), ("c", 5000, "output")]
        ])
    job = api.submit({"prompt": "hook"}, params={"fal_webhook": "https://example.com/hook"})
    api.worker.run_one()  # finishing the job queues its webhook delivery

    samples = scrape(api)
    assert value(samples, "motionserve_workers", state="idle") == 1
    assert value(samples, "motionserve_workers", state="busy") == 2  # not the one unseen for 10 leases
    assert value(samples, "motionserve_workers", state="draining") == 0
    assert ("motionserve_workers", (("state", "stopped"),)) not in samples
    assert value(samples, "motionserve_webhook_backlog") == 1, job
    assert value(samples, "motionserve_files_bytes", kind="upload") == 123
    assert value(samples, "motionserve_files_bytes", kind="output") == 5000


def test_a_recorded_job_shows_up_in_the_histograms(api: Api) -> None:
    endpoint = "test-owner/recorded"  # the instruments are per process: a label no other test uses
    metrics.record_job_finished(endpoint, queue_wait_s=1.5, run_time_s=42.0, outcome="succeeded", error_type=None)
    metrics.record_job_finished(endpoint, queue_wait_s=0.2, run_time_s=None, outcome="failed", error_type="worker_crashed")
    metrics.record_bytes_stored("output", 2048)

    samples = scrape(api)
    assert value(samples, "motionserve_run_seconds_count", endpoint=endpoint) == 1
    assert value(samples, "motionserve_run_seconds_sum", endpoint=endpoint) == 42.0
    assert value(samples, "motionserve_run_seconds_bucket", endpoint=endpoint, le="60.0") == 1
    assert value(samples, "motionserve_run_seconds_bucket", endpoint=endpoint, le="30.0") == 0
    assert value(samples, "motionserve_queue_wait_seconds_count", endpoint=endpoint) == 2
    assert value(samples, "motionserve_jobs_finished_total", endpoint=endpoint, outcome="succeeded") == 1
    assert value(samples, "motionserve_jobs_finished_total", endpoint=endpoint, outcome="failed") == 1
    assert value(samples, "motionserve_job_failures_total", endpoint=endpoint, error_type="worker_crashed") == 1
    assert value(samples, "motionserve_stored_bytes_total", kind="output") >= 2048


def test_an_unreachable_database_is_reported_not_raised(api: Api) -> None:
    from sqlalchemy import create_engine

    broken = metrics.FleetCollector(create_engine("sqlite:////nonexistent/dir/x.db"), stale_after_s=90)
    text = metrics.render(broken).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples == {"motionserve_database_up": 0}


def test_the_fleet_queries_run_on_postgres(postgres_url: str) -> None:
    from motionserve.jobs.store import Store

    store = Store(postgres_url)
    try:
        store.create_all()
        store.submit(owner="o", endpoint_id=ECHO, input={}, priority=1, base_url="http://x")
        with store.engine.begin() as conn:
            conn.execute(insert(files), [{"token": "t", "file_name": "f", "content_type": "video/mp4", "size": 7,
                                          "created_at": time.time(), "kind": "output"}])
        text = metrics.render(metrics.FleetCollector(store.engine, stale_after_s=90, endpoints=[ECHO])).decode()
    finally:
        store.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("motionserve_database_up", ())] == 1
    assert samples[("motionserve_queue_depth", (("endpoint", ECHO), ("priority", "low")))] == 1
    assert samples[("motionserve_files_bytes", (("kind", "output"),))] == 7
    assert samples[("motionserve_workers", (("state", "idle"),))] == 0


def test_multiprocess_mode_sums_every_process(tmp_path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, values recorded by two processes are exposed together."""
    record = (
        "from motionserve import metrics; "
        "metrics.record_job_finished('e', queue_wait_s=1, run_time_s=2, outcome='succeeded', error_type=None)"
    )
    expose = "import sys; from motionserve import metrics; sys.stdout.write(metrics.render(metrics.process_collector()).decode())"
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", record], env=env, check=True, timeout=60)
    text = subprocess.run([sys.executable, "-c", expose], env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("motionserve_run_seconds_count", (("endpoint", "e"),))] == 2
    assert samples[("motionserve_jobs_finished_total", (("endpoint", "e"), ("outcome", "succeeded")))] == 2
