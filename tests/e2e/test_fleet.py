"""motionserve as a fleet: two API nodes and three workers sharing only PostgreSQL and an S3 bucket.

Everything runs on loopback: PostgreSQL (a fresh database), moto's S3 server (a fresh bucket), and
five real processes, each with its own empty data directory and the same read-only tiny weights. The
official `fal-client` uploads through one node, submits through the other, follows (status polls and
SSE streams) and fetches results through both. Mid-run a worker is killed while it runs a request and
then an API node is killed; the surviving node and workers must finish every request exactly once.

Needs PostgreSQL and moto (tests/services.py): skipped without them, failed when CI requires them.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from motionserve import migrations
from motionserve.jobs.models import JobState
from motionserve.jobs.store import Store
from tests.media import make_png, make_video

from . import webhook_check
from .common import SVD, T2V, TURBO, V2V, step_numbers
from .conftest import WebhookReceiver, make_py_client
from .fleet import (
    BackgroundDriver,
    Fleet,
    FleetSettings,
    admin_workers,
    bucket_keys,
    delete_bucket,
    download_via,
    get_json,
    is_mp4,
    run_driver,
    start_api_nodes,
    start_workers,
    wait_for,
)
from .server import Server
from .tls import TlsFiles

pytestmark = pytest.mark.e2e

LEASE_S = 4.0  # a killed worker's request is requeued a few seconds after its last heartbeat
WAIT_S = 600.0  # generous: 2 shared cores run three model processes at once

# The smallest requests each schema allows (svd-lcm always makes 25 frames at a fixed working size:
# its one step is still the slowest request here). Inputs are filled in once uploaded.
SMALL: dict[str, dict[str, Any]] = {
    T2V: {"prompt": "a red rocket", "video_size": {"width": 64, "height": 64}, "num_frames": 4,
          "num_inference_steps": 2, "fps": 8},
    V2V: {"prompt": "a painting", "first_n_seconds": 2, "fps": 1, "num_inference_steps": 2, "strength": 0.5},
    TURBO: {"prompt": "a painting", "num_inference_steps": 4, "guidance_scale": 1.0, "select_every_nth_frame": 8},
    SVD: {"steps": 1, "fps": 6},
}
# The request whose worker is killed: long enough (50 steps) to be caught mid-run.
VICTIM: dict[str, Any] = {**SMALL[T2V], "num_frames": 16, "num_inference_steps": 50}
JOB_COUNT = 30


def fleet_jobs(video_url: str, image_url: str) -> list[dict[str, Any]]:
    """30 requests over the four endpoints: svd-lcm first (the longest), the victim next, then the rest."""
    inputs = {V2V: {"video_url": video_url}, TURBO: {"video_url": video_url}, SVD: {"image_url": image_url}}
    jobs = [{"endpoint": SVD, "arguments": {**SMALL[SVD], **inputs[SVD], "seed": 0}},
            {"endpoint": T2V, "arguments": {**VICTIM, "seed": 1}}]
    cycle = [T2V, V2V, TURBO]
    for n in range(2, JOB_COUNT):
        endpoint = cycle[n % len(cycle)]
        jobs.append({"endpoint": endpoint, "arguments": {**SMALL[endpoint], **inputs.get(endpoint, {}), "seed": n}})
    return jobs


def video_url_of(result: dict[str, Any]) -> str:
    return result["video"]["url"]


@pytest.fixture()
def fleet_settings(postgres_url: str, s3_server: Any, tiny_weights: Path, tls_files: TlsFiles) -> Any:
    """A fresh database and a fresh bucket, both removed afterwards."""
    bucket = s3_server.create_bucket()
    try:
        yield FleetSettings(
            database_url=postgres_url, storage_url=f"s3://{bucket}/fleet", s3_env=s3_server.env(),
            weights=tiny_weights / "weights.json", tls=tls_files, lease_s=LEASE_S,
        )
    finally:
        delete_bucket(s3_server.env(), bucket)


@pytest.fixture()
def fleet() -> Any:
    started = Fleet()
    yield started
    started.stop()


def test_fleet_survives_a_killed_worker_and_a_killed_api_node(
    fleet_settings: FleetSettings, fleet: Fleet, tmp_path: Path, log_dir: Path, webhook_receiver: WebhookReceiver,
) -> None:
    settings = fleet_settings
    fleet.api = start_api_nodes(settings, tmp_path, log_dir, ["redirect", "proxy"])
    node1, node2 = fleet.api
    fleet.workers = start_workers(settings, tmp_path, log_dir, 3)
    key, admin_key = node1.create_key("fleet"), node2.create_key("fleet-admin", admin=True)
    wait_for(lambda: len(admin_workers(node1, admin_key)) == 3, WAIT_S, "three registered workers")
    store = Store(settings.database_url)
    try:
        _run_scenario(settings, fleet, store, key, admin_key, webhook_receiver, tmp_path, log_dir)
    finally:
        store.close()


def _run_scenario(
    settings: FleetSettings, fleet: Fleet, store: Store, key: str, admin_key: str, receiver: WebhookReceiver,
    tmp_path: Path, log_dir: Path,
) -> None:
    node1, node2 = fleet.api

    # Inputs uploaded through node 1; every request submitted through node 2, with a webhook.
    clip, image = tmp_path / "clip.mp4", tmp_path / "image.png"
    clip.write_bytes(make_video(width=64, height=64, fps=8, frames=16))
    image.write_bytes(make_png(64, 64, pattern="gradient"))
    upload = make_py_client(node1, key)
    video_url = upload("upload_media", path=str(clip), content_type="video/mp4")["url"]
    image_url = upload("upload_media", path=str(image), content_type="image/png")["url"]
    jobs = fleet_jobs(video_url, image_url)
    submitted = run_driver(node2, key, "submit_many", jobs=jobs, webhook_url=receiver.url)["submitted"]
    ids = [job["request_id"] for job in submitted]
    assert len(set(ids)) == JOB_COUNT
    victim = ids[1]

    # Node 1 follows every request (status polls and SSE streams) until the end, whatever dies meanwhile.
    follower = BackgroundDriver.start(node1, key, log_dir, "follow", jobs=submitted)
    try:
        early = wait_for(lambda: _victim_running_and_some_done(store, victim, submitted), WAIT_S,
                         "the victim running (a step logged) while other requests have finished")
        _both_nodes_answer_for(node1, node2, key, early, settings)

        killed = _kill_worker_running(fleet, node1, admin_key, store, victim)
        node2.kill9()
        followed = follower.result()
    finally:
        follower.stop()

    _check_followed(followed, ids)
    results = {job["request_id"]: job["result"] for job in followed["jobs"]}
    for request_id, result in results.items():  # from the one live node
        assert is_mp4(download_via(node1, video_url_of(result)).content), request_id
    _check_store(store, ids, victim, killed, results)
    _check_webhooks(store, receiver, node1, ids, results)
    _check_survivors(fleet, node1, admin_key, killed)
    _check_nothing_on_local_disk(tmp_path, settings)


def _victim_running_and_some_done(store: Store, victim: str, submitted: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    job = store.get(victim)
    assert job is not None and job.state in (JobState.QUEUED, JobState.RUNNING), job
    if job.state is not JobState.RUNNING or not step_numbers([vars(line) for line in store.logs(victim)]):
        return None
    done = [s for s in submitted if (j := store.get(s["request_id"])) is not None and j.state is JobState.SUCCEEDED]
    return done if len(done) >= 2 else None


def _both_nodes_answer_for(node1: Server, node2: Server, key: str, done: list[dict[str, Any]],
                           settings: FleetSettings) -> None:
    """Finished requests: the same result from both nodes (fal-client), the same file from both."""
    via1 = run_driver(node1, key, "results", jobs=done)["jobs"]
    via2 = run_driver(node2, key, "results", jobs=done)["jobs"]
    assert via1 == via2
    s3_endpoint = settings.s3_env["AWS_ENDPOINT_URL"]
    for job in via1:
        assert "result" in job, job
        url = video_url_of(job["result"])
        redirected, proxied = download_via(node1, url), download_via(node2, url)
        assert is_mp4(redirected.content) and redirected.content == proxied.content, url
        # node 1 redirects to a presigned URL on the bucket's endpoint; node 2 relays the bytes itself
        assert redirected.history and str(redirected.url).startswith(s3_endpoint), redirected.url
        assert not proxied.history, [r.headers.get("location") for r in proxied.history]


def _kill_worker_running(fleet: Fleet, node1: Server, admin_key: str, store: Store, victim: str) -> dict[str, Any]:
    """kill -9 the worker (process group: supervisor and model process) running `victim`; its registry row."""
    holders = [w for w in admin_workers(node1, admin_key) if w["current_job"] == victim]
    assert len(holders) == 1, f"no single worker runs {victim}: {admin_workers(node1, admin_key)}"
    worker = holders[0]
    process = next(p for p in fleet.workers if p.pid == worker["pid"])
    process.kill9()
    job = store.get(victim)
    assert job is not None and job.state is JobState.RUNNING and job.worker_id == worker["id"], (
        f"the victim was no longer running when its worker was killed: {job}")
    return worker


def _check_followed(followed: dict[str, Any], ids: list[str]) -> None:
    assert [job["request_id"] for job in followed["jobs"]] == ids
    for job in followed["jobs"]:
        final = job["polled"][-1]
        assert final["status"] == "COMPLETED" and final["error"] is None, job
        assert "result" in job and "video" in job["result"], job
        assert job["streamed"].get("statuses", [])[-1:] == ["COMPLETED"], job["streamed"]


def _check_store(store: Store, ids: list[str], victim: str, killed: dict[str, Any], results: dict[str, Any]) -> None:
    """Each request ran to success exactly once: one outcome, the victim tried twice, the rest once."""
    for request_id in ids:
        job = store.get(request_id)
        assert job is not None and job.state is JobState.SUCCEEDED and job.error is None, job
        assert job.result == results[request_id] and job.finished_at is not None
        assert job.worker_id != killed["id"], job
        steps = step_numbers([vars(line) for line in store.logs(request_id)])
        runs = [n for n, step in enumerate(steps) if step == 1]  # each attempt logs from "step 1/n" on
        if request_id == victim:
            assert job.attempts == 2, job
            assert len(runs) == 2 and steps[runs[1]:] == list(range(1, VICTIM["num_inference_steps"] + 1)), steps
        else:
            assert job.attempts == 1, job
            assert len(runs) == 1 and steps == list(range(1, len(steps) + 1)), steps


def _check_webhooks(store: Store, receiver: WebhookReceiver, node1: Server, ids: list[str],
                    results: dict[str, Any]) -> None:
    """One delivery per request, signed with the fleet's key, carrying the result."""
    def delivered() -> bool:
        rows = [store.webhook_deliveries(request_id) for request_id in ids]
        assert all(len(r) == 1 for r in rows), rows
        return all(r[0]["state"] == "delivered" for r in rows)

    wait_for(delivered, WAIT_S, "every webhook delivered")
    counts = Counter(hook.headers.get("x-fal-webhook-request-id") for hook in receiver.received)
    assert counts == Counter(ids), counts
    keys = webhook_check.fetch_jwks_keys(f"{node1.base_url}/.well-known/jwks.json", str(node1.tls.ca_cert))
    for hook in receiver.received:
        webhook_check.verify(hook.headers, hook.body, keys)
        body = hook.json()
        assert body["status"] == "OK" and body["payload"] == results[body["request_id"]], body


def _check_survivors(fleet: Fleet, node1: Server, admin_key: str, killed: dict[str, Any]) -> None:
    survivors = [p for p in fleet.workers if p.alive()]
    assert len(survivors) == 2 and all(p.pid != killed["pid"] for p in survivors)
    expected = sorted(p.pid for p in survivors)
    # The killed worker drops out of the list once its last heartbeat is older than the lease allows.
    wait_for(lambda: sorted(w["pid"] for w in admin_workers(node1, admin_key)) == expected, WAIT_S,
             f"the admin worker list to be the survivors {expected}")
    health = get_json(node1, "/health")
    assert [(w["host"], w["device"]) for w in health["workers"]] == [(socket.gethostname(), "cpu")] * 2, health


def _check_nothing_on_local_disk(root: Path, settings: FleetSettings) -> None:
    """Every file went to the bucket: no process kept an input or an output in its data directory."""
    local = [p for p in root.glob("*/files/**/*") if p.is_file()]
    assert local == [], local
    assert settings.storage_url and bucket_keys(settings.s3_env, settings.storage_url.split("/")[2])


def test_two_api_nodes_start_together_on_an_empty_database(
    postgres_url: str, tiny_weights: Path, tls_files: TlsFiles, tmp_path: Path, log_dir: Path, fleet: Fleet,
) -> None:
    settings = FleetSettings(
        database_url=postgres_url, storage_url=None, s3_env={}, weights=tiny_weights / "weights.json",
        tls=tls_files,
    )
    assert migrations.current(postgres_url) is None
    fleet.api = start_api_nodes(settings, tmp_path, log_dir, ["redirect", "redirect"], wait=False)
    for node in fleet.api:
        node.wait_healthy()

    assert migrations.current(postgres_url) == migrations.head()
    for node in fleet.api:
        assert node.process.alive()
        log = node.process.log()
        assert "already exists" not in log and "Traceback" not in log, log
        admin_key = node.create_key("admin", admin=True)
        assert admin_workers(node, admin_key) == []
