"""Context windows for clips longer than the motion modules attend over, with the windows batched.

AnimateDiff's motion modules attend over at most 32 frames. Longer clips go through FreeNoise's sliding
windows: every temporal transformer block runs its attention on windows of `length` frames, neighbours
sharing `overlap` frames, and each frame's result is the pyramid-weighted mean over the windows it is in.
diffusers' `FreeNoiseTransformerBlock` runs those windows one after another in a Python loop, each with
its own slice, weighting and accumulation. `BatchedWindowsBlock` stacks the windows along the batch axis
(the motion modules' batch is batch × height × width already, every row an independent sequence), runs
the normalisations and attentions once, and scatters the weighted results back with one `index_add_`.
Same parameters and the same arithmetic per window, so the output equals the loop's to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock, _chunked_feed_forward


@dataclass(frozen=True)
class ContextWindows:
    """Window length and overlap in frames (operator settings `context_length`, `context_overlap`), and
    how many windows of a block run in one call (`BatchedWindowsBlock.windows_per_call`; None: all)."""

    length: int = 16
    overlap: int = 4
    per_call: int | None = None

    @classmethod
    def for_device(cls, device: torch.device, length: int = 16, overlap: int = 4) -> "ContextWindows":
        """All windows in one call on a GPU, where that turns each block's rounds of small kernel launches
        into one. One per call on a CPU: one thread does the same arithmetic either way, and the batch
        only holds every window's activations at once (64 frames took 3% more time batched in
        bench/bench_windows.py, bench/README.md)."""
        return cls(length, overlap, per_call=1 if device.type == "cpu" else None)

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.length:
            raise ValueError(f"context overlap must be at least 0 and below the length {self.length}, got {self.overlap}")
        if self.per_call is not None and self.per_call < 1:
            raise ValueError(f"windows per call must be at least 1, got {self.per_call}")

    @property
    def stride(self) -> int:
        """Frames from one window's start to the next's."""
        return self.length - self.overlap


def window_starts(num_frames: int, length: int, stride: int) -> list[int]:
    """First frame of each window: every `stride` frames, and one more ending on the last frame when
    the stride does not land there (FreeNoise's tiling)."""
    if num_frames < length:
        raise ValueError(f"context windows of {length} frames need at least {length} frames, got {num_frames}")
    starts = list(range(0, num_frames - length + 1, stride))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return starts


class BatchedWindowsBlock(FreeNoiseTransformerBlock):
    """A FreeNoise temporal transformer block whose windows run as one batch.

    A subclass, so the modules keep their names (motion LoRAs load into them as into diffusers' block)
    and `disable_free_noise` turns it back into a plain block. `windows_per_call` bounds how many windows
    share one call (None: all); the activations of the windowed part grow with windows × length frames
    instead of the clip's frames, which a long clip at high resolution may not afford on a small device.

    One deliberate difference from diffusers 0.42: when the stride does not reach the last frame, the extra
    tail window contributes all its frames with their weights, so every frame is a true weighted mean;
    diffusers adds only the frames no earlier window covered and divides them by one frame's weight.
    When the windows tile the clip exactly (64 frames with length 16 and overlap 4 do) the two agree.
    """

    windows_per_call: int | None = None

    @classmethod
    def from_block(
        cls, block: BasicTransformerBlock | FreeNoiseTransformerBlock, windows: ContextWindows, weighting_scheme: str
    ) -> "BatchedWindowsBlock":
        """The windowed form of a motion module's plain block (or of diffusers' looped one), holding the
        block's own parameter tensors."""
        return _rebuild(cls, block, context_length=windows.length, context_stride=windows.stride,
                        weighting_scheme=weighting_scheme)

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        # hidden_states: [batch × height × width, frames, channels]
        rows, num_frames, channels = hidden_states.shape
        length = self.context_length
        starts = window_starts(num_frames, length, self.context_stride)
        weights = torch.tensor(self._get_frame_weights(length, self.weighting_scheme),
                               device=hidden_states.device, dtype=hidden_states.dtype)[:, None]
        accumulated = torch.zeros_like(hidden_states)
        # Float32 weight sums, as diffusers keeps them (exact: the pyramid's weights are small integers).
        weight_sums = torch.zeros(num_frames, 1, device=hidden_states.device, dtype=torch.float32)
        group = self.windows_per_call or len(starts)
        for first in range(0, len(starts), group):
            batch_starts = starts[first:first + group]
            count = len(batch_starts)
            frames = (torch.tensor(batch_starts, device=hidden_states.device)[:, None]
                      + torch.arange(length, device=hidden_states.device)).flatten()
            # [rows, windows × length, C] -> [rows × windows, length, C]: each window one more sequence.
            windowed = hidden_states[:, frames].reshape(rows * count, length, channels)
            windowed = self._attend(
                windowed,
                _per_window(attention_mask, count),
                _per_window(encoder_hidden_states, count),
                _per_window(encoder_attention_mask, count),
                cross_attention_kwargs,
            ).reshape(rows, count, length, channels)
            # Slice adds in window order rather than one index_add_: on CUDA that uses atomics, whose order
            # (and so the rounding, where three or more windows meet) would change from run to run.
            for i, start in enumerate(batch_starts):
                accumulated[:, start:start + length] += windowed[:, i] * weights
                weight_sums[start:start + length] += weights.float()
        hidden_states = (accumulated / weight_sums).to(hidden_states.dtype)

        # Feed-forward per frame, outside the windows (as in diffusers).
        norm_hidden_states = self.norm3(hidden_states)
        if self._chunk_size is not None:
            ff_output = _chunked_feed_forward(self.ff, norm_hidden_states, self._chunk_dim, self._chunk_size)
        else:
            ff_output = self.ff(norm_hidden_states)
        return ff_output + hidden_states

    def _attend(
        self,
        windowed: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None,
        cross_attention_kwargs: dict | None,
    ) -> torch.Tensor:
        """Self-attention then the second attention, each pre-normalised with a residual: the part of the
        block diffusers runs per window."""
        kwargs = dict(cross_attention_kwargs or {})
        kwargs.pop("scale", None)  # deprecated and ignored by diffusers' blocks too
        normed = self.norm1(windowed)
        if self.pos_embed is not None:
            normed = self.pos_embed(normed)
        windowed = windowed + self.attn1(
            normed,
            encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
            attention_mask=attention_mask,
            **kwargs,
        )
        if self.attn2 is not None:
            normed = self.norm2(windowed)
            if self.pos_embed is not None and self.norm_type != "ada_norm_single":
                normed = self.pos_embed(normed)
            windowed = windowed + self.attn2(
                normed, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs
            )
        return windowed


def set_windows_per_call(model: torch.nn.Module, per_call: int | None) -> None:
    """Bound how many windows every windowed block in `model` runs in one call (None: all)."""
    for module in model.modules():
        if isinstance(module, BatchedWindowsBlock):
            module.windows_per_call = per_call


def plain_block(block: FreeNoiseTransformerBlock) -> BasicTransformerBlock:
    """A windowed block back in its plain form, holding the same parameter tensors."""
    return _rebuild(BasicTransformerBlock, block)


def _rebuild(cls: type, block: BasicTransformerBlock | FreeNoiseTransformerBlock, **extra: object) -> Any:
    """`block` as a `cls` with the same configuration (what diffusers' FreeNoise passes on), built on the
    meta device and then given `block`'s tensors themselves. diffusers instead initialises a new block
    at random on the CPU and copies the weights in: seconds per switch at full size, and afterwards the
    motion adapter's tensors (which the UNet shares, inference/models.py) are held twice."""
    with torch.device("meta"):
        rebuilt = cls(
            dim=block.dim,
            num_attention_heads=block.num_attention_heads,
            attention_head_dim=block.attention_head_dim,
            dropout=block.dropout,
            cross_attention_dim=block.cross_attention_dim,
            activation_fn=block.activation_fn,
            attention_bias=block.attention_bias,
            only_cross_attention=block.only_cross_attention,
            double_self_attention=block.double_self_attention,
            positional_embeddings=block.positional_embeddings,
            num_positional_embeddings=block.num_positional_embeddings,
            **extra,
        )
    rebuilt.load_state_dict(block.state_dict(), strict=True, assign=True)
    rebuilt.set_chunk_feed_forward(block._chunk_size, block._chunk_dim)
    return rebuilt.train(block.training)


def _per_window(tensor: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """A per-row input repeated for each of a row's `count` windows (rows × windows, row-major)."""
    return None if tensor is None else tensor.repeat_interleave(count, dim=0)
