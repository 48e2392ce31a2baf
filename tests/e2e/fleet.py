"""A motionserve fleet on loopback for end-to-end tests: API nodes and worker processes sharing only
PostgreSQL, an S3 bucket (moto) and read-only model weights.

Every process gets its own empty data directory, so anything that works here does not lean on a
shared disk. Processes are the same `ManagedProcess` the other e2e tests use (own process group, log
file, logs attached to a failing test's report).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlsplit

import httpx

from .conftest import HERE, _last_json_line, python_client_env
from .server import STARTUP_TIMEOUT_S, ManagedProcess, Server, base_env, free_port, serve_args, start_worker
from .tls import TlsFiles

T = TypeVar("T")
DRIVER = HERE / "fleet_driver.py"
DRIVER_TIMEOUT_S = 600


def wait_for(condition: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """Call `condition` until it returns something truthy (returned); AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


@dataclass(frozen=True)
class FleetSettings:
    """What every process of one fleet shares: the database, the bucket, the weights, the lease."""

    database_url: str
    storage_url: str | None  # s3://bucket/prefix; None: each process keeps files in its own data dir
    s3_env: dict[str, str]
    weights: Path  # a weights.json checkpoint map (read-only; built once by the test session)
    tls: TlsFiles
    lease_s: float = 4.0

    def env(self, **extra: str) -> dict[str, str]:
        storage = {"MOTIONSERVE_STORAGE_URL": self.storage_url} if self.storage_url else {}
        return {
            **self.s3_env,
            **storage,
            "MOTIONSERVE_DATABASE_URL": self.database_url,
            "MOTIONSERVE_LEASE_S": str(self.lease_s),
            # Webhooks to the test's loopback receiver; inputs uploaded to a loopback API node.
            "MOTIONSERVE_ALLOW_PRIVATE_URLS": "1",
            # Workers fetch inputs from whichever node they were uploaded to, over its TLS.
            "SSL_CERT_FILE": str(self.tls.ca_cert),
            **extra,
        }


@dataclass
class Fleet:
    """The processes of one fleet; `stop()` ends every one of them, whatever state they are in."""

    api: list[Server] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)

    def processes(self) -> list[ManagedProcess]:
        return [*(node.process for node in self.api), *self.workers]

    def stop(self) -> None:
        # SIGTERM everyone first so their drains overlap, then wait for (or kill) each in turn.
        for process in self.processes():
            if process.alive():
                process.proc.terminate()  # type: ignore[union-attr]
        for process in self.processes():
            process.stop()


def start_api_nodes(
    settings: FleetSettings, root: Path, log_dir: Path, deliveries: Iterable[str], *, wait: bool = True
) -> list[Server]:
    """One `serve --no-workers` per file delivery mode, all started at once, each in a new data dir."""
    nodes = []
    for n, delivery in enumerate(deliveries, start=1):
        data_dir = root / f"api-{n}"
        data_dir.mkdir(parents=True)
        port = free_port()
        args = serve_args(data_dir, settings.tls, port, workers=False, weights=str(settings.weights))
        env = base_env(settings.env(MOTIONSERVE_FILE_DELIVERY=delivery))
        process = ManagedProcess(f"api-{n}", args, log_dir / f"api-{n}-{port}.log", env).start()
        nodes.append(Server(data_dir, settings.tls, port, process, settings.database_url))
    if wait:
        for node in nodes:
            node.wait_healthy(STARTUP_TIMEOUT_S)
    return nodes


def start_workers(settings: FleetSettings, root: Path, log_dir: Path, count: int) -> list[ManagedProcess]:
    workers = []
    for n in range(1, count + 1):
        data_dir = root / f"worker-{n}"
        data_dir.mkdir(parents=True)
        workers.append(start_worker(
            data_dir, log_dir=log_dir, name=f"worker-{n}", env=settings.env(), weights=str(settings.weights),
            extra=["--devices", "cpu", "--allow-private-urls"],
        ))
    return workers


# ---------------------------------------------------------------- reading the fleet over HTTP


def get_json(node: Server, path: str, key: str | None = None) -> Any:
    with node.http(key) as http:
        r = http.get(path)
    assert r.status_code == 200, f"GET {path} on {node.base_url} -> {r.status_code} {r.text[:300]}"
    return r.json()


def admin_workers(node: Server, admin_key: str) -> list[dict[str, Any]]:
    """The admin `GET /workers` list: every live worker (id, host, pid, device, state, current_job...)."""
    return get_json(node, "/workers", admin_key)["workers"]


def on_node(node: Server, url: str) -> str:
    """The same path on `node`: any API node answers for any request or file of the fleet."""
    parts = urlsplit(url)
    return node.base_url + parts.path + (f"?{parts.query}" if parts.query else "")


def download_via(node: Server, url: str) -> httpx.Response:
    """GET a returned file URL through `node`, without a key, following redirects (to presigned S3 URLs)."""
    r = httpx.get(on_node(node, url), verify=str(node.tls.ca_cert), timeout=120, follow_redirects=True)
    assert r.status_code == 200, f"GET {on_node(node, url)} -> {r.status_code} {r.text[:300]}"
    return r


def is_mp4(data: bytes) -> bool:
    """Non-empty, and starting with an ISO BMFF `ftyp` box, as every MP4 our encoder writes does."""
    return len(data) > 8 and data[4:8] == b"ftyp"


# ---------------------------------------------------------------- the fal-client driver


def _driver_command(scenario: str, kwargs: dict[str, Any]) -> list[str]:
    return [sys.executable, str(DRIVER), scenario, json.dumps(kwargs)]


def run_driver(node: Server, key: str, scenario: str, **kwargs: Any) -> Any:
    """Run a fleet_driver.py scenario against `node` and return its JSON result."""
    out = subprocess.run(
        _driver_command(scenario, kwargs), capture_output=True, text=True, env=python_client_env(node, key),
        timeout=DRIVER_TIMEOUT_S, cwd=HERE,
    )
    return _last_json_line(out, f"fleet_driver {scenario}")


@dataclass
class BackgroundDriver:
    """A fleet_driver.py scenario running while the test does other things (kills processes)."""

    process: subprocess.Popen[str]
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, node: Server, key: str, log_dir: Path, scenario: str, **kwargs: Any) -> "BackgroundDriver":
        stdout, stderr = log_dir / f"driver-{scenario}.out", log_dir / f"driver-{scenario}.err"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            process = subprocess.Popen(
                _driver_command(scenario, kwargs), stdout=out, stderr=err, text=True,
                env=python_client_env(node, key), cwd=HERE,
            )
        return cls(process, stdout, stderr)

    def result(self, timeout_s: float = DRIVER_TIMEOUT_S) -> Any:
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        done = subprocess.CompletedProcess(self.process.args, code, self.stdout.read_text(), self.stderr.read_text())
        return _last_json_line(done, "fleet_driver (background)")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- the bucket


def s3_client(s3_env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name=s3_env["AWS_DEFAULT_REGION"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )


def bucket_keys(s3_env: dict[str, str], bucket: str) -> list[str]:
    pages = s3_client(s3_env).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def delete_bucket(s3_env: dict[str, str], bucket: str) -> None:
    client = s3_client(s3_env)
    for key in bucket_keys(s3_env, bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)
