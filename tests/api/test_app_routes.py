"""Auth, JSON errors from every layer, OpenAPI documents, docs and health."""

from __future__ import annotations

from typing import Any

from pathlib import Path

import pytest

from motionserve.jobs.models import WorkerRecord

from motionserve.api.deps import parse_key_header
from motionserve.api.openapi import component_name

from .conftest import Api


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Key"},
        {"Authorization": "Key no-colon"},
        {"Authorization": "Basic abc:def"},
        {"Authorization": "Key unknown-id:secret"},
    ],
)
def test_missing_or_wrong_credentials_are_401_json(api: Api, headers: dict[str, str]) -> None:
    r = api.client.post("/queue/test-owner/echo", json={"prompt": "x"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["detail"], str)


def test_wrong_secret_and_revoked_key_are_401(api: Api) -> None:
    key_id, _ = api.key.split(":", 1)
    r = api.client.post("/queue/test-owner/echo", json={"prompt": "x"}, headers={"Authorization": f"Key {key_id}:wrong"})
    assert r.status_code == 401
    api.store.revoke_key(key_id)
    assert api.client.post("/queue/test-owner/echo", json={"prompt": "x"}, headers=api.auth).status_code == 401


def test_every_request_route_needs_a_key(api: Api) -> None:
    rid = api.submit()["request_id"]
    for method, path in [
        ("GET", f"/queue/test-owner/echo/requests/{rid}/status"),
        ("GET", f"/queue/test-owner/echo/requests/{rid}/status/stream"),
        ("GET", f"/queue/test-owner/echo/requests/{rid}"),
        ("PUT", f"/queue/test-owner/echo/requests/{rid}/cancel"),
        ("POST", "/run/test-owner/echo"),
        ("POST", "/rest/storage/upload/initiate"),
    ]:
        assert api.client.request(method, path).status_code == 401, path


def test_bearer_scheme_with_a_key_is_accepted(api: Api) -> None:
    r = api.client.post("/queue/test-owner/echo", json={"prompt": "x"}, headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code == 200


def test_parse_key_header() -> None:
    assert parse_key_header("Key abc:def:ghi") == ("abc", "def:ghi")
    assert parse_key_header("key  abc:def") == ("abc", "def")
    assert parse_key_header("Key :def") is None
    assert parse_key_header(None) is None


def test_starlette_404_and_405_are_json(api: Api) -> None:
    r = api.client.get("/no/such/route")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "Path /no/such/route not found"}
    r = api.client.delete("/queue/test-owner/echo", headers=api.auth)
    assert r.status_code == 405 and r.headers["content-type"] == "application/json"


def test_unhandled_errors_are_500_json(api: Api) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    api.client.app.add_api_route("/broken", broken)  # type: ignore[attr-defined]
    r = api.client.get("/broken")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["detail"] == "Internal Server Error"


def test_component_names_follow_fal() -> None:
    assert component_name("fal-ai/fast-animatediff/text-to-video", "Input") == "FastAnimatediffTextToVideoInput"
    assert component_name("fal-ai/animatediff-v2v/turbo", "Output") == "AnimatediffV2vTurboOutput"
    assert component_name("fal-ai/fast-svd-lcm", "Input") == "FastSvdLcmInput"


@pytest.mark.parametrize("path", ["/openapi/test-owner/echo/slow.json", "/queue/test-owner/echo/slow/openapi.json"])
def test_per_endpoint_openapi_document(api: Api, path: str) -> None:
    r = api.client.get(path)
    assert r.status_code == 200
    doc = r.json()
    schemas = doc["components"]["schemas"]
    assert doc["info"]["x-fal-metadata"] == {"endpointId": "test-owner/echo/slow"}
    assert doc["servers"] == [{"url": "http://testserver/queue"}]
    inp = schemas["EchoSlowInput"]
    assert inp["required"] == ["prompt"] and inp["properties"]["num_frames"]["default"] == 16
    # The model allows 64; this server's max_frames (32) is what the document says it accepts.
    assert inp["properties"]["num_frames"]["maximum"] == 32
    assert "File" in schemas and "EchoSlowOutput" in schemas
    post = doc["paths"]["/test-owner/echo/slow"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EchoSlowInput"}
    assert "/test-owner/echo/requests/{request_id}/status" in doc["paths"]  # lookups without the subpath
    assert api.client.get("/openapi/test-owner/missing.json").status_code == 404


def test_app_openapi_shows_each_endpoint_input_and_docs_page(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    body = doc["paths"]["/queue/test-owner/echo"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = body["$ref"].rsplit("/", 1)[1]
    assert doc["components"]["schemas"][name]["properties"]["prompt"]["type"] == "string"
    assert "/run/test-owner/echo/slow" in doc["paths"]
    assert "/queue/{endpoint_id}" not in doc["paths"]  # the catch-all routes are replaced by concrete ones
    docs = api.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_health(api: Api) -> None:
    r = api.client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["endpoints"] == ["test-owner/echo", "test-owner/echo/slow"]


def test_health_is_503_when_the_store_is_unreachable(api: Api) -> None:
    def unreachable(seen_within_s: float) -> list[Any]:
        raise OSError('connection to server at "db.internal" (10.0.0.7), port 5432 failed')

    api.store.live_workers = unreachable  # type: ignore[method-assign]
    r = api.client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unhealthy"
    assert "store unreachable" in r.json()["detail"]
    # /health needs no key: where the database lives stays in the server's log.
    assert "10.0.0.7" not in r.text and "db.internal" not in r.text


def _worker(worker_id: str, host: str, state: str = "idle", current_job: str | None = None) -> WorkerRecord:
    return WorkerRecord(id=worker_id, host=host, pid=1, device="cuda:0", version="0.1.0", state=state,
                        warm=("fal-ai/fast-svd-lcm",), current_job=current_job)


def test_health_and_workers_show_every_live_worker_of_the_fleet(api: Api) -> None:
    # Workers of other machines only meet the API in the store's registry.
    api.store.worker_seen(_worker("gpu-a:1:cuda:0", "gpu-a", "busy", current_job="r-1"))
    api.store.worker_seen(_worker("gpu-b:7:cuda:0", "gpu-b"))
    api.store.worker_seen(_worker("gpu-c:9:cuda:0", "gpu-c"))
    api.store.worker_stopped("gpu-c:9:cuda:0")

    health = api.client.get("/health").json()
    assert [(w["host"], w["state"]) for w in health["workers"]] == [("gpu-a", "busy"), ("gpu-b", "idle")]
    assert "current_job" not in health["workers"][0]  # /health is public: no request ids there

    assert api.client.get("/workers").status_code == 401
    assert api.client.get("/workers", headers=api.auth).status_code == 403  # a user key
    key_id, secret = api.store.create_key("ops", admin=True)
    listed = api.client.get("/workers", headers={"Authorization": f"Key {key_id}:{secret}"})
    assert listed.status_code == 200
    (busy, idle) = listed.json()["workers"]
    assert busy["id"] == "gpu-a:1:cuda:0" and busy["current_job"] == "r-1" and busy["warm"] == ["fal-ai/fast-svd-lcm"]
    assert busy["last_seen"] is not None and idle["current_job"] is None


@pytest.mark.parametrize("path", ["/.well-known/jwks.json", "/rest/.well-known/jwks.json"])
def test_jwks_publishes_the_webhook_signing_key_without_auth(api: Api, path: str) -> None:
    import base64

    r = api.client.get(path)
    assert r.status_code == 200
    (key,) = r.json()["keys"]
    assert (key["kty"], key["crv"]) == ("OKP", "Ed25519")
    raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    assert raw == api.store.signing_key().public_key().public_bytes_raw()


def test_real_endpoints_documents(tmp_path: Path) -> None:
    """The registry's four endpoints: every document builds, with fal's component names."""
    from fastapi.testclient import TestClient

    from motionserve.api.app import create_app
    from motionserve.config import Settings
    from motionserve.jobs.store import Store
    from motionserve.storage import open_file_store

    settings = Settings(data_dir=tmp_path)
    store = Store(settings.resolved_database_url)
    store.create_all()
    app = create_app(settings, store, open_file_store(settings))
    client = TestClient(app)
    expected = {
        "fal-ai/fast-animatediff/text-to-video": "FastAnimatediffTextToVideoInput",
        "fal-ai/fast-animatediff/video-to-video": "FastAnimatediffVideoToVideoInput",
        "fal-ai/animatediff-v2v/turbo": "AnimatediffV2vTurboInput",
        "fal-ai/fast-svd-lcm": "FastSvdLcmInput",
    }
    for endpoint_id, input_name in expected.items():
        doc = client.get(f"/openapi/{endpoint_id}.json").json()
        assert input_name in doc["components"]["schemas"], endpoint_id
        assert f"/queue/{endpoint_id}" in client.get("/openapi.json").json()["paths"]
    store.close()
