"""`fal-ai/animatediff-v2v/turbo` run directly on the tiny AnimateLCM checkpoints.

The working area is shrunk (512×512 -> 64×48 pixels) so a request takes about a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save

from motionserve.endpoints import turbo
from motionserve.endpoints.base import Limits
from motionserve.errors import InputValidationError, JobCancelledError
from tests.endpoints.conftest import RecordingContext, visibly_different
from tests.media import decode_mp4, make_png, make_video

VIDEO_URL = "https://videos.test/input.mp4"
LORA_URL = "https://loras.test/style.safetensors"
PROMPT = "a red car on a road"
# Most requests run 4 steps (fal's minimum) to keep the suite quick; the defaults get their own test.
QUICK = {"seed": 7, "num_inference_steps": 4}


@pytest.fixture(scope="module", autouse=True)
def small_working_area() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(turbo, "WORKING_AREA", 64 * 48)
        yield


@pytest.fixture(scope="module")
def user_lora(tiny_weights: Path) -> Path:
    return tiny_weights / "user-lora.safetensors"


def source_video(frames: int = 12) -> bytes:
    return make_video(width=64, height=48, fps=8, frames=frames, pattern="gradient")


def run(new_ctx: Any, *, video: bytes | None = None, max_frames: int = 128, ctx: RecordingContext | None = None, **fields: Any) -> tuple[turbo.Output, RecordingContext]:
    ctx = ctx or new_ctx(max_frames)
    ctx.add_input(VIDEO_URL, video if video is not None else source_video())
    inputs = turbo.ENDPOINT.validate({"video_url": VIDEO_URL, "prompt": PROMPT, **fields}, Limits(max_frames=max_frames))
    return turbo.run(inputs, ctx), ctx


def pixels(data: bytes) -> np.ndarray:
    return np.stack(decode_mp4(data)["frames"]).astype(np.int16)


def user_adapters(models: Any) -> list[str]:
    pipe = models.turbo()
    listed = [n for names in pipe.get_list_adapters().values() for n in names]
    return [n for n in listed if n != "lcm"] + [n for n in pipe.get_active_adapters() if n != "lcm"]


@pytest.fixture(scope="module")
def baseline(new_ctx: Any) -> np.ndarray:
    """The QUICK request's encoded frames (compared bit-exactly: MP4 bytes may vary, see conftest)."""
    output, ctx = run(new_ctx, **QUICK)
    return ctx.output_frames(output.video)


# ------------------------------------------------------------------------------------------ output


def test_default_request_is_an_h264_mp4_of_every_second_frame(new_ctx: Any) -> None:
    output, ctx = run(new_ctx, seed=7)
    data = ctx.output_bytes(output.video)
    info = decode_mp4(data)
    assert len(info["frames"]) == 6  # 12 source frames, every 2nd
    assert info["fps"] == pytest.approx(4)  # 8 fps / 2: same duration as the source
    assert info["size"] == (64, 48)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert output.video.content_type == "video/mp4" and output.video.file_size == len(data)
    assert output.seed == 7
    assert set(output.timings) == {"fetch", "decode", "load", "loras", "inference", "encode", "upload"}
    assert all(v >= 0 for v in output.timings.values())
    assert ctx.step_logs() == [f"step {i}/8" for i in range(1, 9)]
    assert np.std(pixels(data)) > 1


def test_seed_is_reproducible(new_ctx: Any, baseline: np.ndarray) -> None:
    again, ctx = run(new_ctx, **QUICK)
    assert np.array_equal(ctx.output_frames(again.video), baseline)
    other, ctx_other = run(new_ctx, **{**QUICK, "seed": 8})
    assert visibly_different(ctx_other.output_frames(other.video), baseline)


@pytest.mark.parametrize("n, frames, fps", [(1, 12, 8.0), (3, 4, 8 / 3)])
def test_select_every_nth_frame_sets_frame_count_and_rate(new_ctx: Any, n: int, frames: int, fps: float) -> None:
    output, ctx = run(new_ctx, **QUICK, select_every_nth_frame=n)
    info = decode_mp4(ctx.output_bytes(output.video))
    assert len(info["frames"]) == frames
    assert info["fps"] == pytest.approx(fps, rel=1e-3)


@pytest.mark.parametrize(
    "field, value",
    [("prompt", "a (blue:1.4) boat at sea"), ("negative_prompt", "blurry"), ("num_inference_steps", 5), ("guidance_scale", 1.0)],
)
def test_each_input_changes_the_video(new_ctx: Any, baseline: np.ndarray, field: str, value: Any) -> None:
    output, ctx = run(new_ctx, **{**QUICK, field: value})
    assert visibly_different(ctx.output_frames(output.video), baseline)
    if field == "num_inference_steps":
        assert len(ctx.step_logs()) == 5


def test_equivalent_to_plain_diffusers_pipeline(new_ctx: Any, models: Any) -> None:
    """Same components and arguments, same seed: the endpoint's pixels are the pipeline's."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    from motionserve.inference import video_io

    output, ctx = run(new_ctx, seed=11, num_inference_steps=4, negative_prompt="blurry, low quality")
    plain = AnimateDiffVideoToVideoPipeline(**models.turbo().components)
    clip = video_io.decode_video(source_video(), every_nth=2)
    frames = plain(
        video=clip.frames,
        prompt=PROMPT,
        negative_prompt="blurry, low quality",
        num_inference_steps=4,
        enforce_inference_steps=True,
        strength=turbo.STRENGTH,
        guidance_scale=2.2,
        height=48,
        width=64,
        generator=torch.Generator("cpu").manual_seed(11),
        output_type="np",
    ).frames[0]
    assert np.array_equal(np.stack(list(frames)), ctx.output_frames(output.video))


def test_long_clip_uses_context_windows_then_later_requests_do_not(new_ctx: Any, baseline: np.ndarray) -> None:
    output, ctx = run(new_ctx, video=source_video(70), **QUICK)
    info = decode_mp4(ctx.output_bytes(output.video))
    assert len(info["frames"]) == 35  # beyond the motion modules' 32 frames
    assert any("context windows" in m for m in ctx.logs)
    # The shared pipeline is back to plain motion modules: a short clip gives the same video as before.
    again, ctx_again = run(new_ctx, **QUICK)
    assert np.array_equal(ctx_again.output_frames(again.video), baseline)


def test_real_working_area_keeps_the_aspect_ratio(new_ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turbo, "WORKING_AREA", 512 * 512)  # the product value (this module shrinks it)
    video = make_video(width=96, height=54, fps=8, frames=4, pattern="gradient")
    output, ctx = run(new_ctx, video=video, **QUICK)
    info = decode_mp4(ctx.output_bytes(output.video))
    assert info["size"] == (680, 384)  # 16:9 at about 512×512 pixels, sides multiples of 8
    assert len(info["frames"]) == 2


def test_more_frames_than_the_cap_is_422_naming_it(new_ctx: Any) -> None:
    with pytest.raises(InputValidationError) as info:
        run(new_ctx, max_frames=10, select_every_nth_frame=1)  # 12 frames
    error = info.value.errors[0]
    assert error["loc"] == ["body", "video_url"]
    assert "10" in error["msg"] and "max_frames" in error["msg"]
    # Sampling brings it under the cap: 12 frames, every 2nd = 6. Unseeded: a seed is drawn and reported.
    output, ctx = run(new_ctx, max_frames=10, num_inference_steps=4)
    assert len(decode_mp4(ctx.output_bytes(output.video))["frames"]) == 6
    assert isinstance(output.seed, int) and 0 <= output.seed < 2**32


def test_unreadable_video_is_422_on_video_url(new_ctx: Any) -> None:
    with pytest.raises(InputValidationError) as info:
        run(new_ctx, video=make_png())
    assert info.value.errors[0]["loc"] == ["body", "video_url"]


def test_cancel_stops_at_the_next_step_and_unloads_loras(new_ctx: Any, models: Any, user_lora: Path) -> None:
    ctx = new_ctx()
    ctx.cancel_when = lambda c: len(c.step_logs()) >= 2
    with pytest.raises(JobCancelledError):
        run(new_ctx, ctx=ctx, **QUICK, loras=[{"path": str(user_lora)}])
    assert ctx.step_logs() == ["step 1/4", "step 2/4"]
    assert ctx.outputs == {}
    assert user_adapters(models) == []


# ------------------------------------------------------------------------------------------ LoRAs


def test_lora_changes_the_video_and_is_unloaded_afterwards(new_ctx: Any, models: Any, baseline: np.ndarray, user_lora: Path) -> None:
    output, ctx = run(new_ctx, **QUICK, loras=[{"path": str(user_lora), "scale": 1.0}])
    assert visibly_different(ctx.output_frames(output.video), baseline)
    assert output.timings["loras"] >= 0
    assert user_adapters(models) == []
    again, ctx_again = run(new_ctx, **QUICK)
    assert np.array_equal(ctx_again.output_frames(again.video), baseline)


def test_lora_from_url_equals_lora_from_path_and_scale_matters(new_ctx: Any, baseline: np.ndarray, user_lora: Path) -> None:
    by_path, ctx_path = run(new_ctx, **QUICK, loras=[{"path": str(user_lora), "scale": 0.5}])
    ctx = new_ctx()
    ctx.add_input(LORA_URL, user_lora.read_bytes())
    by_url, ctx = run(new_ctx, ctx=ctx, **QUICK, loras=[{"path": LORA_URL, "scale": 0.5}])
    assert np.array_equal(ctx.output_frames(by_url.video), ctx_path.output_frames(by_path.video))
    zero, ctx_zero = run(new_ctx, **QUICK, loras=[{"path": str(user_lora), "scale": 0.0}])
    assert np.array_equal(ctx_zero.output_frames(zero.video), baseline)  # scale 0: the LoRA adds nothing
    assert visibly_different(ctx_zero.output_frames(zero.video), ctx_path.output_frames(by_path.video))


def test_lora_on_the_motion_modules_does_not_break_later_long_clips(new_ctx: Any, models: Any, baseline: np.ndarray, tiny_weights: Path) -> None:
    """A user LoRA may target the temporal layers (a motion LoRA); FreeNoise must still toggle afterwards."""
    motion_lora = tiny_weights / "motion-loras" / "zoom-in" / "pytorch_lora_weights.safetensors"
    run(new_ctx, **QUICK, loras=[{"path": str(motion_lora)}])
    long_clip, ctx = run(new_ctx, video=source_video(70), **QUICK, loras=[{"path": str(motion_lora)}])
    assert len(decode_mp4(ctx.output_bytes(long_clip.video))["frames"]) == 35
    run(new_ctx, video=source_video(70), **QUICK)
    again, ctx_again = run(new_ctx, **QUICK)
    assert np.array_equal(ctx_again.output_frames(again.video), baseline)
    assert user_adapters(models) == []


def _bad_loras(tmp: Path, user_lora: Path) -> dict[str, tuple[str, bytes | None]]:
    """name -> (path, bytes served at that URL or None)."""
    good = load_file(str(user_lora))
    misfit = {k: torch.zeros(2, 2) for k in good}  # LoRA keys, wrong shapes for this UNet
    pickle = tmp / "lora.bin"
    pickle.write_bytes(b"\x80\x04not really")
    return {
        "garbage_url": ("https://loras.test/garbage.safetensors", b"not a safetensors file"),
        "not_lora_keys": ("https://loras.test/plain.safetensors", save({"conv.weight": torch.zeros(3)})),
        "no_keys": ("https://loras.test/empty.safetensors", save({})),
        "wrong_shapes": ("https://loras.test/misfit.safetensors", save(misfit)),
        "unreachable_url": ("https://loras.test/missing.safetensors", None),
        "missing_local": (str(tmp / "nope.safetensors"), None),
        "pickle_file": (str(pickle), None),
        "bad_repo_id": ("not a repo id", None),
    }


@pytest.mark.parametrize(
    "case", ["garbage_url", "not_lora_keys", "no_keys", "wrong_shapes", "unreachable_url", "missing_local", "pickle_file", "bad_repo_id"]
)
def test_bad_lora_is_422_on_its_path_and_leaves_the_pipeline_clean(
    new_ctx: Any, models: Any, baseline: np.ndarray, user_lora: Path, tmp_path: Path, case: str
) -> None:
    path, data = _bad_loras(tmp_path, user_lora)[case]
    ctx = new_ctx()
    if data is not None:
        ctx.add_input(path, data)
    # The bad one second: the good first one must be removed too.
    with pytest.raises(InputValidationError) as info:
        run(new_ctx, ctx=ctx, **QUICK, loras=[{"path": str(user_lora)}, {"path": path}])
    error = info.value.errors[0]
    assert error["loc"] == ["body", "loras", 1, "path"]
    assert error["msg"] and len(error["msg"]) <= 400
    assert user_adapters(models) == []
    if case == "wrong_shapes":  # diffusers had injected layers before failing: the next request is clean anyway
        again, ctx_again = run(new_ctx, **QUICK)
        assert np.array_equal(ctx_again.output_frames(again.video), baseline)


def test_hub_lora_that_cannot_be_had_offline_is_422(new_ctx: Any, models: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputValidationError) as info:
        run(new_ctx, **QUICK, loras=[{"path": "motionserve-tests/no-such-lora"}])
    assert info.value.errors[0]["loc"] == ["body", "loras", 0, "path"]
    assert user_adapters(models) == []


# ------------------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    "extra, loc",
    [
        ({"num_inference_steps": 3}, ["body", "num_inference_steps"]),
        ({"num_inference_steps": 13}, ["body", "num_inference_steps"]),
        ({"guidance_scale": 0.9}, ["body", "guidance_scale"]),
        ({"guidance_scale": 2.6}, ["body", "guidance_scale"]),
        ({"select_every_nth_frame": 0}, ["body", "select_every_nth_frame"]),
        ({"loras": [{"scale": 1.0}]}, ["body", "loras", 0, "path"]),
    ],
)
def test_out_of_range_inputs_are_422(extra: dict, loc: list) -> None:
    with pytest.raises(InputValidationError) as info:
        turbo.ENDPOINT.validate({"video_url": VIDEO_URL, "prompt": PROMPT, **extra}, Limits())
    assert [e["loc"] for e in info.value.errors] == [loc]


def test_defaults_match_fal() -> None:
    inputs = turbo.ENDPOINT.validate({"video_url": VIDEO_URL, "prompt": PROMPT, "loras": [{"path": "a/b"}]}, Limits())
    assert inputs.negative_prompt == "(bad quality, worst quality:1.2), ugly faces, bad anime"
    assert (inputs.num_inference_steps, inputs.guidance_scale, inputs.select_every_nth_frame, inputs.seed) == (8, 2.2, 2, None)
    assert inputs.loras[0].scale == 1.0
    assert turbo.ENDPOINT.validate({"video_url": VIDEO_URL, "prompt": PROMPT}, Limits()).loras == []
