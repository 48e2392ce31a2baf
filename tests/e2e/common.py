"""Constants and helpers shared by the end-to-end test modules."""

from __future__ import annotations

import re
from typing import Any, Callable

import httpx

from .server import Server

T2V = "fal-ai/fast-animatediff/text-to-video"
V2V = "fal-ai/fast-animatediff/video-to-video"
TURBO = "fal-ai/animatediff-v2v/turbo"
SVD = "fal-ai/fast-svd-lcm"
ENDPOINT_IDS = (T2V, V2V, TURBO, SVD)

# Small enough for 2 CPU cores; every test that only needs "a video" uses this.
SMALL_T2V: dict[str, Any] = {
    "prompt": "a red rocket over the sea",
    "video_size": {"width": 64, "height": 64},
    "num_frames": 8,
    "num_inference_steps": 3,
    "fps": 8,
    "seed": 7,
}

# A client driver: `client("scenario", key=None, **kwargs)` -> the scenario's JSON result.
PyClient = Callable[..., Any]


def download(srv: Server, url: str) -> bytes:
    """Fetch a returned file URL the way a browser would: no key, only the CA to trust."""
    assert url.startswith(srv.base_url), f"{url} is not served by {srv.base_url}"
    r = httpx.get(url, verify=str(srv.tls.ca_cert), timeout=120)
    assert r.status_code == 200, f"GET {url} -> {r.status_code} {r.text[:300]}"
    return r.content


_STEP = re.compile(r"\bstep (\d+)/(\d+)", re.IGNORECASE)


def step_numbers(logs: list[dict[str, Any]] | None) -> list[int]:
    """The `i` of every "step i/n" line the denoising loop logged, in order."""
    return [int(m.group(1)) for line in logs or [] if (m := _STEP.search(line["message"]))]
