"""The real services some tests need: PostgreSQL (a fresh database per use) and an S3 server (moto).

Without them those tests skip, except when `MOTIONSERVE_REQUIRE_SERVICES=1` (CI sets it): then a
missing service is an error, so CI can never pass by skipping the fleet tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

POSTGRES_ADMIN_URL = os.environ.get("MOTIONSERVE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
S3_REGION = "us-east-1"


def services_required() -> bool:
    return os.environ.get("MOTIONSERVE_REQUIRE_SERVICES", "").strip().lower() in ("1", "true", "yes")


def unavailable(what: str) -> None:
    """Skip the test, or fail it when CI requires the services."""
    if services_required():
        pytest.fail(f"{what} (MOTIONSERVE_REQUIRE_SERVICES=1: a missing service fails the run)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_postgres_database(prefix: str = "t") -> Iterator[str]:
    """A new, empty PostgreSQL database for the duration; its URL. Dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # driver missing, server down, auth...
        admin.dispose()
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        """The standard AWS variables a motionserve process (or boto3) needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": S3_REGION,
        }

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"b-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=S3_REGION,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)
        return name


@contextmanager
def running_s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto's standalone S3 server on a free loopback port."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = open(log_dir / f"moto-{port}.log", "wb")
    process = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    unavailable(f"the S3 server (moto) did not start; see {log.name}")
                time.sleep(0.1)
        yield S3Server(url, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
