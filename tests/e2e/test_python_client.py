"""The unmodified PyPI `fal-client` against a real motionserve over TLS, as a user would call it."""

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

# Long enough that a cancel sent once the request is IN_PROGRESS lands before the last step.
# 2 s sampled at 4 fps: 8 frames; strength 0.5 of 4 steps keeps it to 2 denoising steps.
V2V_ARGS: dict[str, Any] = {"prompt": "a painting", "first_n_seconds": 2, "fps": 4, "num_inference_steps": 4, "strength": 0.5, "seed": 3}
LONG_T2V: dict[str, Any] = {**SMALL_T2V, "num_frames": 16, "num_inference_steps": 50, "video_size": {"width": 128, "height": 128}}


def assert_playable(server: Server, video: dict[str, Any], frames: int, fps: int) -> None:
    assert video["content_type"] == "video/mp4"
    info = probe_mp4(download(server, video["url"]))
    assert (info.frames, info.fps) == (frames, fps)


def test_run_returns_a_playable_mp4_anyone_can_download(py_client: PyClient, server: Server) -> None:
    out = py_client("run", endpoint=T2V, arguments=SMALL_T2V)

    assert out["result"]["seed"] == SMALL_T2V["seed"]
    assert_playable(server, out["result"]["video"], frames=8, fps=8)


def test_subscribe_reports_a_log_line_per_denoising_step(py_client: PyClient, server: Server) -> None:
    steps = 10
    out = py_client("subscribe", endpoint=T2V, arguments={**SMALL_T2V, "num_inference_steps": steps})

    assert "result" in out, out
    assert out["updates"][-1]["status"] == "COMPLETED"
    assert step_numbers(out["updates"][-1]["logs"]) == list(range(1, steps + 1))
    assert_playable(server, out["result"]["video"], frames=8, fps=8)


def test_submit_then_status_and_result_by_handle_and_by_id(py_client: PyClient, server: Server) -> None:
    out = py_client("submit", endpoint=T2V, arguments=SMALL_T2V)

    final = out["statuses"][-1]
    assert final["status"] == "COMPLETED" and final["error"] is None
    assert final["metrics"].get("inference_time", 0) > 0
    assert out["status_without_logs"]["logs"] is None  # fal returns null logs when not asked for
    assert out["via_handle"] == out["via_id"]
    assert_playable(server, out["via_handle"]["result"]["video"], frames=8, fps=8)


def test_cancel_a_queued_and_a_running_request(py_client: PyClient) -> None:
    out = py_client("cancel", endpoint=T2V, long_arguments=LONG_T2V)

    queued, running = out["queued"], out["running"]
    assert queued["before"]["status"] == "IN_QUEUE"
    assert running["before"]["status"] == "IN_PROGRESS"
    assert step_numbers(running["before"]["logs"]), "step lines reach the client while the request runs"
    for request in (queued, running):
        assert request["after"]["status"] == "COMPLETED"
        assert request["after"]["error_type"] == "client_cancelled"
        assert request["error"]["status_code"] == 499
    # The running one was stopped between steps, well before its 50th.
    assert len(step_numbers(running["after"]["logs"])) < LONG_T2V["num_inference_steps"]


def test_webhook_is_delivered_and_signed_with_the_published_key(py_client: PyClient, server: Server, webhook_receiver) -> None:
    out = py_client("submit", endpoint=T2V, arguments=SMALL_T2V, webhook_url=webhook_receiver.url)

    hook = webhook_receiver.wait_for(out["request_id"])
    keys = webhook_check.fetch_jwks_keys(f"{server.base_url}/.well-known/jwks.json", str(server.tls.ca_cert))
    webhook_check.verify(hook.headers, hook.body, keys)
    body = hook.json()
    assert body["request_id"] == out["request_id"] and body["status"] == "OK"
    assert body["payload"] == out["via_handle"]["result"]


@pytest.mark.parametrize(
    ("size", "repository", "via_file"),
    [(1000, None, False), (70_000, "fal_v3", True), (5000, "fal", False)],
    ids=["default-chain", "cdn-v3-from-file", "rest-initiate"],
)
def test_upload_small_files(py_client: PyClient, server: Server, size: int, repository: str | None, via_file: bool) -> None:
    out = py_client("upload", size=size, content_type="text/plain", file_name="notes.txt", repository=repository, via_file=via_file)

    assert hashlib.sha256(download(server, out["url"])).hexdigest() == out["sha256"]


def test_upload_over_100mb_goes_multipart(py_client: PyClient, server: Server) -> None:
    size = 100 * 1024 * 1024 + 3 * 1024 * 1024 + 17  # over MULTIPART_THRESHOLD; last part short
    out = py_client("upload", size=size, file_name="big.bin", repository="fal_v3")

    data = download(server, out["url"])
    assert len(data) == size and hashlib.sha256(data).hexdigest() == out["sha256"]


def test_data_uri_video_input(py_client: PyClient, server: Server, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_video(width=64, height=64, fps=8, frames=16))
    out = py_client("run_with_data_uri", endpoint=V2V, arguments=V2V_ARGS, field="video_url", path=str(clip), content_type="video/mp4")

    assert "result" in out, out
    assert probe_mp4(download(server, out["result"]["video"]["url"])).frames == 8


def test_uploaded_file_as_input(py_client: PyClient, server: Server, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_video(width=64, height=64, fps=8, frames=16))
    url = py_client("upload_media", path=str(clip), content_type="video/mp4")["url"]

    out = py_client("run", endpoint=V2V, arguments={**V2V_ARGS, "video_url": url})

    assert "result" in out, out
    assert probe_mp4(download(server, out["result"]["video"]["url"])).frames == 8


def test_invalid_input_is_a_422_with_a_detail_list(py_client: PyClient) -> None:
    out = py_client("run", endpoint=T2V, arguments={**SMALL_T2V, "num_frames": -4})

    error = out["error"]
    assert error["status_code"] == 422
    assert isinstance(error["detail"], list)
    assert any(entry["loc"] == ["body", "num_frames"] for entry in error["detail"]), error


def test_wrong_key_is_401(py_client: PyClient) -> None:
    out = py_client("run", endpoint=T2V, arguments=SMALL_T2V, key="not-a-key:nope")

    assert out["error"]["status_code"] == 401
