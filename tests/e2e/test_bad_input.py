"""Hostile and broken input over plain HTTP: every field, malformed bodies, bad media, private URLs.

The server here runs WITHOUT --allow-private-urls, as in production. After everything, it must still
serve a good request.
"""

from __future__ import annotations

import base64
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import httpx
import pytest

from motionserve.endpoints.base import Limits
from motionserve.endpoints.registry import ENDPOINTS

from .bad_values import BadCase, bad_cases
from .common import SMALL_T2V, SVD, T2V, TURBO, V2V, download
from .http_queue import QueueClient
from tests.media import make_png, make_video, random_bytes, truncated

from .media import probe_mp4
from .server import Server

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
CLIP = make_video(width=64, height=64, fps=8, frames=16)
CLIP_URI = "data:video/mp4;base64," + base64.b64encode(CLIP).decode()
IMAGE_URI = "data:image/png;base64," + base64.b64encode(make_png(64, 64, pattern="gradient")).decode()

# Valid, small payloads; each bad case changes exactly one field of one of these.
VALID: dict[str, dict[str, Any]] = {
    T2V: {**SMALL_T2V, "motions": [], "negative_prompt": "blurry"},
    V2V: {"video_url": CLIP_URI, "prompt": "a painting", "first_n_seconds": 2, "fps": 4, "num_inference_steps": 4,
          "strength": 0.5, "guidance_scale": 7.5, "seed": 1, "negative_prompt": "blurry"},
    TURBO: {"video_url": CLIP_URI, "prompt": "a painting", "num_inference_steps": 4, "guidance_scale": 2.0,
            "select_every_nth_frame": 2, "seed": 1, "loras": [], "negative_prompt": "blurry"},
    SVD: {"image_url": IMAGE_URI, "steps": 2, "fps": 6, "motion_bucket_id": 127, "cond_aug": 0.02, "seed": 1},
}

# The ranges fal documents for these endpoints (shared/seeds); pinned so a schema drift is noticed.
DOCUMENTED: dict[str, list[tuple[str, Any]]] = {
    V2V: [("first_n_seconds", 1), ("first_n_seconds", 5), ("num_inference_steps", 0), ("num_inference_steps", 51),
          ("strength", -0.1), ("strength", 1.1), ("guidance_scale", -1), ("guidance_scale", 20.5), ("fps", 0), ("fps", 17)],
    TURBO: [("num_inference_steps", 3), ("num_inference_steps", 13), ("guidance_scale", 0.5), ("guidance_scale", 2.6)],
    SVD: [("motion_bucket_id", 0), ("motion_bucket_id", 256), ("cond_aug", -0.5), ("cond_aug", 10.5), ("steps", 0), ("steps", 21)],
}


def _cases() -> Iterator[Any]:
    for endpoint_id, payload in VALID.items():
        schema = ENDPOINTS[endpoint_id].input_model.model_json_schema()
        cases = bad_cases(schema, payload)
        cases += [BadCase(f, (f,), v, f"documented-{v}") for f, v in DOCUMENTED.get(endpoint_id, [])]
        for case in cases:
            yield pytest.param(endpoint_id, case, id=f"{endpoint_id.split('/', 1)[1]}:{case.id}")


def named_fields(detail: list[dict[str, Any]]) -> set[str]:
    return {str(entry["loc"][1]) for entry in detail if len(entry.get("loc", [])) > 1 and entry["loc"][0] == "body"}


@pytest.fixture(scope="module")
def strict_server(server_factory) -> Iterator[Server]:
    srv = server_factory("strict", allow_private_urls=False)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(strict_server: Server) -> Iterator[QueueClient]:
    queue = QueueClient(strict_server, strict_server.create_key("bad-input"))
    yield queue
    queue.close()


@pytest.mark.parametrize(("endpoint_id", "case"), list(_cases()))
def test_each_invalid_field_is_a_422_naming_it(client: QueueClient, endpoint_id: str, case: BadCase) -> None:
    payload = case.apply(VALID[endpoint_id])

    r = client.http.post(f"/queue/{endpoint_id}", json=payload)

    assert r.status_code == 422, f"{case} -> {r.status_code} {r.text[:300]}"
    assert case.field in named_fields(r.json()["detail"]), r.json()


def test_the_valid_payloads_are_accepted(client: QueueClient) -> None:
    """Guards the test above: each 422 there must come from the one field it changed."""
    for endpoint_id, payload in VALID.items():
        ENDPOINTS[endpoint_id].validate(payload, Limits())


@pytest.mark.parametrize(
    "body",
    [b'{"prompt": "a cat",', b"not json at all", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"just a string"', b"42"],
    ids=["truncated", "text", "binary", "array", "string", "number"],
)
@pytest.mark.parametrize("route", ["queue", "run"])
def test_malformed_json_body_is_422(client: QueueClient, body: bytes, route: str) -> None:
    r = client.http.post(f"/{route}/{T2V}", content=body, headers={"Content-Type": "application/json"})

    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list)


UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/queue/fal-ai/no-such-model"),
        ("POST", "/run/fal-ai/no-such-model/text-to-video"),
        ("GET", f"/queue/fal-ai/fast-animatediff/requests/{UNKNOWN_ID}/status"),
        ("GET", f"/queue/fal-ai/fast-animatediff/requests/{UNKNOWN_ID}"),
        ("PUT", f"/queue/fal-ai/fast-animatediff/requests/{UNKNOWN_ID}/cancel"),
    ],
)
def test_unknown_endpoint_or_request_is_404(client: QueueClient, method: str, path: str) -> None:
    r = client.http.request(method, path, json={"prompt": "x"} if method == "POST" else None)

    assert r.status_code == 404, r.text


def test_body_over_the_limit_is_413(client: QueueClient) -> None:
    body = b'{"prompt": "' + b"a" * (65 * MB) + b'"}'  # the JSON body limit is 64 MB

    r = client.http.post(f"/queue/{T2V}", content=body, headers={"Content-Type": "application/json"})

    assert r.status_code == 413, r.text[:300]


def _data_uri(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64," + base64.b64encode(data).decode()


def _corrupt_cases() -> list[Any]:
    # A camera-style MP4 (index at the end) cut in half has frames but no index: undecodable.
    camera_clip = make_video(width=64, height=64, fps=8, frames=24, faststart=False)
    return [
        pytest.param(V2V, "video_url", _data_uri("video/mp4", random_bytes(16384)), id="v2v-random-bytes"),
        pytest.param(V2V, "video_url", _data_uri("video/mp4", truncated(camera_clip, 0.5)), id="v2v-truncated-mp4"),
        pytest.param(TURBO, "video_url", _data_uri("video/mp4", CLIP[:200]), id="turbo-truncated-mp4"),
        pytest.param(SVD, "image_url", _data_uri("image/png", b"\x89PNG\r\n\x1a\n" + bytes(500)), id="svd-corrupt-png"),
        pytest.param(SVD, "image_url", _data_uri("image/png", make_png(64, 64, pattern="gradient")[:60]), id="svd-truncated-png"),
        pytest.param(V2V, "video_url", "data:video/mp4;base64,%%%not-base64%%%", id="v2v-bad-base64"),
    ]


@pytest.mark.parametrize(("endpoint_id", "field", "url"), _corrupt_cases())
def test_corrupt_media_completes_with_a_422_result_naming_the_field(
    client: QueueClient, endpoint_id: str, field: str, url: str
) -> None:
    job = client.submit(endpoint_id, {**VALID[endpoint_id], field: url})

    final = client.wait(job)
    r = client.result(job)

    assert final["status"] == "COMPLETED" and final.get("error"), final
    assert r.status_code == 422, r.text
    assert field in named_fields(r.json()["detail"]), r.json()


class _ClipServer:
    """Serves a VALID clip on 127.0.0.1: only the address check can make fetching it fail."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(len(CLIP)))
                self.end_headers()
                self.wfile.write(CLIP)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.port = self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def clip_server() -> Iterator[_ClipServer]:
    srv = _ClipServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def fetch_refuses_before_connecting() -> None:
    """Safety gate: prove in-process that private addresses are refused BEFORE any connection.

    The e2e test below hands the server 10.x and 169.254.169.254 URLs; this workplace must never send
    traffic there, so if the guard were broken we stop here instead of letting the server try.
    """
    from motionserve.errors import FetchError
    from motionserve.storage import fetch

    attempts: list[Any] = []
    real_connect, real_create = socket.socket.connect, socket.create_connection

    def no_connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("connection attempted during the safety gate")

    def no_create(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        raise OSError("connection attempted during the safety gate")

    socket.socket.connect, socket.create_connection = no_connect, no_create  # type: ignore[method-assign, assignment]
    try:
        for url in PRIVATE_TARGETS:
            with pytest.raises(FetchError):
                fetch.fetch_bytes(url, max_bytes=MB, timeout_s=2, allow_private=False, own_files=None, own_base_urls=())
    finally:
        socket.socket.connect, socket.create_connection = real_connect, real_create  # type: ignore[method-assign]
    if attempts:
        pytest.fail(f"storage.fetch tried to connect to {attempts} before refusing; not sending these URLs to a server")


PRIVATE_TARGETS = ["http://10.255.255.1/clip.mp4", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/clip.mp4"]


@pytest.mark.parametrize("target", ["loopback", "localhost", "10.x", "metadata"])
def test_private_urls_are_refused_without_allow_private_urls(
    client: QueueClient, clip_server: _ClipServer, fetch_refuses_before_connecting: None, target: str
) -> None:
    url = {
        "loopback": f"http://127.0.0.1:{clip_server.port}/clip.mp4",
        "localhost": f"http://localhost:{clip_server.port}/clip.mp4",
        "10.x": PRIVATE_TARGETS[0],
        "metadata": PRIVATE_TARGETS[1],
    }[target]

    job = client.submit(V2V, {**VALID[V2V], "video_url": url})
    client.wait(job)
    r = client.result(job)

    assert r.status_code == 422, r.text
    assert "video_url" in named_fields(r.json()["detail"]), r.json()


def test_server_still_serves_a_good_request_afterwards(client: QueueClient, strict_server: Server) -> None:
    r = client.http.post(f"/run/{T2V}", json=SMALL_T2V, timeout=300)

    assert r.status_code == 200, r.text
    assert probe_mp4(download(strict_server, r.json()["video"]["url"])).frames == SMALL_T2V["num_frames"]
    assert httpx.get(f"{strict_server.base_url}/health", verify=str(strict_server.tls.ca_cert)).status_code == 200
