"""The helpers shared by the AnimateDiff-family handlers (endpoints/_animatediff.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers.models.attention import FreeNoiseTransformerBlock
from hypothesis import given
from hypothesis import strategies as st

from motionserve.endpoints._animatediff import (
    configure_context_windows,
    fit_to_area,
    make_generator,
    motion_loras,
    step_callback,
)
from motionserve.errors import JobCancelledError
from motionserve.inference.context_windows import BatchedWindowsBlock, ContextWindows


@pytest.mark.parametrize(
    ("size", "expected"),
    [((512, 512), (512, 512)), ((64, 48), (592, 440)), ((1920, 1080), (680, 384)), ((1080, 1920), (384, 680))],
)
def test_fit_to_area_examples(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert fit_to_area(*size) == expected


@given(st.integers(16, 8000), st.integers(16, 8000))
def test_fit_to_area_keeps_aspect_and_area_in_multiples_of_8(width: int, height: int) -> None:
    w, h = fit_to_area(width, height)
    assert w % 8 == 0 and h % 8 == 0 and w >= 8 and h >= 8
    if min(w, h) >= 64:  # rounding to 8 px matters little once both sides are not tiny
        assert abs(w / h - width / height) / (width / height) < 0.15
        assert 0.8 < (w * h) / (512 * 512) < 1.2


def test_fit_to_area_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError):
        fit_to_area(0, 10)


def test_make_generator_is_seeded_or_random() -> None:
    g1, s1 = make_generator(42, "cpu")
    g2, s2 = make_generator(42, "cpu")
    assert s1 == s2 == 42 and torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    _, a = make_generator(None, "cpu")
    _, b = make_generator(None, "cpu")
    assert a != b and 0 <= a < 2**32
    make_generator(2**70, "cpu")  # out-of-range seeds are folded, not an error


class _Ctx:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.logs: list[str] = []
        self.cancel_after = cancel_after

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append(message)

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.logs) >= self.cancel_after

    def preview_due(self, step: int, total_steps: int | None) -> bool:
        return False


def test_step_callback_logs_and_passes_tensors_through() -> None:
    ctx = _Ctx()
    callback = step_callback(ctx, 3)  # type: ignore[arg-type]
    kwargs = {"latents": torch.zeros(1)}
    assert callback(object(), 0, 999, kwargs) is kwargs
    callback(object(), 1, 500, kwargs)
    assert ctx.logs == ["step 1/3", "step 2/3"]


def test_step_callback_counts_the_pipelines_own_steps_by_default() -> None:
    ctx = _Ctx()

    class Pipe:
        num_timesteps = 17

    step_callback(ctx)(Pipe(), 0, 1, {})  # type: ignore[arg-type]
    assert ctx.logs == ["step 1/17"]


def test_step_callback_raises_once_cancelled() -> None:
    ctx = _Ctx(cancel_after=2)
    callback = step_callback(ctx, 5)  # type: ignore[arg-type]
    callback(object(), 0, 1, {})
    with pytest.raises(JobCancelledError):
        callback(object(), 1, 1, {})


def _free_noise_blocks(pipe: Any) -> int:
    return sum(isinstance(m, FreeNoiseTransformerBlock) for m in pipe.unet.modules())


def test_context_windows_follow_the_frame_count(tiny_models: Any) -> None:
    pipe = tiny_models.text_to_video()
    windows = tiny_models.context_windows
    assert configure_context_windows(pipe, 16, windows) is False and _free_noise_blocks(pipe) == 0
    assert configure_context_windows(pipe, 33, windows) is True and pipe.free_noise_enabled
    blocks = [m for m in pipe.unet.modules() if isinstance(m, FreeNoiseTransformerBlock)]
    assert blocks and all(isinstance(b, BatchedWindowsBlock) for b in blocks)
    # The defaults: overlap 4, and on this CPU one window per call.
    assert {(b.context_length, b.context_stride, b.windows_per_call) for b in blocks} == {(16, 12, 1)}
    # Idempotent, and other settings reach the same blocks.
    assert configure_context_windows(pipe, 48, ContextWindows(length=12, overlap=6)) is True
    assert [m for m in pipe.unet.modules() if isinstance(m, FreeNoiseTransformerBlock)] == blocks
    assert {(b.context_length, b.context_stride, b.windows_per_call) for b in blocks} == {(12, 6, None)}
    # Shared UNet: the v2v pipeline sees windows it did not enable and turns them off.
    v2v = tiny_models.video_to_video()
    assert configure_context_windows(v2v, 32, windows) is False
    assert _free_noise_blocks(pipe) == 0
    configure_context_windows(pipe, 8, windows)
    assert not pipe.free_noise_enabled


def test_switching_windows_keeps_the_motion_adapters_tensors(tiny_models: Any) -> None:
    """On and off, the motion modules keep the adapter's very tensors (no copy, no second set in memory)."""
    pipe = tiny_models.text_to_video()
    adapter = {p.data_ptr() for p in pipe.motion_adapter.parameters()}
    for frames in (40, 16, 48, 8):
        configure_context_windows(pipe, frames, tiny_models.context_windows)
        assert adapter <= {p.data_ptr() for p in pipe.unet.parameters()}
    assert not any(p.is_meta for p in pipe.unet.parameters()) and not any(b.is_meta for b in pipe.unet.buffers())


def test_motion_loras_are_loaded_once_each_and_removed_even_on_error(tiny_models: Any) -> None:
    pipe = tiny_models.text_to_video()
    with motion_loras(pipe, ["zoom-in", "zoom-in", "pan-left"], tiny_models.motion_lora_state_dict) as names:
        assert names == ["motion-zoom-in", "motion-pan-left"]
        assert sorted(pipe.get_active_adapters()) == sorted(names)
    assert pipe.get_list_adapters() == {}
    with pytest.raises(RuntimeError):
        with motion_loras(pipe, ["tilt-up"], tiny_models.motion_lora_state_dict):
            raise RuntimeError("denoising failed")
    assert pipe.get_list_adapters() == {}
    with motion_loras(pipe, [], tiny_models.motion_lora_state_dict) as names:
        assert names == []
