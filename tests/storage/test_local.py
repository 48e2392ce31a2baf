"""LocalFileStore: what uploads, outputs and the file route rely on."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from motionserve.storage.local import (
    FileStoreError,
    FileTooLargeError,
    LocalFileStore,
    safe_file_name,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalFileStore:
    return LocalFileStore(tmp_path / "files")


def test_put_bytes_then_get_returns_content_and_metadata(store: LocalFileStore) -> None:
    stored = store.put(b"hello", content_type="text/plain", file_name="greeting.txt")
    found = store.get(stored.token)
    assert found is not None
    path, meta = found
    assert path.read_bytes() == b"hello"
    assert (meta.file_name, meta.content_type, meta.size) == ("greeting.txt", "text/plain", 5)
    assert meta == stored


def test_tokens_are_unguessable_and_distinct(store: LocalFileStore) -> None:
    a = store.put(b"x", content_type="text/plain", file_name="a.txt")
    b = store.put(b"x", content_type="text/plain", file_name="a.txt")
    assert a.token != b.token
    assert len(a.token) >= 32


def test_put_path_copies_and_move_takes_ownership(store: LocalFileStore, tmp_path: Path) -> None:
    src = tmp_path / "video.mp4"
    src.write_bytes(b"\x00" * 1000)
    copied = store.put(src, content_type="video/mp4", file_name="video.mp4")
    assert src.exists() and copied.size == 1000
    spool = store.temp_path()
    spool.write_bytes(b"abc")
    moved = store.put(spool, content_type="video/mp4", file_name="v.mp4", move=True)
    assert not spool.exists()
    assert store.get(moved.token)[0].read_bytes() == b"abc"  # type: ignore[index]


def test_expired_files_are_invisible_and_deleted(store: LocalFileStore) -> None:
    now = time.time()
    old = store.put(b"old", content_type="text/plain", file_name="o.txt", expires_at=now - 1)
    keep = store.put(b"new", content_type="text/plain", file_name="n.txt", expires_at=now + 3600)
    forever = store.put(b"f", content_type="text/plain", file_name="f.txt")
    assert store.get(old.token) is None
    assert store.get(keep.token) is not None
    assert store.delete_expired(now) == 1
    assert not (store.root / "objects" / old.token).exists()
    assert store.get(keep.token) is not None and store.get(forever.token) is not None
    assert store.delete_expired(now + 7200) == 1
    assert store.get(keep.token) is None and store.get(forever.token) is not None


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


def test_get_rejects_malformed_tokens(store: LocalFileStore) -> None:
    assert store.get("../objects") is None
    assert store.get("short") is None


def test_multipart_joins_parts_in_number_order(store: LocalFileStore) -> None:
    upload_id = store.begin_multipart("video/mp4", "big.mp4", expires_at=None)
    pending = store.pending(upload_id)
    assert pending is not None and pending.file_name == "big.mp4"
    e2 = store.put_part(upload_id, 2, b"world")
    e1 = store.put_part(upload_id, 1, io.BytesIO(b"hello "))
    assert e1.startswith('"') and e1 != e2
    stored = store.complete_multipart(upload_id, [(2, e2), (1, e1)])
    assert stored.token == pending.token  # the URL handed out at the start is the final one
    assert store.get(stored.token)[0].read_bytes() == b"hello world"  # type: ignore[index]
    assert stored.size == 11 and stored.content_type == "video/mp4"
    assert store.pending(upload_id) is None


def test_multipart_retried_part_replaces_the_first_try(store: LocalFileStore) -> None:
    upload_id = store.begin_multipart("text/plain", "a.txt")
    store.put_part(upload_id, 1, b"broken")
    etag = store.put_part(upload_id, 1, b"good")
    stored = store.complete_multipart(upload_id, [(1, etag)])
    assert store.get(stored.token)[0].read_bytes() == b"good"  # type: ignore[index]


def test_multipart_without_parts_list_uses_every_part(store: LocalFileStore) -> None:
    upload_id = store.begin_multipart("text/plain", "a.txt")
    store.put_part(upload_id, 1, b"a")
    store.put_part(upload_id, 3, b"c")
    stored = store.complete_multipart(upload_id)
    assert store.get(stored.token)[0].read_bytes() == b"ac"  # type: ignore[index]


def test_multipart_errors(store: LocalFileStore) -> None:
    with pytest.raises(FileStoreError):
        store.put_part("nosuchuploadnosuchupload", 1, b"x")
    upload_id = store.begin_multipart("text/plain", "a.txt")
    with pytest.raises(FileStoreError):
        store.put_part(upload_id, 0, b"x")
    etag = store.put_part(upload_id, 1, b"x")
    with pytest.raises(FileStoreError, match="not uploaded"):
        store.complete_multipart(upload_id, [(1, etag), (2, etag)])
    with pytest.raises(FileStoreError, match="ETag"):
        store.complete_multipart(upload_id, [(1, '"deadbeef"')])
    with pytest.raises(FileStoreError):
        store.complete_multipart(upload_id, [])


def test_size_limit_applies_to_files_and_multipart_totals(tmp_path: Path) -> None:
    store = LocalFileStore(tmp_path, max_bytes=10)
    with pytest.raises(FileTooLargeError):
        store.put(b"x" * 11, content_type="text/plain", file_name="a")
    upload_id = store.begin_multipart("text/plain", "a.txt")
    store.put_part(upload_id, 1, b"x" * 6)
    store.put_part(upload_id, 2, b"x" * 6)
    with pytest.raises(FileTooLargeError):
        store.complete_multipart(upload_id)
    assert list((tmp_path / "objects").iterdir()) == []


def test_abandoned_uploads_are_swept(store: LocalFileStore) -> None:
    upload_id = store.begin_multipart("text/plain", "a.txt", expires_at=time.time() + 60)
    store.put_part(upload_id, 1, b"x")
    store.delete_expired(time.time())
    assert store.pending(upload_id) is not None
    store.delete_expired(time.time() + 120)
    assert store.pending(upload_id) is None


def test_sidecar_is_json_metadata(store: LocalFileStore) -> None:
    stored = store.put(b"x", content_type="image/png", file_name="p.png", expires_at=123.0 + time.time())
    meta = json.loads((store.root / "objects" / f"{stored.token}.json").read_text())
    assert meta["content_type"] == "image/png" and meta["token"] == stored.token


def test_file_url_and_token_round_trip(store: LocalFileStore) -> None:
    stored = store.put(b"x", content_type="text/plain", file_name="a.txt")
    url = store.file_url("https://example.test:8443/", stored)
    assert url == f"https://example.test:8443/files/{stored.token}/a.txt"
    assert store.token_from_url(url, ["https://EXAMPLE.test:8443"]) == stored.token
    assert store.token_from_url(url, ["http://example.test:8443"]) is None
    assert store.token_from_url(url, ["https://other.test"]) is None
    prefixed = store.file_url("http://h/prefix", stored)
    assert store.token_from_url(prefixed, ["http://h/prefix/"]) == stored.token
    assert store.token_from_url("http://h/prefix/files/../x/a", ["http://h/prefix"]) is None
