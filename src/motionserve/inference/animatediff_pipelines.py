"""diffusers' AnimateDiff pipelines, with FreeNoise's windows batched and precomputed prompt embeddings.

FreeNoise (`enable_free_noise`) swaps the motion modules' transformer blocks for windowed ones; these
pipelines swap in `context_windows.BatchedWindowsBlock`, which can run all windows of a block in one
call instead of diffusers' loop over them (the endpoints do on a GPU), with the same results, and both
ways (`disable_free_noise` too) the blocks keep the very parameter tensors rather than copies.

The endpoints encode prompts themselves (A1111-style weights, `prompt_weighting`) and pass
`prompt_embeds`/`negative_prompt_embeds`. diffusers 0.42 refuses embeddings once FreeNoise is enabled
("not supported in FreeNoise yet") because its FreeNoise path interpolates per-frame prompts. With a
single prompt for the whole clip that interpolation is a plain repeat per frame, so these subclasses
build exactly that layout from the given embeddings. Everything else is the stock pipeline.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline
from diffusers.models.attention import FreeNoiseTransformerBlock
from diffusers.models.unets.unet_motion_model import CrossAttnDownBlockMotion, DownBlockMotion, UpBlockMotion

from motionserve.inference.context_windows import BatchedWindowsBlock, ContextWindows, plain_block


class _MotionserveFreeNoise:
    _free_noise_context_length: int
    _free_noise_context_stride: int
    _free_noise_weighting_scheme: str

    def _enable_free_noise_in_block(  # type: ignore[override]
        self, block: CrossAttnDownBlockMotion | DownBlockMotion | UpBlockMotion
    ) -> None:
        # diffusers' version of this makes its looped FreeNoiseTransformerBlock; the rest of
        # enable/disable_free_noise (noise shuffling, prompt layout) is unchanged.
        windows = ContextWindows(
            self._free_noise_context_length, self._free_noise_context_length - self._free_noise_context_stride
        )
        for motion_module in block.motion_modules:
            blocks = motion_module.transformer_blocks
            for i, transformer_block in enumerate(blocks):
                if isinstance(transformer_block, BatchedWindowsBlock):
                    transformer_block.set_free_noise_properties(
                        windows.length, windows.stride, self._free_noise_weighting_scheme
                    )
                else:
                    blocks[i] = BatchedWindowsBlock.from_block(transformer_block, windows, self._free_noise_weighting_scheme)

    def _disable_free_noise_in_block(  # type: ignore[override]
        self, block: CrossAttnDownBlockMotion | DownBlockMotion | UpBlockMotion
    ) -> None:
        # As diffusers', but the plain blocks keep the windowed ones' tensors (context_windows._rebuild).
        for motion_module in block.motion_modules:
            blocks = motion_module.transformer_blocks
            for i, transformer_block in enumerate(blocks):
                if isinstance(transformer_block, FreeNoiseTransformerBlock):
                    blocks[i] = plain_block(transformer_block)

    def _encode_prompt_free_noise(  # type: ignore[override]
        self,
        prompt: Any,
        num_frames: int,
        device: torch.device,
        num_videos_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: Any = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt_embeds is None:
            return super()._encode_prompt_free_noise(  # type: ignore[misc]
                prompt, num_frames, device, num_videos_per_prompt, do_classifier_free_guidance,
                negative_prompt, prompt_embeds, negative_prompt_embeds, lora_scale, clip_skip,
            )
        if prompt_embeds.shape[0] != 1:
            raise ValueError("with FreeNoise, precomputed prompt embeddings must be for a single prompt")
        # FreeNoise's layout: one embedding per frame, negatives first when guiding.
        positive = prompt_embeds.to(device).repeat_interleave(num_frames, dim=0)
        if not do_classifier_free_guidance:
            return positive, None
        if negative_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds are required with prompt_embeds when guidance_scale > 1")
        negative = negative_prompt_embeds.to(device).repeat_interleave(num_frames, dim=0)
        return torch.cat([negative, positive]), negative


class MotionserveAnimateDiffPipeline(_MotionserveFreeNoise, AnimateDiffPipeline):
    """AnimateDiffPipeline with batched context windows, accepting prompt embeddings with FreeNoise enabled."""


class MotionserveAnimateDiffVideoToVideoPipeline(_MotionserveFreeNoise, AnimateDiffVideoToVideoPipeline):
    """AnimateDiffVideoToVideoPipeline with batched context windows, accepting prompt embeddings with FreeNoise enabled."""
