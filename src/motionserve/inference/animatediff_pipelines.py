"""diffusers' AnimateDiff pipelines, with one gap filled: precomputed prompt embeddings under FreeNoise.

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


class _FreeNoisePrecomputedEmbeds:
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


class MotionserveAnimateDiffPipeline(_FreeNoisePrecomputedEmbeds, AnimateDiffPipeline):
    """AnimateDiffPipeline accepting prompt embeddings with FreeNoise enabled."""


class MotionserveAnimateDiffVideoToVideoPipeline(_FreeNoisePrecomputedEmbeds, AnimateDiffVideoToVideoPipeline):
    """AnimateDiffVideoToVideoPipeline accepting prompt embeddings with FreeNoise enabled."""
