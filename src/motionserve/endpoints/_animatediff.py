"""Helpers shared by the AnimateDiff-family handlers (text-to-video, video-to-video, turbo).

Kept free of top-level torch/diffusers imports: endpoint modules are imported by the API process, which
must never load torch. Everything heavy is imported inside the functions, which only run in the model
process.
"""

from __future__ import annotations

import logging
import math
import secrets
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from motionserve.errors import JobCancelledError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from motionserve.endpoints.base import RunContext
    from motionserve.inference.context_windows import ContextWindows
    from motionserve.inference.previews import Layout

log = logging.getLogger(__name__)

# The motion modules were trained on at most this many frames (v1-5-2 and AnimateLCM:
# motion_max_seq_length 32); longer clips need FreeNoise's sliding context windows.
DEFAULT_MAX_SEQ_LENGTH = 32

# fal's endpoints document seeds as plain integers; torch generators take 64-bit seeds.
_SEED_SPACE = 2**64


def make_generator(seed: int | None, device: "str | torch.device") -> tuple["torch.Generator", int]:
    """A torch generator for `device` seeded with `seed`, or with a fresh random seed when it is None.

    Returns the generator and the seed actually used, which the endpoint reports back so the caller
    can reproduce the result.
    """
    import torch

    if seed is None:
        # 32-bit range, like fal's returned seeds, so clients can round-trip them through JSON safely.
        seed = secrets.randbelow(2**32)
    generator = torch.Generator(device=str(device)).manual_seed(seed % _SEED_SPACE)
    return generator, seed


def step_callback(
    ctx: "RunContext", total_steps: int | None = None, *, layout: "Layout" = "bcfhw"
) -> Callable[["DiffusionPipeline", int, Any, dict[str, Any]], dict[str, Any]]:
    """A `callback_on_step_end` that logs "step i/n", stops at the next step once cancelled, and
    publishes a preview of the latents when the context says one is due.

    `total_steps` defaults to the pipeline's own count of denoising steps (for video-to-video this is
    `int(num_inference_steps * strength)`, not `num_inference_steps`). `layout` says where the frames
    are in the pipeline's latents (SVD: "bfchw").
    """

    def on_step_end(pipe: "DiffusionPipeline", i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        n = total_steps if total_steps is not None else getattr(pipe, "num_timesteps", None)
        ctx.log(f"step {i + 1}/{n}")
        if ctx.is_cancelled():
            raise JobCancelledError("request cancelled")
        latents = callback_kwargs.get("latents")
        if latents is not None and ctx.preview_due(i + 1, n):
            _publish_preview(ctx, pipe, latents, i + 1, layout)
        return callback_kwargs

    return on_step_end


def _publish_preview(ctx: "RunContext", pipe: "DiffusionPipeline", latents: "torch.Tensor", step: int, layout: "Layout") -> None:
    from motionserve.inference.previews import CONTENT_TYPE, make_preview, scheduler_sigma

    try:
        image = make_preview(latents, layout=layout, sigma=scheduler_sigma(getattr(pipe, "scheduler", None)))
    except Exception:  # a preview is a courtesy: it never fails the request
        log.warning("request %s: could not make a preview of step %d", ctx.request_id, step, exc_info=True)
        return
    ctx.preview(image, step=step, content_type=CONTENT_TYPE)


def max_motion_frames(pipe: "DiffusionPipeline") -> int:
    """How many frames the pipeline's motion modules attend over at once."""
    config = getattr(pipe.unet, "config", None)
    return int(getattr(config, "motion_max_seq_length", None) or DEFAULT_MAX_SEQ_LENGTH)


def configure_context_windows(pipe: "DiffusionPipeline", num_frames: int, windows: "ContextWindows") -> bool:
    """Enable FreeNoise context windows (`windows`: the operator's length and overlap, and the windows
    per call for the device) for clips longer than the motion modules allow, else disable them.

    Must be called BEFORE LoRAs are loaded into the motion modules: FreeNoise swaps those transformer
    blocks for new modules and copies plain weights, which LoRA-wrapped layers do not have. Returns True
    when windows are on. The state lives in the (possibly shared) UNet, so it is set on every request.
    """
    from diffusers.models.attention import FreeNoiseTransformerBlock

    from motionserve.inference.context_windows import set_windows_per_call

    want = num_frames > max_motion_frames(pipe)
    active = any(isinstance(m, FreeNoiseTransformerBlock) for m in pipe.unet.modules())
    if want:
        # Idempotent: already-swapped blocks just get their window settings refreshed.
        pipe.enable_free_noise(context_length=windows.length, context_stride=windows.stride)
        set_windows_per_call(pipe.unet, windows.per_call)
    elif active or pipe.free_noise_enabled:
        pipe.disable_free_noise()
    return want


@contextmanager
def motion_loras(
    pipe: "DiffusionPipeline",
    motions: Sequence[str],
    state_dict_for: Callable[[str], Mapping[str, "torch.Tensor"]],
) -> Iterator[list[str]]:
    """Load the named motion LoRAs as adapters for the duration of one request, combined at weight 1.0.

    `state_dict_for(name)` returns the LoRA's weights (ModelManager caches them in memory, so loading is
    a cheap peft injection). They are removed again on exit so the next request starts clean, and so a
    later FreeNoise toggle finds plain motion-module layers.
    """
    names = list(dict.fromkeys(motions))  # de-duplicate, keep order: the same motion twice is one adapter
    if not names:
        yield []
        return
    adapters = [f"motion-{name}" for name in names]
    try:
        for name, adapter in zip(names, adapters):
            pipe.load_lora_weights(dict(state_dict_for(name)), adapter_name=adapter)
        pipe.set_adapters(adapters, adapter_weights=[1.0] * len(adapters))
        yield adapters
    finally:
        pipe.unload_lora_weights()


def fit_to_area(width: int, height: int, area: int = 512 * 512, multiple: int = 8) -> tuple[int, int]:
    """The (width, height) with the same aspect ratio as the input covering about `area` pixels.

    Both sides are rounded to multiples of `multiple` (the VAE downsamples ×8) and are at least one
    multiple, so extreme aspect ratios still give a valid size.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}×{height}")
    scale = math.sqrt(area / (width * height))
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h
