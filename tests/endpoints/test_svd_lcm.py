"""`fal-ai/fast-svd-lcm` run directly on the tiny SVD checkpoints.

The handler's working size is shrunk (WORKING_SIZE 1024×576 -> 64×32) so each request takes about a
second on a CPU; `working_size` itself is tested at the real defaults. A full-size run is opt-in
(MOTIONSERVE_FULL_SIZE_TESTS=1): the tiny temporal VAE decoder alone needs minutes at 1024×576 on a CPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from PIL import Image

from motionserve.endpoints import svd_lcm
from motionserve.endpoints.base import Limits
from motionserve.errors import InputValidationError, JobCancelledError
from tests.endpoints.conftest import RecordingContext, visibly_different
from tests.media import decode_mp4, make_png

IMAGE_URL = "https://images.test/input.png"
SMALL = (64, 32)


@pytest.fixture(scope="module", autouse=True)
def small_working_size() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(svd_lcm, "WORKING_SIZE", SMALL)
        yield


def make_ctx(new_ctx: Any, image: bytes | None = None) -> RecordingContext:
    ctx = new_ctx()
    ctx.add_input(IMAGE_URL, image if image is not None else make_png(96, 48, pattern="gradient"))
    return ctx


def run(new_ctx: Any, image: bytes | None = None, **fields: Any) -> tuple[svd_lcm.Output, RecordingContext]:
    ctx = make_ctx(new_ctx, image)
    inputs = svd_lcm.ENDPOINT.validate({"image_url": IMAGE_URL, **fields}, Limits())
    return svd_lcm.run(inputs, ctx), ctx


@pytest.fixture(scope="module")
def baseline(new_ctx: Any) -> tuple[svd_lcm.Output, np.ndarray]:
    """The seed-42 request and the frames it encoded (compared bit-exactly: MP4 bytes may vary, see conftest)."""
    output, ctx = run(new_ctx, seed=42)
    return output, ctx.output_frames(output.video)


# ------------------------------------------------------------------------------------------ output


def test_default_request_is_a_25_frame_h264_mp4(new_ctx: Any) -> None:
    output, ctx = run(new_ctx, seed=42)
    info = decode_mp4(ctx.output_bytes(output.video))
    assert len(info["frames"]) == 25
    assert info["size"] == SMALL
    assert info["fps"] == pytest.approx(10)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert output.video.content_type == "video/mp4"
    assert output.video.file_size == len(ctx.output_bytes(output.video))
    assert output.seed == 42
    # One log line per denoising step, as fal's logs stream shows progress.
    assert ctx.step_logs() == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    # Not a blank video: the frames carry signal.
    assert np.std(np.stack(info["frames"])) > 1


def test_seed_is_reproducible_and_reported(new_ctx: Any, baseline: tuple[svd_lcm.Output, np.ndarray]) -> None:
    _, frames = baseline
    again, ctx = run(new_ctx, seed=42)
    assert np.array_equal(ctx.output_frames(again.video), frames)
    other, ctx_other = run(new_ctx, seed=43)
    assert visibly_different(ctx_other.output_frames(other.video), frames)
    unseeded, _ = run(new_ctx)
    assert isinstance(unseeded.seed, int) and 0 <= unseeded.seed < 2**32


@pytest.mark.parametrize("field, value", [("motion_bucket_id", 255), ("cond_aug", 0.5), ("steps", 2), ("fps", 5)])
def test_each_input_changes_the_video(new_ctx: Any, baseline: tuple[svd_lcm.Output, np.ndarray], field: str, value: Any) -> None:
    _, frames = baseline
    output, ctx = run(new_ctx, seed=42, **{field: value})
    data = ctx.output_bytes(output.video)
    info = decode_mp4(data)
    assert len(info["frames"]) == 25
    if field == "fps":
        assert info["fps"] == pytest.approx(5)  # the MP4 plays at the requested rate...
    if field == "steps":
        assert len(ctx.step_logs()) == 2
    # ...and every input reaches the model: the pixels differ, not only the container.
    assert visibly_different(ctx.output_frames(output.video), frames)


def test_equivalent_to_plain_diffusers_pipeline(models: Any, baseline: tuple[svd_lcm.Output, np.ndarray]) -> None:
    """Same components, same arguments, same seed: the endpoint adds nothing to the pixels."""
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from motionserve.inference import video_io

    _, expected = baseline
    plain = StableVideoDiffusionPipeline(**models.svd_lcm().components)
    image = video_io.decode_image(make_png(96, 48, pattern="gradient"))
    image = svd_lcm.fit_image(image, SMALL)
    generator = torch.Generator("cpu").manual_seed(42)
    plain.scheduler.noise_generator = generator
    try:
        frames = plain(
            image,
            height=SMALL[1],
            width=SMALL[0],
            num_frames=25,
            num_inference_steps=4,
            min_guidance_scale=1.0,
            max_guidance_scale=1.0,
            fps=10,
            motion_bucket_id=127,
            noise_aug_strength=0.02,
            decode_chunk_size=8,
            generator=generator,
            output_type="np",
        ).frames[0]
    finally:
        plain.scheduler.noise_generator = None
    assert np.array_equal(np.stack(list(frames)), expected)


def test_pipeline_is_left_without_the_request_generator(models: Any, baseline: Any) -> None:
    assert models.svd_lcm().scheduler.noise_generator is None


# ------------------------------------------------------------------------------------------ size


@pytest.mark.parametrize(
    "size, expected",
    [
        ((1920, 1080), (1024, 576)),
        ((1024, 576), (1024, 576)),
        ((1080, 1920), (576, 1024)),
        ((1000, 1000), (768, 768)),
        ((1200, 1000), (768, 768)),
        ((1000, 1200), (768, 768)),
        ((1400, 1000), (1024, 576)),
        ((1000, 1400), (576, 1024)),
        ((4000, 100), (1024, 576)),
    ],
)
def test_working_size_at_defaults(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert svd_lcm.working_size(*size, (1024, 576)) == expected


def test_fit_image_centre_crops_without_squashing() -> None:
    array = np.zeros((100, 200, 3), np.uint8)
    array[:, :50] = (255, 0, 0)
    array[:, 50:150] = (0, 255, 0)
    array[:, 150:] = (0, 0, 255)
    fitted = svd_lcm.fit_image(Image.fromarray(array), (40, 40))
    assert fitted.size == (40, 40)
    pixels = np.asarray(fitted).reshape(-1, 3)
    assert pixels[:, 1].min() > 200 and pixels[:, 0].max() < 40 and pixels[:, 2].max() < 40


@pytest.mark.parametrize("image_size, video_size", [((48, 96), (32, 64)), ((80, 80), (48, 48))])
def test_portrait_and_square_inputs(new_ctx: Any, image_size: tuple[int, int], video_size: tuple[int, int]) -> None:
    output, ctx = run(new_ctx, make_png(*image_size, pattern="quadrants"), seed=1, steps=1)
    info = decode_mp4(ctx.output_bytes(output.video))
    assert info["size"] == video_size
    assert len(info["frames"]) == 25


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "payload, loc",
    [
        ({}, ["body", "image_url"]),
        ({"image_url": IMAGE_URL, "motion_bucket_id": 0}, ["body", "motion_bucket_id"]),
        ({"image_url": IMAGE_URL, "motion_bucket_id": 256}, ["body", "motion_bucket_id"]),
        ({"image_url": IMAGE_URL, "cond_aug": -0.1}, ["body", "cond_aug"]),
        ({"image_url": IMAGE_URL, "cond_aug": 10.5}, ["body", "cond_aug"]),
        ({"image_url": IMAGE_URL, "steps": 0}, ["body", "steps"]),
        ({"image_url": IMAGE_URL, "steps": 21}, ["body", "steps"]),
        ({"image_url": IMAGE_URL, "fps": 0}, ["body", "fps"]),
        ({"image_url": IMAGE_URL, "fps": 31}, ["body", "fps"]),
    ],
)
def test_out_of_range_inputs_are_422(payload: dict, loc: list) -> None:
    with pytest.raises(InputValidationError) as info:
        svd_lcm.ENDPOINT.validate(payload, Limits())
    assert info.value.status_code == 422
    assert [e["loc"] for e in info.value.errors] == [loc]


def test_defaults_match_fal() -> None:
    inputs = svd_lcm.ENDPOINT.validate({"image_url": IMAGE_URL}, Limits())
    assert (inputs.motion_bucket_id, inputs.cond_aug, inputs.steps, inputs.fps, inputs.seed) == (127, 0.02, 4, 10, None)


def test_unreadable_image_is_422_on_image_url(new_ctx: Any) -> None:
    with pytest.raises(InputValidationError) as info:
        run(new_ctx, b"this is not an image")
    assert info.value.errors[0]["loc"] == ["body", "image_url"]
    assert "image" in info.value.errors[0]["msg"].lower()


def test_unfetchable_image_is_422_on_image_url(new_ctx: Any) -> None:
    ctx = new_ctx()
    inputs = svd_lcm.ENDPOINT.validate({"image_url": "https://images.test/missing.png"}, Limits())
    with pytest.raises(InputValidationError) as info:
        svd_lcm.run(inputs, ctx)
    assert info.value.errors[0]["loc"] == ["body", "image_url"]


def test_cancel_stops_at_the_next_step(new_ctx: Any, models: Any) -> None:
    ctx = make_ctx(new_ctx)
    ctx.cancel_when = lambda c: len(c.step_logs()) >= 1
    inputs = svd_lcm.ENDPOINT.validate({"image_url": IMAGE_URL, "steps": 4}, Limits())
    with pytest.raises(JobCancelledError):
        svd_lcm.run(inputs, ctx)
    assert ctx.step_logs() == ["step 1/4"]
    assert ctx.outputs == {}
    assert models.svd_lcm().scheduler.noise_generator is None


@pytest.mark.skipif(os.environ.get("MOTIONSERVE_FULL_SIZE_TESTS") != "1", reason="minutes on a CPU; set MOTIONSERVE_FULL_SIZE_TESTS=1")
def test_default_size_1024x576(new_ctx: Any) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(svd_lcm, "WORKING_SIZE", (1024, 576))
        output, ctx = run(new_ctx, make_png(1280, 720, pattern="gradient"), seed=3)
    info = decode_mp4(ctx.output_bytes(output.video))
    assert info["size"] == (1024, 576) and len(info["frames"]) == 25
