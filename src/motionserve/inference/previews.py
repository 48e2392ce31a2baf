"""Live previews: a few frames of the latents being denoised, as one small animated image.

No VAE: a fixed linear map from the 4 latent channels to RGB, the "latent RGB factors" ComfyUI fits for
the SD1.5 VAE (`comfy/latent_formats.py`, class `SD15`; applied as in `latent_preview.py`:
`rgb = latent @ factors`, then `(rgb + 1) / 2` clamped to [0, 1]). They act on the latents the sampler
sees, i.e. VAE latents times 0.18215, which is what diffusers pipelines hand to `callback_on_step_end`.
SVD's VAE encodes into the same latent space (its decoder is a temporal fine-tune of the same encoder's
space, same 0.18215 scale), so one table serves AnimateDiff and SVD.

A preview is `PREVIEW_FRAMES` evenly spaced frames, 1/8 of the video's size upscaled at most ×2 (and
never past `MAX_SIDE`), encoded as an animated WebP: a browser `<img>` plays it, and it costs a few
milliseconds to make (see bench/README.md, "Previews").
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

# Rows: latent channels 0..3; columns: R, G, B. ComfyUI comfy/latent_formats.py, SD15.latent_rgb_factors.
SD15_LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
PREVIEW_FRAMES = 4
MAX_UPSCALE = 2.0
MAX_SIDE = 256  # px: a preview never needs more; a 2048² video's 256² latents are shown as they are
FRAME_MS = 250  # the preview's frames are far apart in the clip: show each a quarter of a second
CONTENT_TYPE = "image/webp"
WEBP_QUALITY = 70

# Where the frames are in the pipelines' latents: AnimateDiff (batch, channels, frames, h, w), SVD
# (batch, frames, channels, h, w).
Layout = Literal["bcfhw", "bfchw"]


def frame_indices(num_frames: int, count: int = PREVIEW_FRAMES) -> list[int]:
    """`count` evenly spaced frame indices from the first to the last (fewer when the clip is shorter)."""
    if num_frames <= count:
        return list(range(num_frames))
    return [round(i * (num_frames - 1) / (count - 1)) for i in range(count)]


def preview_size(height: int, width: int) -> tuple[int, int]:
    """The preview's (height, width) for latents of this size: up to ×2, longest side at most MAX_SIDE."""
    scale = min(MAX_UPSCALE, MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def latents_to_rgb(latents: torch.Tensor, *, layout: Layout = "bcfhw", sigma: float | None = None,
                   count: int = PREVIEW_FRAMES) -> np.ndarray:
    """uint8 frames (k, H, W, 3) of the first video in `latents`, k = min(count, frames).

    `sigma`: the noise level of `latents` for samplers that work in sigma space (EDM/Euler, as SVD's):
    their latents are `x0 + sigma·noise`, so they are divided by sqrt(1 + sigma²) to bring them to the
    unit scale the factors expect (what a DDPM-style sampler's latents already are). None: as they are.
    """
    video = latents[0] if layout == "bcfhw" else latents[0].transpose(0, 1)  # (channels, frames, h, w)
    if video.shape[0] != len(SD15_LATENT_RGB_FACTORS):
        raise ValueError(f"expected {len(SD15_LATENT_RGB_FACTORS)} latent channels, got {video.shape[0]}")
    picked = video[:, frame_indices(video.shape[1], count)].float()
    if sigma:
        picked = picked / math.sqrt(1.0 + sigma * sigma)
    factors = torch.tensor(SD15_LATENT_RGB_FACTORS, dtype=picked.dtype, device=picked.device)
    rgb = torch.einsum("cfhw,cr->frhw", picked, factors)
    rgb = F.interpolate(rgb, size=preview_size(*rgb.shape[-2:]), mode="bilinear", align_corners=False)
    pixels = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def encode_animation(frames: np.ndarray, frame_ms: int = FRAME_MS) -> bytes:
    """Frames (k, H, W, 3) uint8 as an animated WebP that loops (a still WebP for one frame)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    out = io.BytesIO()
    # method 0: the fastest encoder effort; these are small and short-lived.
    images[0].save(out, format="WEBP", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   quality=WEBP_QUALITY, method=0)
    return out.getvalue()


def make_preview(latents: torch.Tensor, *, layout: Layout = "bcfhw", sigma: float | None = None) -> bytes:
    """The preview image (`CONTENT_TYPE`) of the latents of one denoising step."""
    return encode_animation(latents_to_rgb(latents.detach(), layout=layout, sigma=sigma))


def scheduler_sigma(scheduler: object) -> float | None:
    """The noise level of the latents a sigma-space scheduler has just produced, else None.

    Schedulers of the Euler/EDM family (SVD's, the consistency sampler of AnimateLCM-SVD) keep a
    `sigmas` table and a `step_index` that `step()` has already advanced to the latents' own level.
    DDIM and LCM (AnimateDiff, turbo) keep none: their latents are already on the unit scale.
    """
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if sigmas is None or index is None or not 0 <= int(index) < len(sigmas):
        return None
    return float(sigmas[int(index)])
