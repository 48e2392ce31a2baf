"""The `fast-svd-lcm` pipeline: SVD-XT 1.1 with the AnimateLCM-SVD UNet and its consistency sampler.

This is how the AnimateLCM-SVD authors assemble it: the base `StableVideoDiffusionPipeline`, the distilled
UNet weights loaded over the base UNet (`strict=False`: the file is a plain UNet state dict), and the
`AnimateLCMSVDScheduler` in place of the base Euler scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from motionserve.errors import ModelUnavailableError
from motionserve.inference.svd_lcm_scheduler import AnimateLCMSVDScheduler

if TYPE_CHECKING:
    import torch
    from diffusers import StableVideoDiffusionPipeline

    from motionserve.inference.weights import Checkpoints


def load_svd_lcm(checkpoints: "Checkpoints", device: "str | torch.device", dtype: "torch.dtype") -> "StableVideoDiffusionPipeline":
    """Build the warm pipeline from the `svd_base` and `svd_lcm_unet` checkpoints, on `device` in `dtype`.

    Raises ModelUnavailableError when either checkpoint is missing or does not fit the base UNet.
    """
    from diffusers import StableVideoDiffusionPipeline

    base = checkpoints.path("svd_base")
    lcm_file = checkpoints.path("svd_lcm_unet")
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(str(base), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"checkpoint 'svd_base' at {base} cannot be loaded as an SVD pipeline: {exc}") from exc
    load_lcm_unet_weights(pipe.unet, lcm_file)
    pipe.scheduler = AnimateLCMSVDScheduler()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_lcm_unet_weights(unet: "torch.nn.Module", path: "str | object") -> None:
    """Load an AnimateLCM-SVD UNet state dict over `unet` (non-strict, as the published recipe does).

    Non-strict tolerates extra or absent keys, but a file sharing no key with the UNet, or one whose
    tensors have other shapes, is not this model: refuse it rather than serve the base UNet silently.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelUnavailableError(f"checkpoint 'svd_lcm_unet' at {path} is not a readable safetensors file: {exc}") from exc
    own = unet.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise ModelUnavailableError(f"checkpoint 'svd_lcm_unet' at {path} holds no weights of the SVD UNet")
    try:
        unet.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches are raised even when strict=False
        raise ModelUnavailableError(f"checkpoint 'svd_lcm_unet' at {path} does not fit the SVD UNet: {exc}") from exc
