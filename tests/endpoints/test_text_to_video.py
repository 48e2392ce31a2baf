"""`fal-ai/fast-animatediff/text-to-video` run directly on the tiny AnimateDiff checkpoints.

Small requests (64×64, a few frames, 2 steps) keep each run around a second on a CPU; one test runs
the endpoint's defaults (512×512, 16 frames, 25 steps, CFG).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from diffusers import AnimateDiffPipeline

from motionserve.endpoints import text_to_video as t2v
from motionserve.endpoints.base import Limits
from motionserve.errors import InputValidationError, JobCancelledError

SMALL = {"video_size": {"width": 64, "height": 64}, "num_frames": 6, "num_inference_steps": 2}


def make_input(**fields: Any) -> t2v.Input:
    payload = {"prompt": "a red fox running through snow", "seed": 7, **SMALL, **fields}
    return t2v.ENDPOINT.validate(payload, Limits())  # type: ignore[return-value]


def plain_pipeline(pipe: Any) -> AnimateDiffPipeline:
    """diffusers' own AnimateDiffPipeline over the very same modules (the reference for equivalence)."""
    plain = AnimateDiffPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    return plain


# -- schema ------------------------------------------------------------------------------------------


def test_defaults_are_fals() -> None:
    inputs = t2v.Input(prompt="x")
    assert inputs.negative_prompt == "(bad quality, worst quality:1.2), ugly faces, bad anime"
    assert (inputs.num_frames, inputs.num_inference_steps, inputs.guidance_scale, inputs.fps) == (16, 25, 7.5, 8)
    assert inputs.video_size == t2v.VideoSizePreset.square and inputs.seed is None and inputs.motions is None
    assert t2v.ImageSize().width == t2v.ImageSize().height == 512


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("square_hd", (1024, 1024)),
        ("square", (512, 512)),
        ("portrait_4_3", (768, 1024)),
        ("portrait_16_9", (576, 1024)),
        ("landscape_4_3", (1024, 768)),
        ("landscape_16_9", (1024, 576)),
        ({"width": 640, "height": 360}, (640, 360)),
        ({"width": 100, "height": 203}, (104, 200)),  # rounded to the nearest multiple of 8
    ],
)
def test_video_size_resolves_to_pixels(size: Any, expected: tuple[int, int]) -> None:
    assert t2v.resolve_size(make_input(video_size=size).video_size) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("video_size", "huge"),
        ("video_size", {"width": 32, "height": 512}),
        ("video_size", {"width": 512, "height": 4096}),
        ("motions", ["zoom-in", "spin"]),
        ("num_inference_steps", 0),
        ("guidance_scale", 25),
        ("num_frames", 0),
    ],
)
def test_invalid_fields_are_422_on_that_field(field: str, value: Any) -> None:
    with pytest.raises(InputValidationError) as info:
        make_input(**{field: value})
    assert info.value.status_code == 422
    assert all(e["loc"][:2] == ["body", field] for e in info.value.errors)


def test_frames_over_the_cap_are_422_naming_the_limit() -> None:
    with pytest.raises(InputValidationError) as info:
        t2v.ENDPOINT.validate({"prompt": "x", "num_frames": 65}, Limits(max_frames=64))
    [error] = info.value.errors
    assert error["loc"] == ["body", "num_frames"]
    assert "64" in error["msg"] and "max_frames" in error["msg"]
    t2v.ENDPOINT.validate({"prompt": "x", "num_frames": 64}, Limits(max_frames=64))


# -- output ------------------------------------------------------------------------------------------


def test_output_is_an_h264_mp4_with_the_requested_frames_size_and_rate(ctx: Any, probe_mp4: Any) -> None:
    out = t2v.run(make_input(num_frames=5, fps=12, video_size={"width": 96, "height": 64}), ctx)
    assert out.seed == 7
    assert out.video.content_type == "video/mp4" and out.video.file_name == "output.mp4"
    data = ctx.output_bytes(out.video)
    assert out.video.file_size == len(data)
    facts = probe_mp4(data)
    assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p" and "mp4" in facts["format"]
    assert (facts["width"], facts["height"], facts["frames"], facts["fps"]) == (96, 64, 5, 12.0)


def test_logs_every_denoising_step(ctx: Any) -> None:
    t2v.generate(make_input(num_inference_steps=3), ctx)
    assert ctx.step_logs() == ["step 1/3", "step 2/3", "step 3/3"]


def test_num_frames_and_size_shape_the_frames(ctx: Any) -> None:
    frames, _ = t2v.generate(make_input(num_frames=3, video_size={"width": 64, "height": 80}), ctx)
    assert frames.shape == (3, 80, 64, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0


# -- seeds -------------------------------------------------------------------------------------------


def test_same_seed_is_bit_reproducible_and_another_seed_differs(ctx: Any) -> None:
    a, _ = t2v.generate(make_input(seed=123), ctx)
    b, _ = t2v.generate(make_input(seed=123), ctx)
    c, _ = t2v.generate(make_input(seed=124), ctx)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_without_a_seed_a_random_one_is_returned_and_reproduces(ctx: Any) -> None:
    first, seed = t2v.generate(make_input(seed=None), ctx)
    _, other_seed = t2v.generate(make_input(seed=None), ctx)
    assert isinstance(seed, int) and seed != other_seed
    again, _ = t2v.generate(make_input(seed=seed), ctx)
    assert np.array_equal(first, again)


# -- prompts and motions -----------------------------------------------------------------------------


def test_prompt_weighting_changes_the_output(ctx: Any) -> None:
    plain, _ = t2v.generate(make_input(negative_prompt="ugly faces"), ctx)
    weighted, _ = t2v.generate(make_input(negative_prompt="(ugly:1.5) faces"), ctx)
    neutral, _ = t2v.generate(make_input(negative_prompt="(ugly:1.0) faces"), ctx)
    assert not np.allclose(plain, weighted)
    assert np.array_equal(plain, neutral)  # weight 1.0 is the plain prompt


def test_motions_change_the_output_combine_and_are_removed_afterwards(ctx: Any) -> None:
    before, _ = t2v.generate(make_input(), ctx)
    zoom, _ = t2v.generate(make_input(motions=["zoom-in"]), ctx)
    pan, _ = t2v.generate(make_input(motions=["pan-left"]), ctx)
    both, _ = t2v.generate(make_input(motions=["zoom-in", "pan-left"]), ctx)
    after, _ = t2v.generate(make_input(), ctx)
    assert not np.allclose(before, zoom) and not np.allclose(zoom, pan)
    assert not np.allclose(both, zoom) and not np.allclose(both, pan)
    assert np.array_equal(before, after)
    assert ctx.models.text_to_video().get_list_adapters() == {}


# -- equivalence with diffusers ----------------------------------------------------------------------


def test_frames_equal_the_plain_diffusers_pipeline(ctx: Any) -> None:
    inputs = make_input(negative_prompt="blurry, low quality", guidance_scale=6.0)
    frames, seed = t2v.generate(inputs, ctx)
    import torch

    expected = plain_pipeline(ctx.models.text_to_video())(
        prompt=inputs.prompt,
        negative_prompt=inputs.negative_prompt,
        num_frames=6,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).frames[0]
    np.testing.assert_allclose(frames, expected, atol=1e-5)


def test_motion_frames_equal_diffusers_with_the_motion_loras_loaded(ctx: Any) -> None:
    import torch

    inputs = make_input(negative_prompt="blurry", motions=["tilt-up", "rolling-clockwise"])
    frames, seed = t2v.generate(inputs, ctx)
    plain = plain_pipeline(ctx.models.text_to_video())
    try:
        for motion in ("tilt-up", "rolling-clockwise"):
            plain.load_lora_weights(str(ctx.models.motion_lora_path(motion)), adapter_name=motion)
        plain.set_adapters(["tilt-up", "rolling-clockwise"], adapter_weights=[1.0, 1.0])
        expected = plain(
            prompt=inputs.prompt, negative_prompt="blurry", num_frames=6, height=64, width=64,
            num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).frames[0]
    finally:
        plain.unload_lora_weights()
    np.testing.assert_allclose(frames, expected, atol=1e-5)


# -- long clips, cancellation, defaults --------------------------------------------------------------


def test_more_than_32_frames_use_batched_windows_and_match_diffusers_looped_freenoise(ctx: Any, probe_mp4: Any) -> None:
    """40 frames in windows of 16 overlapping by 4 (the defaults: windows at 0, 12, 24), through the
    project's windowed blocks (one window per call on this CPU), give diffusers' FreeNoise frames."""
    import torch
    from diffusers.models.attention import FreeNoiseTransformerBlock

    from motionserve.inference.context_windows import BatchedWindowsBlock

    inputs = make_input(num_frames=40, negative_prompt="blurry")
    frames, seed = t2v.generate(inputs, ctx)
    assert frames.shape[0] == 40
    assert any("FreeNoise" in line for line in ctx.logs)
    pipe = ctx.models.text_to_video()
    assert any(isinstance(m, BatchedWindowsBlock) for m in pipe.unet.modules())

    # diffusers' own looped blocks for the reference, in a copy of the UNet: diffusers' FreeNoise switch
    # copies the weights, and the session's pipelines must keep sharing the motion adapter's tensors.
    plain = AnimateDiffPipeline(**{**pipe.components, "unet": copy.deepcopy(pipe.unet)})
    plain.set_progress_bar_config(disable=True)
    plain.disable_free_noise()
    windows = ctx.models.context_windows
    plain.enable_free_noise(context_length=windows.length, context_stride=windows.stride)
    try:
        assert any(type(m) is FreeNoiseTransformerBlock for m in plain.unet.modules())
        expected = plain(
            prompt=inputs.prompt, negative_prompt="blurry", num_frames=40, height=64, width=64,
            num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).frames[0]
    finally:
        plain.disable_free_noise()
    np.testing.assert_allclose(frames, expected, atol=1e-4)

    # Same seed and settings again: the very same frames.
    again, _ = t2v.generate(make_input(num_frames=40, negative_prompt="blurry", seed=seed), ctx)
    assert np.array_equal(frames, again)

    # A short request afterwards runs without windows again: same as before any long request.
    short_a, _ = t2v.generate(make_input(), ctx)
    pipe.disable_free_noise()
    short_b, _ = t2v.generate(make_input(), ctx)
    assert np.array_equal(short_a, short_b)


def test_cancellation_stops_at_the_next_step(ctx: Any) -> None:
    ctx.cancel_when = lambda c: len(c.step_logs()) >= 1
    with pytest.raises(JobCancelledError):
        t2v.run(make_input(num_inference_steps=5), ctx)
    assert ctx.step_logs() == ["step 1/5"]
    assert ctx.outputs == {}


@pytest.fixture
def one_thread() -> Any:
    """One torch thread: on a small shared CPU, OpenMP threads waiting for a busy core cost far more
    than they gain (the default request takes ~11 s on one core, minutes when oversubscribed)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_request_at_the_defaults_runs(ctx: Any, probe_mp4: Any, one_thread: None) -> None:
    out = t2v.run(t2v.Input(prompt="masterpiece, best quality, cherry blossoms", seed=1), ctx)
    facts = probe_mp4(ctx.output_bytes(out.video))
    assert (facts["width"], facts["height"], facts["frames"], facts["fps"]) == (512, 512, 16, 8.0)
    assert len(ctx.step_logs()) == 25
