"""The local backend: zero-config files under Settings.files_dir, served straight from disk."""

from __future__ import annotations

from pathlib import Path

from motionserve.config import Settings
from motionserve.storage import open_file_store
from motionserve.storage.types import ServeFile
from tests.file_stores import create_tables


def test_default_settings_keep_bytes_under_files_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)  # no storage_url: the embedded default
    create_tables(settings.resolved_database_url)
    files = open_file_store(settings)
    try:
        stored = files.put(b"clip", content_type="video/mp4", file_name="c.mp4")
        delivery = files.delivery(stored)
        assert isinstance(delivery, ServeFile)
        assert delivery.path == settings.files_dir / "objects" / stored.token
        assert delivery.path.read_bytes() == b"clip"
        pending = files.begin_multipart("text/plain", "a.txt")
        files.put_part(pending.upload_id, 1, b"part")
        assert (settings.files_dir / "uploads" / pending.upload_id / "part-00001").read_bytes() == b"part"
    finally:
        files.close()
