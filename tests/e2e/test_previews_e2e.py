"""Live previews through a real server: a running text-to-video request's status carries `preview`, whose
URL anyone can fetch (as a browser `<img>` would) and which is an animated WebP of the latents."""

from __future__ import annotations

import io
import time
from typing import Any, Iterator

import pytest
from PIL import Image

from .common import SMALL_T2V, T2V, download
from .http_queue import QueueClient
from .server import Server

pytestmark = pytest.mark.e2e

# Long enough for a few previews (every 5 steps, at most two a second) while it runs.
LONG_T2V: dict[str, Any] = {**SMALL_T2V, "num_frames": 16, "num_inference_steps": 50,
                            "video_size": {"width": 128, "height": 128}}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[QueueClient]:
    queue = QueueClient(server, server.create_key("previews"))
    yield queue
    queue.close()


def test_a_running_request_shows_previews_anyone_can_fetch(client: QueueClient, server: Server) -> None:
    job = client.submit(T2V, LONG_T2V)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = client.status(job)
        if status["status"] == "COMPLETED":
            break
        if "preview" in status:
            assert status["status"] == "IN_PROGRESS"
            seen[status["preview"]["step"]] = status["preview"]["url"]
        time.sleep(0.05)
    assert status["status"] == "COMPLETED" and "preview" not in status and status.get("error") is None
    assert seen, "no preview while the request ran"
    assert all(step % 5 == 0 and 0 < step <= 50 for step in seen)
    with Image.open(io.BytesIO(download(server, seen[max(seen)]))) as image:
        # 128×128 video: 16×16 latents shown ×2; 4 of the 16 frames.
        assert image.format == "WEBP" and image.size == (32, 32) and getattr(image, "n_frames", 1) == 4
