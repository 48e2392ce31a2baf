"""Helpers for tests of the file stores: look at what a backend holds (local folder or S3 bucket)."""

from __future__ import annotations

from typing import Any, Callable

from motionserve.migrations import upgrade
from motionserve.storage import FileStore
from motionserve.storage.local import LocalObjects
from motionserve.storage.s3 import S3Objects

MIB = 1024 * 1024
S3_MIN_PART = 5 * MIB  # S3's minimum for every part but the last

NodeFactory = Callable[..., FileStore]
"""`make_node(name="node1", **settings)`: the file store one node opens (tests/storage/conftest.py)."""


def create_tables(url: str) -> str:
    """The newest schema in the database at `url`, as a server's start brings it; returns `url`."""
    upgrade(url)
    return url


def aws_env(s3_server: Any, monkeypatch: Any) -> None:
    """Point boto3 (through the standard AWS variables) at the test S3 server, and only there."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def backend_of(files: FileStore) -> LocalObjects | S3Objects:
    backend = files.backend  # type: ignore[attr-defined]  # DatabaseFileStore's; not in the protocol
    assert isinstance(backend, (LocalObjects, S3Objects))
    return backend


def object_exists(files: FileStore, token: str) -> bool:
    """Whether the backend still holds bytes for `token` (a local file, or an S3 object)."""
    backend = backend_of(files)
    if isinstance(backend, LocalObjects):
        return backend.object_path(token).exists()
    answer = backend.client.list_objects_v2(Bucket=backend.bucket, Prefix=backend.key(token))
    return answer.get("KeyCount", 0) > 0


def stored_objects(files: FileStore) -> list[str]:
    """Every object the backend holds: local file names, or S3 keys."""
    backend = backend_of(files)
    if isinstance(backend, LocalObjects):
        return sorted(p.name for p in (backend.root / "objects").iterdir())
    answer = backend.client.list_objects_v2(Bucket=backend.bucket)
    return sorted(o["Key"] for o in answer.get("Contents", []))


def multipart_in_progress(files: FileStore) -> list[str]:
    """Uploads whose parts the backend keeps: local upload folders, or S3 multipart uploads (keys)."""
    backend = backend_of(files)
    if isinstance(backend, LocalObjects):
        return sorted(p.name for p in (backend.root / "uploads").iterdir())
    answer = backend.client.list_multipart_uploads(Bucket=backend.bucket)
    return sorted(u["Key"] for u in answer.get("Uploads", []))
