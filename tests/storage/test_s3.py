"""The S3 backend against moto's real server: where bytes go, S3's own multipart uploads, serving,
fleets of nodes sharing one database and bucket, and one clear line for every bad setting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from motionserve import database
from motionserve.config import Settings
from motionserve.storage import FileStoreError, StorageConfigError, open_file_store
from motionserve.storage.s3 import S3Objects
from motionserve.storage.types import ServeRedirect, ServeStream
from tests.file_stores import S3_MIN_PART, backend_of, create_tables
from tests.services import free_port, unavailable

pytestmark = pytest.mark.usefixtures("s3_env")


@pytest.fixture
def bucket(s3_env: Any) -> str:
    return s3_env.create_bucket()


def open_s3(tmp_path: Path, database_url: str, storage_url: str, **overrides: Any) -> Any:
    return open_file_store(Settings(data_dir=tmp_path, database_url=database_url, storage_url=storage_url, **overrides))


@pytest.fixture
def s3_files(tmp_path: Path, database_url: str, bucket: str) -> Iterator[Any]:
    files = open_s3(tmp_path / "node", database_url, f"s3://{bucket}/media")
    yield files
    files.close()


def s3(files: Any) -> S3Objects:
    backend = backend_of(files)
    assert isinstance(backend, S3Objects)
    return backend


def test_objects_are_keyed_under_the_prefix_with_their_content_type(s3_files: Any, bucket: str) -> None:
    stored = s3_files.put(b"clip", content_type="video/mp4", file_name="c.mp4")
    head = s3(s3_files).client.head_object(Bucket=bucket, Key=f"media/{stored.token}")
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == 4


def test_multipart_uses_s3s_own_uploads_and_etags(s3_files: Any, bucket: str, database_url: str, tmp_path: Path) -> None:
    pending = s3_files.begin_multipart("video/mp4", "big.mp4")
    engine = database.make_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(select(database.uploads).where(database.uploads.c.upload_id == pending.upload_id)).one()
    engine.dispose()
    assert row.backend_upload_id == pending.backend_upload_id is not None
    etag = s3_files.put_part(pending.upload_id, 1, b"p" * S3_MIN_PART)
    listed = s3(s3_files).client.list_parts(Bucket=bucket, Key=f"media/{pending.token}", UploadId=row.backend_upload_id)
    assert [p["ETag"] for p in listed["Parts"]] == [etag]  # the client gets S3's ETag
    assert list((tmp_path / "node" / "files").rglob("part-*")) == []  # no parts on this node's disk


def test_small_non_last_parts_are_refused_with_a_clear_message(s3_files: Any) -> None:
    pending = s3_files.begin_multipart("text/plain", "a.txt")
    parts = [(n, s3_files.put_part(pending.upload_id, n, b"tiny")) for n in (1, 2)]
    with pytest.raises(FileStoreError, match="at least 5 MiB"):
        s3_files.complete_multipart(pending.upload_id, parts)


def test_redirect_delivery_presigns_no_longer_than_the_file_lives(tmp_path: Path, database_url: str, bucket: str) -> None:
    files = open_s3(tmp_path, database_url, f"s3://{bucket}", presigned_url_ttl_s=600)
    now = time.time()
    soon = files.put(b"soon gone", content_type="text/plain", file_name="s.txt", expires_at=now + 30)
    later = files.put(b"stays", content_type="text/plain", file_name="l.txt", expires_at=now + 86400)
    redirects = [files.delivery(f, now=now) for f in (soon, later)]
    assert all(isinstance(r, ServeRedirect) for r in redirects)
    lifetimes = [int(parse_qs(urlsplit(r.url).query)["X-Amz-Expires"][0]) for r in redirects]  # type: ignore[union-attr]
    assert lifetimes == [30, 600]
    answer = httpx.get(redirects[0].url)  # type: ignore[union-attr]
    assert answer.status_code == 200 and answer.content == b"soon gone"
    assert answer.headers["content-type"] == "text/plain"
    assert answer.headers["content-disposition"] == 'inline; filename="s.txt"'
    files.close()


def test_proxy_delivery_streams_byte_ranges(tmp_path: Path, database_url: str, bucket: str) -> None:
    files = open_s3(tmp_path, database_url, f"s3://{bucket}", file_delivery="proxy")
    stored = files.put(bytes(range(256)) * 8192, content_type="video/mp4", file_name="v.mp4")  # 2 MiB
    stream = files.delivery(stored)
    assert isinstance(stream, ServeStream)
    assert b"".join(stream.open(0, stored.size - 1)) == bytes(range(256)) * 8192
    assert b"".join(stream.open(10, 13)) == bytes([10, 11, 12, 13])
    files.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_nodes_on_different_machines_share_files_and_uploads(
    tmp_path: Path, database: str, database_url: str, bucket: str, request: pytest.FixtureRequest
) -> None:
    """Two nodes with their own data dirs (no shared disk), one database, one bucket."""
    url = database_url if database == "sqlite" else create_tables(request.getfixturevalue("postgres_url"))
    node_a = open_s3(tmp_path / "a", url, f"s3://{bucket}/fleet")
    node_b = open_s3(tmp_path / "b", url, f"s3://{bucket}/fleet")
    try:
        output = node_b.put(b"made on a worker", content_type="video/mp4", file_name="out.mp4", kind="output")
        assert node_a.read_bytes(output.token, 1000) == b"made on a worker"
        pending = node_a.begin_multipart("video/mp4", "in.mp4")
        e1 = node_a.put_part(pending.upload_id, 1, b"1" * S3_MIN_PART)
        e2 = node_b.put_part(pending.upload_id, 2, b"2")
        stored = node_b.complete_multipart(pending.upload_id, [(1, e1), (2, e2)])
        assert node_a.read_bytes(stored.token, 2 * S3_MIN_PART) == b"1" * S3_MIN_PART + b"2"
        assert node_a.get(stored.token) == stored
        node_a.put(b"old", content_type="text/plain", file_name="o.txt", expires_at=time.time() - 1)
        assert node_b.delete_expired() == 1  # any node sweeps for all
    finally:
        node_a.close()
        node_b.close()


# ---- bad settings: one line at start ------------------------------------------------------------


def config_error(tmp_path: Path, database_url: str, storage_url: str) -> str:
    with pytest.raises(StorageConfigError) as info:
        open_s3(tmp_path, database_url, storage_url)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_missing_bucket_is_named(tmp_path: Path, database_url: str) -> None:
    assert config_error(tmp_path, database_url, "s3://no-such-bucket/x") == "cannot use s3://no-such-bucket/x: the bucket does not exist"


def test_an_unreachable_endpoint_is_named(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    message = config_error(tmp_path, database_url, "s3://media")
    assert message == f"cannot use s3://media: cannot connect to {endpoint} (check AWS_ENDPOINT_URL)"


@pytest.mark.parametrize("url", ["s3://", "gs://bucket", "bucket"])
def test_malformed_storage_urls(tmp_path: Path, database_url: str, url: str) -> None:
    assert config_error(tmp_path, database_url, url).startswith(f"cannot use {url}: ")


@pytest.fixture(scope="module")
def s3_server_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second moto server that checks credentials (only keys it issued are accepted)."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto-auth") / "moto.log", "wb")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    unavailable("the S3 server (moto) with authentication did not start")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_wrong_credentials_are_named(tmp_path: Path, database_url: str, s3_server_with_auth: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server_with_auth)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    message = config_error(tmp_path, database_url, "s3://media")
    assert message == (
        "cannot use s3://media: access denied "
        "(check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may use this bucket)"
    )


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_stop_at_start_with_the_line(tmp_path: Path, command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONSERVE_")}  # s3_env's AWS_* stay
    out = subprocess.run(
        [sys.executable, "-m", "motionserve", command, "--data-dir", str(tmp_path), "--storage-url", "s3://no-such-bucket"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == "motionserve: cannot use s3://no-such-bucket: the bucket does not exist"
