"""`fal-ai/fast-animatediff/video-to-video` run directly on the tiny AnimateDiff checkpoints.

The handler's working area (≈512×512 px) is shrunk to the 64×48 input's own area for most tests so a
request takes about a second on a CPU; one test checks the real working size.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from diffusers import AnimateDiffVideoToVideoPipeline

from motionserve.endpoints import video_to_video as v2v
from motionserve.endpoints.base import Limits
from motionserve.errors import InputValidationError, JobCancelledError
from motionserve.inference import video_io
from tests.media import make_gif, make_video, random_bytes

VIDEO_URL = "https://videos.test/input.mp4"


@pytest.fixture(scope="module")
def source_video() -> bytes:
    """5 s of 64×48 at 16 fps, each frame numbered (tests/media.py "index" pattern)."""
    return make_video(width=64, height=48, fps=16, seconds=5)


@pytest.fixture
def small_area(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v2v, "WORKING_AREA", 64 * 48)


@pytest.fixture
def vctx(ctx: Any, source_video: bytes, small_area: None) -> Any:
    ctx.add_input(VIDEO_URL, source_video)
    return ctx


def make_input(**fields: Any) -> v2v.Input:
    payload = {
        "video_url": VIDEO_URL, "prompt": "a watercolor painting", "seed": 3,
        "first_n_seconds": 2, "fps": 2, "num_inference_steps": 4, "strength": 0.5, **fields,
    }
    return v2v.ENDPOINT.validate(payload, Limits())  # type: ignore[return-value]


# -- schema ------------------------------------------------------------------------------------------


def test_defaults_and_ranges_are_fals() -> None:
    inputs = v2v.Input(video_url=VIDEO_URL, prompt="x")
    assert (inputs.first_n_seconds, inputs.num_inference_steps, inputs.strength) == (3, 25, 0.7)
    assert (inputs.guidance_scale, inputs.fps, inputs.seed, inputs.motions) == (7.5, 8, None, None)
    assert inputs.negative_prompt == "(bad quality, worst quality:1.2), ugly faces, bad anime"
    for field, bad in (("first_n_seconds", 1), ("first_n_seconds", 5), ("strength", 1.5), ("fps", 17), ("num_inference_steps", 51)):
        with pytest.raises(InputValidationError) as info:
            make_input(**{field: bad})
        assert info.value.errors[0]["loc"] == ["body", field]


def test_more_sampled_frames_than_the_cap_is_422_naming_the_limit() -> None:
    with pytest.raises(InputValidationError) as info:
        v2v.ENDPOINT.validate({"video_url": VIDEO_URL, "prompt": "x", "first_n_seconds": 3, "fps": 16}, Limits(max_frames=32))
    [error] = info.value.errors
    assert error["loc"] == ["body", "fps"] and "32" in error["msg"] and "max_frames" in error["msg"]


# -- output ------------------------------------------------------------------------------------------


def test_output_mp4_has_first_n_seconds_times_fps_frames_at_fps(vctx: Any, probe_mp4: Any) -> None:
    out = v2v.run(make_input(first_n_seconds=2, fps=4), vctx)
    assert out.seed == 3 and out.video.content_type == "video/mp4"
    facts = probe_mp4(vctx.output_bytes(out.video))
    assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    assert (facts["width"], facts["height"], facts["frames"], facts["fps"]) == (64, 48, 8, 4.0)
    assert vctx.step_logs() == ["step 1/2", "step 2/2"]  # int(4 steps × 0.5 strength)


@pytest.mark.parametrize(("seconds", "fps", "frames"), [(3, 2, 6), (2, 5, 10), (4, 1, 4)])
def test_first_n_seconds_and_fps_choose_the_frames(vctx: Any, seconds: int, fps: int, frames: int) -> None:
    out, out_fps, _ = v2v.generate(make_input(first_n_seconds=seconds, fps=fps, num_inference_steps=2), vctx)
    assert out.shape == (frames, 48, 64, 3) and out_fps == fps


def test_output_keeps_the_aspect_ratio_at_the_working_area(ctx: Any, source_video: bytes) -> None:
    ctx.add_input(VIDEO_URL, source_video)
    frames, _, _ = v2v.generate(make_input(first_n_seconds=2, fps=1, num_inference_steps=2), ctx)
    assert frames.shape[1:3] == (440, 592)  # 4:3 at ≈512×512 px, multiples of 8
    assert v2v.WORKING_AREA == 512 * 512


def test_gif_and_data_uri_inputs_work(ctx: Any, small_area: None) -> None:
    gif = make_gif(width=64, height=48, delays_ms=[250] * 12)
    uri = "data:image/gif;base64," + base64.b64encode(gif).decode()
    frames, fps, _ = v2v.generate(make_input(video_url=uri, first_n_seconds=2, fps=2, num_inference_steps=2), ctx)
    assert frames.shape == (4, 48, 64, 3) and fps == 2


# -- inputs that change the result -------------------------------------------------------------------


def test_strength_sets_the_denoising_steps_and_changes_the_output(vctx: Any) -> None:
    weak, _, _ = v2v.generate(make_input(strength=0.25), vctx)
    assert vctx.step_logs() == ["step 1/1"]
    vctx.logs.clear()
    strong, _, _ = v2v.generate(make_input(strength=1.0), vctx)
    assert len(vctx.step_logs()) == 4
    assert not np.allclose(weak, strong)


def test_zero_strength_still_runs_one_step(vctx: Any) -> None:
    frames, _, _ = v2v.generate(make_input(strength=0.0), vctx)
    assert vctx.step_logs() == ["step 1/1"] and frames.shape[0] == 4


def test_same_seed_reproduces_and_another_differs(vctx: Any) -> None:
    a, _, _ = v2v.generate(make_input(seed=11), vctx)
    b, _, _ = v2v.generate(make_input(seed=11), vctx)
    c, _, _ = v2v.generate(make_input(seed=12), vctx)
    _, _, random_seed = v2v.generate(make_input(seed=None), vctx)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert isinstance(random_seed, int)


def test_motions_change_the_output_and_are_removed_afterwards(vctx: Any) -> None:
    before, _, _ = v2v.generate(make_input(), vctx)
    moved, _, _ = v2v.generate(make_input(motions=["pan-right"]), vctx)
    after, _, _ = v2v.generate(make_input(), vctx)
    assert not np.allclose(before, moved)
    assert np.array_equal(before, after)


def test_prompt_changes_the_output(vctx: Any) -> None:
    a, _, _ = v2v.generate(make_input(prompt="a watercolor painting"), vctx)
    b, _, _ = v2v.generate(make_input(prompt="a pencil sketch"), vctx)
    assert not np.allclose(a, b)


# -- equivalence with diffusers ----------------------------------------------------------------------


def test_frames_equal_the_plain_diffusers_pipeline(vctx: Any, source_video: bytes) -> None:
    import torch

    inputs = make_input(negative_prompt="blurry", guidance_scale=5.0, strength=0.75)
    frames, _, seed = v2v.generate(inputs, vctx)
    clip = video_io.decode_video(source_video, max_seconds=2, sample_fps=2)
    plain = AnimateDiffVideoToVideoPipeline(**vctx.models.video_to_video().components)
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        video=clip.frames, prompt=inputs.prompt, negative_prompt="blurry", height=48, width=64,
        num_inference_steps=4, strength=0.75, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
    ).frames[0]
    np.testing.assert_allclose(frames, expected, atol=1e-5)


# -- long clips, bad input, cancellation -------------------------------------------------------------


def test_more_than_32_frames_use_context_windows(vctx: Any, probe_mp4: Any) -> None:
    out = v2v.run(make_input(first_n_seconds=3, fps=12, num_inference_steps=2, strength=1.0), vctx)
    facts = probe_mp4(vctx.output_bytes(out.video))
    assert facts["frames"] == 36 and facts["fps"] == 12.0
    assert any("FreeNoise" in line for line in vctx.logs)


@pytest.mark.parametrize("data", [random_bytes(), b"", make_video()[:300]])
def test_unreadable_video_is_422_on_video_url(ctx: Any, data: bytes) -> None:
    ctx.add_input(VIDEO_URL, data)
    with pytest.raises(InputValidationError) as info:
        v2v.run(make_input(), ctx)
    assert info.value.errors[0]["loc"] == ["body", "video_url"]
    assert ctx.outputs == {}


def test_missing_video_is_422_on_video_url(ctx: Any) -> None:
    with pytest.raises(InputValidationError) as info:
        v2v.run(make_input(video_url="https://videos.test/missing.mp4"), ctx)
    assert info.value.errors[0]["loc"] == ["body", "video_url"]


def test_cancellation_stops_at_the_next_step(vctx: Any) -> None:
    vctx.cancel_when = lambda c: len(c.step_logs()) >= 2
    with pytest.raises(JobCancelledError):
        v2v.run(make_input(num_inference_steps=8, strength=1.0), vctx)
    assert vctx.step_logs() == ["step 1/8", "step 2/8"]
    assert vctx.outputs == {}
