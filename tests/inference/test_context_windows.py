"""Batched context windows (inference/context_windows.py) against diffusers' looped FreeNoise block."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock
from pydantic import ValidationError

from motionserve.config import Settings
from motionserve.inference.context_windows import BatchedWindowsBlock, ContextWindows, window_starts
from motionserve.inference.models import ModelManager

# A motion module's temporal block, as AnimateDiff builds them (self-attention twice, sinusoidal
# positions up to 32 frames), small.
BLOCK = {
    "dim": 32, "num_attention_heads": 2, "attention_head_dim": 16, "cross_attention_dim": None,
    "double_self_attention": True, "positional_embeddings": "sinusoidal", "num_positional_embeddings": 32,
}
# Float32 on the CPU: the same arithmetic per window, in another batch shape. It came out bit-identical
# here; the tolerance allows for kernels that block the batch axis differently.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def basic() -> BasicTransformerBlock:
    torch.manual_seed(0)
    block = BasicTransformerBlock(**BLOCK).eval()
    with torch.no_grad():
        for parameter in block.parameters():  # away from the identity-like initial norms and biases
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return block


def _diffusers_loop(basic: BasicTransformerBlock, windows: ContextWindows) -> FreeNoiseTransformerBlock:
    looped = FreeNoiseTransformerBlock(**BLOCK, context_length=windows.length, context_stride=windows.stride).eval()
    looped.load_state_dict(basic.state_dict())
    return looped


@pytest.mark.parametrize(
    ("frames", "length", "overlap"),
    [(64, 16, 4), (64, 16, 12), (40, 16, 4), (48, 16, 8), (36, 12, 6)],  # tilings without a tail window
)
def test_batched_windows_equal_diffusers_looped_windows(basic: BasicTransformerBlock, frames: int, length: int, overlap: int) -> None:
    windows = ContextWindows(length, overlap)
    batched = BatchedWindowsBlock.from_block(basic, windows, "pyramid").eval()
    hidden = torch.randn(2 * 3 * 3, frames, BLOCK["dim"], generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        torch.testing.assert_close(batched(hidden), _diffusers_loop(basic, windows)(hidden), **TOLERANCE)


@pytest.mark.parametrize("frames", [40, 45, 64, 77])
@pytest.mark.parametrize("per_call", [1, 2, 3])
def test_windows_in_groups_equal_all_at_once(basic: BasicTransformerBlock, frames: int, per_call: int) -> None:
    """`windows_per_call` (1: one window per call, a plain loop) changes memory, not the result; also
    with a tail window (45 and 77 frames)."""
    batched = BatchedWindowsBlock.from_block(basic, ContextWindows(16, 4), "pyramid").eval()
    hidden = torch.randn(9, frames, BLOCK["dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        everything = batched(hidden)
        batched.windows_per_call = per_call
        torch.testing.assert_close(batched(hidden), everything, **TOLERANCE)


def test_tail_window_frames_are_a_weighted_mean(basic: BasicTransformerBlock) -> None:
    """45 frames: windows at 0, 12, 24 and a tail at 29. The last five frames are in the tail window only,
    so they must equal that window's own result (a mean over one window is the window)."""
    windows = ContextWindows(16, 4)
    batched = BatchedWindowsBlock.from_block(basic, windows, "pyramid").eval()
    hidden = torch.randn(9, 45, BLOCK["dim"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = batched(hidden)
        plain = BasicTransformerBlock(**BLOCK).eval()
        plain.load_state_dict(basic.state_dict())
        alone = plain(hidden[:, 29:45])
    torch.testing.assert_close(whole[:, 40:], alone[:, 11:], **TOLERANCE)


@pytest.mark.parametrize(
    ("frames", "length", "stride", "starts"),
    [(64, 16, 12, [0, 12, 24, 36, 48]), (64, 16, 4, list(range(0, 49, 4))), (45, 16, 12, [0, 12, 24, 29]),
     (16, 16, 12, [0]), (33, 16, 16, [0, 16, 17])],
)
def test_window_starts(frames: int, length: int, stride: int, starts: list[int]) -> None:
    assert window_starts(frames, length, stride) == starts


def test_windows_cover_every_frame_and_overlap_costs_work() -> None:
    for overlap, slots in ((0, 64), (4, 80), (8, 112), (12, 208)):  # frame-slots the windows hold for 64 frames
        windows = ContextWindows(16, overlap)
        starts = window_starts(64, windows.length, windows.stride)
        covered = {s + i for s in starts for i in range(windows.length)}
        assert covered == set(range(64)) and len(starts) * windows.length == slots


def test_settings_bound_length_and_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (Settings().context_length, Settings().context_overlap) == (16, 4)
    monkeypatch.setenv("MOTIONSERVE_CONTEXT_LENGTH", "24")
    monkeypatch.setenv("MOTIONSERVE_CONTEXT_OVERLAP", "8")
    settings = Settings()
    assert ModelManager.from_settings(settings, "cpu").context_windows == ContextWindows(24, 8, per_call=1)
    for length, overlap in (("16", "16"), ("16", "-1"), ("33", "4"), ("1", "0")):
        monkeypatch.setenv("MOTIONSERVE_CONTEXT_LENGTH", length)
        monkeypatch.setenv("MOTIONSERVE_CONTEXT_OVERLAP", overlap)
        with pytest.raises(ValidationError):
            Settings()
    with pytest.raises(ValueError):
        ContextWindows(16, 16)
    with pytest.raises(ValueError):
        ContextWindows(16, 4, per_call=0)


def test_windows_run_one_per_call_on_a_cpu_and_all_at_once_on_a_gpu() -> None:
    assert ContextWindows.for_device(torch.device("cpu"), 16, 4) == ContextWindows(16, 4, per_call=1)
    assert ContextWindows.for_device(torch.device("cuda", 1), 24, 8) == ContextWindows(24, 8, per_call=None)
