"""The unmodified npm `@fal-ai/client` 1.10.1 (tests/e2e/js) against a real motionserve over TLS."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from . import webhook_check
from .common import SMALL_T2V, T2V, V2V, PyClient, download, step_numbers
from tests.media import make_video

from .media import probe_mp4
from .server import Server

pytestmark = pytest.mark.e2e

V2V_ARGS: dict[str, Any] = {"prompt": "a painting", "first_n_seconds": 2, "fps": 4, "num_inference_steps": 4, "strength": 0.5, "seed": 3}
LONG_T2V: dict[str, Any] = {**SMALL_T2V, "num_frames": 16, "num_inference_steps": 50, "video_size": {"width": 128, "height": 128}}


def assert_playable(server: Server, video: dict[str, Any], frames: int, fps: int) -> None:
    info = probe_mp4(download(server, video["url"]))
    assert (info.frames, info.fps) == (frames, fps)


def test_run_returns_result_and_request_id(js_client: PyClient, server: Server) -> None:
    out = js_client("run", endpoint=T2V, input=SMALL_T2V)

    assert "result" in out, out
    assert out["requestId"]  # read from the x-fal-request-id header
    assert_playable(server, out["result"]["video"], frames=8, fps=8)


@pytest.mark.parametrize("mode", ["polling", "streaming"])
def test_subscribe_with_logs(js_client: PyClient, server: Server, mode: str) -> None:
    steps = 10
    out = js_client("subscribe", endpoint=T2V, input={**SMALL_T2V, "num_inference_steps": steps}, mode=mode)

    assert "result" in out, out
    assert out["requestId"] == out["enqueued"]
    assert out["updates"][-1]["status"] == "COMPLETED"
    # Polling gets the whole log each time; in streaming mode the client appends each event's lines,
    # so a server repeating old lines in later events would show up here as duplicates.
    assert step_numbers(out["updates"][-1]["logs"]) == list(range(1, steps + 1))
    assert_playable(server, out["result"]["video"], frames=8, fps=8)


def test_submit_status_result(js_client: PyClient, server: Server) -> None:
    out = js_client("submit", endpoint=T2V, input=SMALL_T2V)

    assert out["statuses"][-1]["status"] == "COMPLETED" and out["statuses"][-1]["error"] is None
    assert out["status_without_logs"]["logs"] is None
    assert out["requestId"] == out["request_id"]
    assert_playable(server, out["result"]["video"], frames=8, fps=8)


def test_status_stream_ends_with_completed(js_client: PyClient, server: Server) -> None:
    out = js_client("stream_status", endpoint=T2V, input={**SMALL_T2V, "num_inference_steps": 6})

    assert out["last"]["status"] == "COMPLETED"
    assert [e["status"] for e in out["events"]][-1] == "COMPLETED"
    assert [n for e in out["events"] for n in step_numbers(e.get("logs"))] == list(range(1, 7))
    assert_playable(server, out["result"]["video"], frames=8, fps=8)


def test_cancel_a_queued_and_a_running_request(js_client: PyClient) -> None:
    out = js_client("cancel", endpoint=T2V, long_input=LONG_T2V)

    assert out["queued"]["before"]["status"] == "IN_QUEUE"
    assert out["running"]["before"]["status"] == "IN_PROGRESS"
    assert step_numbers(out["running"]["before"]["logs"]), "step lines reach the client while the request runs"
    for request in (out["queued"], out["running"]):
        assert request["after"]["status"] == "COMPLETED"
        assert request["after"]["error_type"] == "client_cancelled"
        assert request["error"]["status"] == 499
    assert len(step_numbers(out["running"]["after"]["logs"])) < LONG_T2V["num_inference_steps"]


def test_webhook_is_delivered_and_signed(js_client: PyClient, server: Server, webhook_receiver) -> None:
    out = js_client("submit", endpoint=T2V, input=SMALL_T2V, webhook_url=webhook_receiver.url)

    hook = webhook_receiver.wait_for(out["request_id"])
    keys = webhook_check.fetch_jwks_keys(f"{server.base_url}/rest/.well-known/jwks.json", str(server.tls.ca_cert))
    webhook_check.verify(hook.headers, hook.body, keys)
    assert hook.json()["status"] == "OK" and hook.json()["payload"] == out["result"]


@pytest.mark.parametrize("size", [13, 90 * 1024 * 1024 + 5 * 1024 * 1024 + 1], ids=["small", "multipart-over-90mb"])
def test_storage_upload(js_client: PyClient, server: Server, size: int) -> None:
    out = js_client("upload", size=size, file_name="blob.bin")

    data = download(server, out["url"])
    assert len(data) == size and hashlib.sha256(data).hexdigest() == out["sha256"]


def test_blob_input_is_auto_uploaded(js_client: PyClient, server: Server, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_video(width=64, height=64, fps=8, frames=16))

    out = js_client("run_with_blob", endpoint=V2V, input=V2V_ARGS, field="video_url", file_path=str(clip), content_type="video/mp4")

    assert "result" in out, out
    assert probe_mp4(download(server, out["result"]["video"]["url"])).frames == 8


def test_data_uri_video_input(js_client: PyClient, server: Server, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_video(width=64, height=64, fps=8, frames=16))

    out = js_client("run_with_data_uri", endpoint=V2V, input=V2V_ARGS, field="video_url", file_path=str(clip), content_type="video/mp4")

    assert "result" in out, out
    assert probe_mp4(download(server, out["result"]["video"]["url"])).frames == 8


def test_invalid_input_is_a_validation_error(js_client: PyClient) -> None:
    out = js_client("run", endpoint=T2V, input={**SMALL_T2V, "num_inference_steps": "many"})

    error = out["error"]
    assert error["name"] == "ValidationError" and error["status"] == 422
    assert any(e["loc"] == ["body", "num_inference_steps"] for e in error["fieldErrors"]), error


def test_wrong_key_is_401(js_client: PyClient) -> None:
    out = js_client("run", endpoint=T2V, input=SMALL_T2V, key="wrong:key")

    assert out["error"]["name"] == "ApiError" and out["error"]["status"] == 401
