"""Both clients' upload flows (fal-protocol.md §3), step by step as they send them, and file serving."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import Api, make_api


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _cdn_token(api: Api) -> dict:
    r = api.client.post("/rest/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}, headers=api.auth)
    assert r.status_code == 200
    return r.json()


def _fetch(api: Api, url: str) -> tuple[int, bytes, dict]:
    r = api.client.get(_path(url))  # no credentials: file URLs are capabilities
    return r.status_code, r.content, dict(r.headers)


def test_cdn_token_is_bearer_with_offset_expiry(api: Api) -> None:
    token = _cdn_token(api)
    assert token["token_type"] == "Bearer" and token["base_url"] == "http://testserver/cdn"
    expires = datetime.fromisoformat(token["expires_at"])  # what fal_client does with it
    assert expires > datetime.now(timezone.utc)


def test_python_single_upload_then_serve_without_key(api: Api) -> None:
    token = _cdn_token(api)
    r = api.client.post(
        "/cdn/files/upload",
        content=b"hello video",
        headers={"Authorization": f"Bearer {token['token']}", "Content-Type": "video/mp4", "X-Fal-File-Name": "clip one.mp4"},
    )
    assert r.status_code == 200
    url = r.json()["access_url"]
    assert url.startswith("http://testserver/files/") and url.endswith("/clip_one.mp4")
    code, content, headers = _fetch(api, url)
    assert (code, content) == (200, b"hello video")
    assert headers["content-type"] == "video/mp4" and headers["content-length"] == "11"
    assert headers["accept-ranges"] == "bytes"
    r = api.client.get(_path(url), headers={"Range": "bytes=6-10"})
    assert r.status_code == 206 and r.content == b"video"


def test_upload_requires_a_valid_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer forged.token"}, {"Authorization": "Bearer "}):
        r = api.client.post("/cdn/files/upload", content=b"x", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    assert api.client.post("/rest/storage/auth/token", json={}).status_code == 401
    # An API key works too (e.g. curl), without the token dance.
    assert api.client.post("/cdn/files/upload", content=b"x", headers=api.auth).status_code == 200


def test_python_multipart_upload(api: Api) -> None:
    token = _cdn_token(api)
    bearer = {"Authorization": f"Bearer {token['token']}"}
    r = api.client.post(
        f"{_path(token['base_url'])}/files/upload/multipart",
        headers={**bearer, "Content-Type": "application/octet-stream", "X-Fal-File-Name": "big.bin", "Accept": "application/json"},
    )
    assert r.status_code == 200
    access_url, upload_id = r.json()["access_url"], r.json()["uploadId"]
    parts = []
    for number, chunk in [(2, b"-second"), (1, b"first")]:  # parallel uploads finish in any order
        r = api.client.put(f"{_path(access_url)}/multipart/{upload_id}/{number}", content=chunk, headers={**bearer, "Accept-Encoding": "identity"})
        assert r.status_code == 200
        parts.append({"partNumber": number, "etag": r.headers["etag"]})
    assert _fetch(api, access_url)[0] == 404  # not there until completed
    r = api.client.post(f"{_path(access_url)}/multipart/{upload_id}/complete", json={"parts": parts}, headers=bearer)
    assert r.status_code == 200
    code, content, _ = _fetch(api, access_url)
    assert (code, content) == (200, b"first-second")
    r = api.client.put(f"{_path(access_url)}/multipart/{upload_id}/3", content=b"late", headers=bearer)
    assert r.status_code == 404  # completed uploads take no more parts


@pytest.mark.parametrize("storage_type", ["fal-cdn-v3", "gcs"])
def test_initiate_then_put_upload_url(api: Api, storage_type: str) -> None:
    r = api.client.post(
        "/rest/storage/upload/initiate",
        params={"storage_type": storage_type},
        json={"content_type": "image/png", "file_name": "pic.png"},
        headers=api.auth,
    )
    assert r.status_code == 200
    upload_url, file_url = r.json()["upload_url"], r.json()["file_url"]
    r = api.client.put(_path(upload_url), content=b"\x89PNG", headers={"Content-Type": "image/png"})  # no auth
    assert r.status_code == 200
    code, content, headers = _fetch(api, file_url)
    assert (code, content, headers["content-type"]) == (200, b"\x89PNG", "image/png")
    assert api.client.put(_path(upload_url), content=b"again").status_code == 404  # one-time URL


def test_js_multipart_upload(api: Api) -> None:
    r = api.client.post(
        "/rest/storage/upload/initiate-multipart",
        params={"storage_type": "fal-cdn-v3"},
        json={"content_type": "video/mp4", "file_name": "1700000000.mp4"},
        headers=api.auth,
    )
    upload_url, file_url = r.json()["upload_url"], r.json()["file_url"]
    responses = []
    for number, chunk in [(1, b"aaa"), (2, b"bbb"), (3, b"c")]:
        r = api.client.put(f"{_path(upload_url)}/{number}", content=chunk)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        responses.append(r.json())
    assert [p["partNumber"] for p in responses] == [1, 2, 3]
    r = api.client.post(f"{_path(upload_url)}/complete", json={"parts": responses}, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert _fetch(api, file_url)[:2] == (200, b"aaabbbc")


def test_complete_with_wrong_etag_is_400(api: Api) -> None:
    r = api.client.post("/rest/storage/upload/initiate-multipart", json={"content_type": "text/plain"}, headers=api.auth)
    upload_url = r.json()["upload_url"]
    api.client.put(f"{_path(upload_url)}/1", content=b"x")
    r = api.client.post(f"{_path(upload_url)}/complete", json={"parts": [{"partNumber": 1, "etag": '"nope"'}]})
    assert r.status_code == 400 and "ETag" in r.json()["detail"]


def test_upload_size_limit_is_413(tmp_path: Path) -> None:
    for api in make_api(tmp_path, max_upload_bytes=1000):
        token = _cdn_token(api)
        r = api.client.post("/cdn/files/upload", content=b"x" * 1001, headers={"Authorization": f"Bearer {token['token']}"})
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        assert list((api.settings.files_dir / "objects").iterdir()) == []


def test_lifecycle_header_sets_file_expiry(api: Api) -> None:
    token = _cdn_token(api)
    lifecycle = json.dumps({"expiration_duration_seconds": 60})
    r = api.client.post(
        "/cdn/files/upload", content=b"x",
        headers={"Authorization": f"Bearer {token['token']}", "X-Fal-Object-Lifecycle": lifecycle, "X-Fal-Object-Lifecycle-Preference": lifecycle},
    )
    url = r.json()["access_url"]
    stored_token = urlsplit(url).path.split("/")[2]
    _, stored = api.file_store.get(stored_token)  # type: ignore[misc]
    assert stored.expires_at is not None and stored.expires_at - time.time() == pytest.approx(60, abs=5)
    # Without the header: the server's default retention.
    url = api.client.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {token['token']}"}).json()["access_url"]
    _, stored = api.file_store.get(urlsplit(url).path.split("/")[2])  # type: ignore[misc]
    assert stored.expires_at - time.time() == pytest.approx(api.settings.file_retention_s, abs=5)  # type: ignore[operator]


def test_expired_or_unknown_files_are_404_json(api: Api) -> None:
    stored = api.file_store.put(b"old", content_type="text/plain", file_name="o.txt", expires_at=time.time() - 1)
    r = api.client.get(f"/files/{stored.token}/o.txt")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert api.client.get("/files/not-a-real-token-at-all-xxxxx/x").status_code == 404
