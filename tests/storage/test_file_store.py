"""The FileStore contract, on both backends (local files, and S3 on moto's real server).

What uploads, outputs, the file routes and the input fetcher rely on, whichever backend holds the
bytes: metadata in the database, atomic writes, unguessable tokens, safe names, size limit, expiry,
multipart uploads, and the sweep of expired files and abandoned uploads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from motionserve import database
from motionserve.storage import FileStore, FileStoreError, FileTooLargeError, UploadNotFoundError, safe_file_name
from motionserve.storage.store import PENDING_UPLOAD_TTL_S, STALE_TEMP_S
from tests.file_stores import S3_MIN_PART, NodeFactory, multipart_in_progress, object_exists, stored_objects

BIG = b"a" * S3_MIN_PART  # a non-last part S3 accepts


def read(files: FileStore, token: str) -> bytes | None:
    return files.read_bytes(token, max_bytes=1 << 30)


def test_put_bytes_then_get_and_read(files: FileStore) -> None:
    stored = files.put(b"hello", content_type="text/plain", file_name="greeting.txt")
    assert (stored.file_name, stored.content_type, stored.size, stored.kind) == ("greeting.txt", "text/plain", 5, "upload")
    assert files.get(stored.token) == stored
    assert read(files, stored.token) == b"hello"


def test_metadata_is_a_database_row(files: FileStore, database_url: str) -> None:
    stored = files.put(b"x", content_type="video/mp4", file_name="out.mp4", expires_at=time.time() + 60, kind="output")
    engine = database.make_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(select(database.files).where(database.files.c.token == stored.token)).one()
        reservations = conn.execute(select(database.uploads)).all()
    engine.dispose()
    assert (row.kind, row.size, row.content_type, row.expires_at) == ("output", 1, "video/mp4", stored.expires_at)
    assert reservations == []  # the write's reservation was swapped for the file row


def test_tokens_are_unguessable_and_distinct(files: FileStore) -> None:
    a = files.put(b"x", content_type="text/plain", file_name="a.txt")
    b = files.put(b"x", content_type="text/plain", file_name="a.txt")
    assert a.token != b.token and len(a.token) >= 32


def test_put_path_copies_and_move_takes_ownership(files: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "video.mp4"
    src.write_bytes(b"\x00" * 1000)
    copied = files.put(src, content_type="video/mp4", file_name="video.mp4")
    assert src.exists() and copied.size == 1000
    spool = files.temp_path()
    spool.write_bytes(b"abc")
    moved = files.put(spool, content_type="video/mp4", file_name="v.mp4", move=True)
    assert not spool.exists()
    assert read(files, moved.token) == b"abc"


def test_expired_files_are_invisible_then_deleted_with_their_bytes(files: FileStore) -> None:
    now = time.time()
    old = files.put(b"old", content_type="text/plain", file_name="o.txt", expires_at=now - 1)
    keep = files.put(b"new", content_type="text/plain", file_name="n.txt", expires_at=now + 3600)
    forever = files.put(b"f", content_type="text/plain", file_name="f.txt")
    assert files.get(old.token) is None and read(files, old.token) is None
    assert object_exists(files, old.token)  # invisible at once, bytes removed by the sweep
    assert files.delete_expired(now) == 1
    assert not object_exists(files, old.token)
    assert files.get(keep.token) is not None and files.get(forever.token) is not None
    assert files.delete_expired(now + 7200) == 1
    assert files.get(keep.token) is None and not object_exists(files, keep.token)
    assert files.get(forever.token) is not None and object_exists(files, forever.token)


def test_unknown_and_malformed_tokens(files: FileStore) -> None:
    assert files.get("../objects") is None and files.get("short") is None
    assert files.get("A" * 32) is None and read(files, "A" * 32) is None


def test_read_bytes_refuses_files_over_the_callers_limit(files: FileStore) -> None:
    stored = files.put(b"12345", content_type="text/plain", file_name="a.txt")
    assert files.read_bytes(stored.token, max_bytes=5) == b"12345"
    with pytest.raises(FileTooLargeError):
        files.read_bytes(stored.token, max_bytes=4)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../etc/passwd", "passwd"),
        ("my video (1).mp4", "my_video_1_.mp4"),
        ("C:\\Users\\x\\clip.webm", "clip.webm"),
        (".hidden", "hidden"),
        ("", "file"),
        (None, "file"),
        ("été.png", "ete.png"),
        ("a/..", "file"),
    ],
)
def test_file_names_are_made_safe(raw: str | None, safe: str) -> None:
    assert safe_file_name(raw) == safe


def test_long_names_keep_their_extension() -> None:
    name = safe_file_name("x" * 500 + ".mp4")
    assert name.endswith(".mp4") and len(name) <= 120


def test_stored_names_and_content_types_are_sanitised(files: FileStore) -> None:
    stored = files.put(b"x", content_type="x/" + "y" * 300, file_name="../../etc/passwd")
    assert stored.file_name == "passwd" and stored.content_type == "application/octet-stream"


def test_size_limit_on_files(make_node: NodeFactory) -> None:
    files = make_node(max_upload_bytes=10)
    with pytest.raises(FileTooLargeError):
        files.put(b"x" * 11, content_type="text/plain", file_name="a")
    spool = files.temp_path()
    spool.write_bytes(b"x" * 11)
    with pytest.raises(FileTooLargeError):
        files.put(spool, content_type="text/plain", file_name="a", move=True)
    assert not spool.exists()  # a refused move still cleans up its temp file
    assert stored_objects(files) == []


def test_file_url_and_token_round_trip(files: FileStore) -> None:
    stored = files.put(b"x", content_type="text/plain", file_name="a.txt")
    url = files.file_url("https://example.test:8443/", stored)
    assert url == f"https://example.test:8443/files/{stored.token}/a.txt"
    assert files.token_from_url(url, ["https://EXAMPLE.test:8443"]) == stored.token
    assert files.token_from_url(url, ["http://example.test:8443"]) is None
    assert files.token_from_url(url, ["https://other.test"]) is None
    prefixed = files.file_url("http://h/prefix", stored)
    assert files.token_from_url(prefixed, ["http://h/prefix/"]) == stored.token
    assert files.token_from_url("http://h/prefix/files/../x/a", ["http://h/prefix"]) is None


# ---- multipart -----------------------------------------------------------------------------------


def test_multipart_joins_parts_in_number_order(files: FileStore) -> None:
    pending = files.begin_multipart("video/mp4", "big.mp4", expires_at=None)
    assert files.pending(pending.upload_id) == pending and pending.file_name == "big.mp4"
    e2 = files.put_part(pending.upload_id, 2, b"world")
    e1 = files.put_part(pending.upload_id, 1, BIG)  # parallel clients finish in any order
    assert e1.startswith('"') and e1 != e2
    stored = files.complete_multipart(pending.upload_id, [(2, e2), (1, e1)])
    assert stored.token == pending.token  # the URL handed out at the start is the final one
    assert read(files, stored.token) == BIG + b"world"
    assert (stored.size, stored.content_type) == (len(BIG) + 5, "video/mp4")
    assert files.pending(pending.upload_id) is None
    with pytest.raises(UploadNotFoundError):
        files.put_part(pending.upload_id, 3, b"late")
    assert multipart_in_progress(files) == []


def test_multipart_retried_part_replaces_the_first_try(files: FileStore) -> None:
    pending = files.begin_multipart("text/plain", "a.txt")
    files.put_part(pending.upload_id, 1, b"broken")
    etag = files.put_part(pending.upload_id, 1, b"good")
    stored = files.complete_multipart(pending.upload_id, [(1, etag)])
    assert read(files, stored.token) == b"good"


def test_multipart_without_parts_list_uses_every_part(files: FileStore, tmp_path: Path) -> None:
    pending = files.begin_multipart("text/plain", "a.txt")
    spool = files.temp_path()
    spool.write_bytes(BIG)
    files.put_part(pending.upload_id, 1, spool, move=True)
    assert not spool.exists()
    files.put_part(pending.upload_id, 3, b"c")
    stored = files.complete_multipart(pending.upload_id)
    assert read(files, stored.token) == BIG + b"c"


def test_multipart_errors(files: FileStore) -> None:
    with pytest.raises(UploadNotFoundError):
        files.put_part("nosuchuploadnosuchupload", 1, b"x")
    with pytest.raises(UploadNotFoundError):
        files.complete_multipart("nosuchuploadnosuchupload")
    pending = files.begin_multipart("text/plain", "a.txt")
    with pytest.raises(FileStoreError, match="between 1 and"):
        files.put_part(pending.upload_id, 0, b"x")
    etag = files.put_part(pending.upload_id, 1, b"x")
    with pytest.raises(FileStoreError, match="not uploaded"):
        files.complete_multipart(pending.upload_id, [(1, etag), (2, etag)])
    with pytest.raises(FileStoreError, match="ETag"):
        files.complete_multipart(pending.upload_id, [(1, '"deadbeef"')])
    with pytest.raises(FileStoreError, match="No parts"):
        files.complete_multipart(pending.upload_id, [])
    assert files.pending(pending.upload_id) is not None  # a refused completion can be retried
    assert read(files, files.complete_multipart(pending.upload_id, [(1, etag)]).token) == b"x"


def test_size_limit_on_parts_and_multipart_totals(make_node: NodeFactory) -> None:
    files = make_node(max_upload_bytes=S3_MIN_PART + 10)
    pending = files.begin_multipart("text/plain", "a.txt")
    with pytest.raises(FileTooLargeError):
        files.put_part(pending.upload_id, 1, BIG + b"x" * 11)
    files.put_part(pending.upload_id, 1, BIG)
    files.put_part(pending.upload_id, 2, b"x" * 11)
    with pytest.raises(FileTooLargeError):
        files.complete_multipart(pending.upload_id)
    assert stored_objects(files) == []


def test_abandoned_uploads_are_swept(files: FileStore) -> None:
    now = time.time()
    expiring = files.begin_multipart("text/plain", "a.txt", expires_at=now + 60)
    files.put_part(expiring.upload_id, 1, b"x")
    forever = files.begin_multipart("text/plain", "b.txt")
    files.put_part(forever.upload_id, 1, b"y")
    assert files.delete_expired(now) == 0
    assert files.pending(expiring.upload_id) is not None and len(multipart_in_progress(files)) == 2
    files.delete_expired(now + 120)  # past the file's own expiry
    assert files.pending(expiring.upload_id) is None and files.pending(forever.upload_id) is not None
    assert len(multipart_in_progress(files)) == 1
    files.delete_expired(now + PENDING_UPLOAD_TTL_S + 1)  # nobody completes an upload after a day
    assert files.pending(forever.upload_id) is None
    assert multipart_in_progress(files) == []
    with pytest.raises(UploadNotFoundError):
        files.complete_multipart(forever.upload_id)


def test_stale_temp_files_are_swept(files: FileStore) -> None:
    stale, fresh = files.temp_path(), files.temp_path()
    stale.write_bytes(b"crashed upload")
    fresh.write_bytes(b"being received")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    files.delete_expired()
    assert not stale.exists() and fresh.exists()


def test_two_stores_on_one_database_share_files_and_uploads(make_node: NodeFactory, storage_url: str | None) -> None:
    """Like the API process and a worker: either one writes, the other reads. (On S3 the nodes use
    different data dirs, i.e. different machines; the local backend needs one shared folder.)"""
    api = make_node("node1")
    worker = make_node("node2" if storage_url else "node1")
    output = worker.put(b"result", content_type="video/mp4", file_name="out.mp4", kind="output")
    assert api.get(output.token) == output and read(api, output.token) == b"result"
    pending = api.begin_multipart("text/plain", "up.txt")
    assert worker.pending(pending.upload_id) == pending
    e1 = api.put_part(pending.upload_id, 1, BIG)
    e2 = worker.put_part(pending.upload_id, 2, b"tail")
    stored = worker.complete_multipart(pending.upload_id, [(1, e1), (2, e2)])
    assert read(api, stored.token) == BIG + b"tail"
