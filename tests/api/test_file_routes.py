"""Both clients' upload flows (fal-protocol.md §3), step by step as they send them, and file serving:
on local files, and on S3 (moto's real server) in both delivery modes (redirect, proxy)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.file_stores import S3_MIN_PART, aws_env, stored_objects

from .conftest import Api, make_api

BIG = b"f" * S3_MIN_PART  # S3 wants every part but the last to be at least 5 MiB


def _apis(request: pytest.FixtureRequest, backend: str, tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    if backend == "local":
        yield from make_api(tmp_path, **overrides)
        return
    server = request.getfixturevalue("s3_server")
    aws_env(server, request.getfixturevalue("monkeypatch"))
    delivery = backend.removeprefix("s3-")
    yield from make_api(tmp_path, storage_url=f"s3://{server.create_bucket()}/files", file_delivery=delivery, **overrides)


@pytest.fixture(params=["local", "s3-redirect", "s3-proxy"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    yield from _apis(request, request.param, tmp_path)


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _cdn_token(api: Api) -> dict:
    r = api.client.post("/rest/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}, headers=api.auth)
    assert r.status_code == 200
    return r.json()


def _fetch(api: Api, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict]:
    """GET as a client would: no credentials (file URLs are capabilities), following a redirect
    to the bucket."""
    r: Any = api.client.get(_path(url), headers=headers, follow_redirects=False)
    if r.status_code == 307:
        r = httpx.get(r.headers["location"], headers=headers)
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
    assert _fetch(api, url, {"Range": "bytes=6-10"})[:2] == (206, b"video")


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
    for number, chunk in [(2, b"-second"), (1, BIG)]:  # parallel uploads finish in any order
        r = api.client.put(f"{_path(access_url)}/multipart/{upload_id}/{number}", content=chunk, headers={**bearer, "Accept-Encoding": "identity"})
        assert r.status_code == 200
        parts.append({"partNumber": number, "etag": r.headers["etag"]})
    assert _fetch(api, access_url)[0] == 404  # not there until completed
    r = api.client.post(f"{_path(access_url)}/multipart/{upload_id}/complete", json={"parts": parts}, headers=bearer)
    assert r.status_code == 200
    code, content, _ = _fetch(api, access_url)
    assert (code, content) == (200, BIG + b"-second")
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
    for number, chunk in [(1, BIG), (2, BIG), (3, b"c")]:
        r = api.client.put(f"{_path(upload_url)}/{number}", content=chunk)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        responses.append(r.json())
    assert [p["partNumber"] for p in responses] == [1, 2, 3]
    r = api.client.post(f"{_path(upload_url)}/complete", json={"parts": responses}, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert _fetch(api, file_url)[:2] == (200, BIG + BIG + b"c")


def test_complete_with_wrong_etag_is_400(api: Api) -> None:
    r = api.client.post("/rest/storage/upload/initiate-multipart", json={"content_type": "text/plain"}, headers=api.auth)
    upload_url = r.json()["upload_url"]
    api.client.put(f"{_path(upload_url)}/1", content=b"x")
    r = api.client.post(f"{_path(upload_url)}/complete", json={"parts": [{"partNumber": 1, "etag": '"nope"'}]})
    assert r.status_code == 400 and "ETag" in r.json()["detail"]


@pytest.mark.parametrize("backend", ["local", "s3-redirect"])
def test_upload_size_limit_is_413(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    for api in _apis(request, backend, tmp_path, max_upload_bytes=1000):
        token = _cdn_token(api)
        r = api.client.post("/cdn/files/upload", content=b"x" * 1001, headers={"Authorization": f"Bearer {token['token']}"})
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        assert stored_objects(api.file_store) == []


def test_lifecycle_header_sets_file_expiry(api: Api) -> None:
    token = _cdn_token(api)
    lifecycle = json.dumps({"expiration_duration_seconds": 60})
    r = api.client.post(
        "/cdn/files/upload", content=b"x",
        headers={"Authorization": f"Bearer {token['token']}", "X-Fal-Object-Lifecycle": lifecycle, "X-Fal-Object-Lifecycle-Preference": lifecycle},
    )
    url = r.json()["access_url"]
    stored_token = urlsplit(url).path.split("/")[2]
    stored = api.file_store.get(stored_token)
    assert stored is not None and stored.expires_at is not None
    assert stored.expires_at - time.time() == pytest.approx(60, abs=5)
    # Without the header: the server's default retention.
    url = api.client.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {token['token']}"}).json()["access_url"]
    stored = api.file_store.get(urlsplit(url).path.split("/")[2])
    assert stored is not None and stored.expires_at is not None
    assert stored.expires_at - time.time() == pytest.approx(api.settings.file_retention_s, abs=5)


def test_expired_or_unknown_files_are_404_json(api: Api) -> None:
    stored = api.file_store.put(b"old", content_type="text/plain", file_name="o.txt", expires_at=time.time() - 1)
    r = api.client.get(f"/files/{stored.token}/o.txt")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert api.client.get("/files/not-a-real-token-at-all-xxxxx/x").status_code == 404
    assert api.client.head("/files/not-a-real-token-at-all-xxxxx/x").status_code == 404


# ---- S3: how files reach clients ------------------------------------------------------------------


def _upload(api: Api, content: bytes, content_type: str = "video/mp4", name: str = "v.mp4") -> str:
    r = api.client.post("/cdn/files/upload", content=content, headers={**api.auth, "Content-Type": content_type, "X-Fal-File-Name": name})
    assert r.status_code == 200, r.text
    return str(r.json()["access_url"])


@pytest.mark.parametrize("backend", ["s3-redirect"])
def test_redirect_mode_sends_clients_to_a_presigned_url(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    for api in _apis(request, backend, tmp_path, presigned_url_ttl_s=120):
        url = _upload(api, b"from the bucket")
        assert url.startswith("http://testserver/files/")  # the stable URL is the node's, not the bucket's
        for method in ("GET", "HEAD"):
            r = api.client.request(method, _path(url), follow_redirects=False)
            assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
        location = r.headers["location"]
        assert location.startswith(request.getfixturevalue("s3_server").endpoint_url)
        assert "X-Amz-Expires=120" in location
        direct = httpx.get(location)
        assert (direct.status_code, direct.content) == (200, b"from the bucket")
        assert direct.headers["content-type"] == "video/mp4"
        assert direct.headers["content-disposition"] == 'inline; filename="v.mp4"'


@pytest.mark.parametrize("backend", ["s3-proxy"])
def test_proxy_mode_relays_the_object(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB
    for api in _apis(request, backend, tmp_path):
        url = _upload(api, content)
        r = api.client.get(_path(url), follow_redirects=False)
        assert (r.status_code, r.content) == (200, content)
        assert r.headers["content-type"] == "video/mp4" and r.headers["content-length"] == str(len(content))
        assert r.headers["content-disposition"] == 'inline; filename="v.mp4"'
        head = api.client.head(_path(url))
        assert head.status_code == 200 and head.headers["content-length"] == str(len(content)) and head.content == b""
        part = api.client.get(_path(url), headers={"Range": "bytes=-4"})
        assert part.status_code == 206 and part.content == content[-4:]
        assert part.headers["content-range"] == f"bytes {len(content) - 4}-{len(content) - 1}/{len(content)}"
        assert api.client.get(_path(url), headers={"Range": f"bytes={len(content)}-"}).status_code == 416


def test_api_nodes_share_tokens_files_and_uploads(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two API nodes on different data dirs (no shared disk), one database, one bucket."""
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"  # the first node creates the tables
    server = request.getfixturevalue("s3_server")
    aws_env(server, request.getfixturevalue("monkeypatch"))
    fleet = {"database_url": database_url, "storage_url": f"s3://{server.create_bucket()}", "public_url": "https://media.example"}
    for node_a in make_api(tmp_path / "a", **fleet):
        for node_b in make_api(tmp_path / "b", **fleet):
            token = _cdn_token(node_a)  # issued by A, accepted by B
            bearer = {"Authorization": f"Bearer {token['token']}"}
            r = node_a.client.post("/cdn/files/upload/multipart", headers={**bearer, "X-Fal-File-Name": "big.bin"})
            access_url, upload_id = r.json()["access_url"], r.json()["uploadId"]
            e1 = node_a.client.put(f"{_path(access_url)}/multipart/{upload_id}/1", content=BIG, headers=bearer)
            e2 = node_b.client.put(f"{_path(access_url)}/multipart/{upload_id}/2", content=b"tail", headers=bearer)
            assert e1.status_code == e2.status_code == 200
            parts = [{"partNumber": 1, "etag": e1.headers["etag"]}, {"partNumber": 2, "etag": e2.headers["etag"]}]
            r = node_b.client.post(f"{_path(access_url)}/multipart/{upload_id}/complete", json={"parts": parts}, headers=bearer)
            assert r.status_code == 200 and r.json()["access_url"] == access_url
            for node in (node_a, node_b):
                assert _fetch(node, access_url)[:2] == (200, BIG + b"tail")
            r = node_b.client.post("/rest/storage/upload/initiate", json={"file_name": "one.txt"}, headers=node_b.auth)
            assert node_a.client.put(_path(r.json()["upload_url"]), content=b"single").status_code == 200
            assert _fetch(node_b, r.json()["file_url"])[:2] == (200, b"single")
