"""An install upgraded from the release that kept file metadata in JSON sidecars keeps its files."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from motionserve.config import Settings
from motionserve.storage import open_file_store
from tests.file_stores import create_tables


def _old_release_file(objects: Path, data: bytes, **meta: object) -> str:
    token = secrets.token_urlsafe(24)
    (objects / token).write_bytes(data)
    sidecar = {"token": token, "file_name": "clip.mp4", "content_type": "video/mp4", "size": len(data),
               "created_at": time.time() - 60, "expires_at": time.time() + 3600, **meta}
    (objects / f"{token}.json").write_text(json.dumps(sidecar))
    return token


def test_sidecar_files_are_adopted_into_the_catalog_at_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    create_tables(settings.resolved_database_url)
    objects = settings.files_dir / "objects"
    objects.mkdir(parents=True)
    kept = _old_release_file(objects, b"an old output")
    expired = _old_release_file(objects, b"old and expired", expires_at=time.time() - 1)
    (objects / "not-a-sidecar.json").write_text("{broken")

    files = open_file_store(settings)
    try:
        stored = files.get(kept)
        assert stored is not None and stored.file_name == "clip.mp4" and stored.content_type == "video/mp4"
        assert files.read_bytes(kept, max_bytes=1024) == b"an old output"
        assert files.get(expired) is None  # adopted, and expired as before
        assert files.delete_expired() >= 1 and not (objects / expired).exists()
        assert not (objects / f"{kept}.json").exists()  # adopted once: the sidecar is gone
        assert (objects / "not-a-sidecar.json").exists()  # unreadable: left for the operator
    finally:
        files.close()
    again = open_file_store(settings)  # a second start finds nothing more to adopt
    try:
        assert again.read_bytes(kept, max_bytes=1024) == b"an old output"
    finally:
        again.close()
