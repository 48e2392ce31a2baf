"""Handlers publish live previews of their latents through `ctx.preview` (tiny checkpoints, small requests)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from motionserve.endpoints import svd_lcm
from motionserve.endpoints import text_to_video as t2v
from motionserve.endpoints._animatediff import step_callback
from motionserve.endpoints.base import Limits
from tests.endpoints.conftest import RecordingContext
from tests.media import make_png

SMALL_T2V = {"prompt": "a red fox running through snow", "seed": 7, "video_size": {"width": 64, "height": 64},
             "num_frames": 6, "num_inference_steps": 3}


def _webp(image: bytes) -> tuple[str, tuple[int, int], int]:
    with Image.open(io.BytesIO(image)) as opened:
        return opened.format, opened.size, getattr(opened, "n_frames", 1)


def test_text_to_video_publishes_a_preview_of_its_latents(new_ctx: Any) -> None:
    ctx: RecordingContext = new_ctx()
    t2v.run(t2v.ENDPOINT.validate(SMALL_T2V, Limits()), ctx)  # type: ignore[arg-type]
    assert [step for step, _, _ in ctx.previews] == [1, 2, 3]  # the fake context wants one every step
    for _, content_type, image in ctx.previews:
        # 64×64 video: 8×8 latents shown ×2; 4 of the 6 frames.
        assert content_type == "image/webp" and _webp(image) == ("WEBP", (16, 16), 4)


def test_previews_off_publish_nothing_and_leave_the_video_as_it_was(new_ctx: Any) -> None:
    with_previews: RecordingContext = new_ctx()
    out_on = t2v.run(t2v.ENDPOINT.validate(SMALL_T2V, Limits()), with_previews)  # type: ignore[arg-type]
    without: RecordingContext = new_ctx()
    without.previews_on = False
    out_off = t2v.run(t2v.ENDPOINT.validate(SMALL_T2V, Limits()), without)  # type: ignore[arg-type]
    assert without.previews == [] and with_previews.previews
    assert np.array_equal(with_previews.output_frames(out_on.video), without.output_frames(out_off.video))


def test_svd_lcm_previews_read_frames_before_channels(new_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svd_lcm, "WORKING_SIZE", (64, 32))  # as tests/endpoints/test_svd_lcm.py: about a second
    ctx: RecordingContext = new_ctx()
    url = ctx.add_input("https://images.test/input.png", make_png(96, 48, pattern="gradient"))
    svd_lcm.run(svd_lcm.ENDPOINT.validate({"image_url": url, "steps": 2, "seed": 1}, Limits()), ctx)  # type: ignore[arg-type]
    assert [step for step, _, _ in ctx.previews] == [1, 2]
    # 64×32 video: 8×4 latents shown ×2; 4 of the 25 frames (read along the frame axis, not the channels).
    assert all(_webp(image) == ("WEBP", (16, 8), 4) for _, _, image in ctx.previews)


class _Ctx:
    request_id = "r"

    def __init__(self) -> None:
        self.previews: list[int] = []
        self.asked: list[tuple[int, int | None]] = []

    def log(self, message: str, level: str = "INFO") -> None:
        pass

    def is_cancelled(self) -> bool:
        return False

    def preview_due(self, step: int, total_steps: int | None) -> bool:
        self.asked.append((step, total_steps))
        return step == 2

    def preview(self, image: bytes, *, step: int, content_type: str) -> None:
        self.previews.append(step)


def test_the_callback_makes_an_image_only_when_the_context_says_it_is_due() -> None:
    ctx = _Ctx()
    callback = step_callback(ctx, 3)  # type: ignore[arg-type]
    for i in range(3):
        callback(object(), i, 0, {"latents": torch.zeros(1, 4, 2, 8, 8)})
    assert ctx.asked == [(1, 3), (2, 3), (3, 3)] and ctx.previews == [2]


def test_a_preview_that_cannot_be_made_does_not_fail_the_step(caplog: pytest.LogCaptureFixture) -> None:
    ctx = _Ctx()
    kwargs = {"latents": torch.zeros(1, 3, 2, 8, 8)}  # not 4 latent channels: no projection for it
    assert step_callback(ctx, 3)(object(), 1, 0, kwargs) is kwargs  # type: ignore[arg-type]
    assert ctx.previews == [] and "could not make a preview of step 2" in caplog.text
