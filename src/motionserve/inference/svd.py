"""The `fast-svd-lcm` pipeline: SVD-XT 1.1 with the AnimateLCM-SVD UNet and its consistency sampler.

This is how the AnimateLCM-SVD authors assemble it: the base `StableVideoDiffusionPipeline`, the distilled
UNet weights loaded over the base UNet (`strict=False`: the file is a plain UNet state dict), and the
`AnimateLCMSVDScheduler` in place of the base Euler scheduler. Every weight is read from safetensors
straight onto the device in the pipeline's dtype: the components through `device_map`, the distilled
UNet one tensor at a time into the UNet's own parameters (never a second UNet-sized copy).
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
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    base = checkpoints.path("svd_base")
    lcm_file = checkpoints.path("svd_lcm_unet")
    on_device = {"dtype": dtype, "device_map": {"": torch.device(device)}}
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(
            str(base), dtype=dtype,
            unet=UNetSpatioTemporalConditionModel.from_pretrained(base, subfolder="unet", **on_device),
            vae=AutoencoderKLTemporalDecoder.from_pretrained(base, subfolder="vae", **on_device),
            image_encoder=CLIPVisionModelWithProjection.from_pretrained(base, subfolder="image_encoder", **on_device),
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"checkpoint 'svd_base' at {base} cannot be loaded as an SVD pipeline: {exc}") from exc
    load_lcm_unet_weights(pipe.unet, lcm_file)
    pipe.scheduler = AnimateLCMSVDScheduler()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_lcm_unet_weights(unet: "torch.nn.Module", path: "str | object") -> None:
    """Load an AnimateLCM-SVD UNet state dict over `unet` (non-strict, as the published recipe does), each
    tensor read onto the UNet's device and copied into its parameter (cast to its dtype).

    Non-strict tolerates extra or absent keys, but a file sharing no key with the UNet, or one whose
    tensors have other shapes, is not this model: refuse it, before any weight is changed, rather than
    serve the base UNet silently.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    own = unet.state_dict()
    try:
        with safe_open(str(path), framework="pt", device=str(next(iter(own.values())).device)) as weights:
            shared = [k for k in weights.keys() if k in own]
            if not shared:
                raise ModelUnavailableError(f"checkpoint 'svd_lcm_unet' at {path} holds no weights of the SVD UNet")
            misfits = [f"{k}: {shape} in the file, {list(own[k].shape)} in the UNet"
                       for k in shared if (shape := list(weights.get_slice(k).get_shape())) != list(own[k].shape)]
            if misfits:
                raise ModelUnavailableError(f"checkpoint 'svd_lcm_unet' at {path} does not fit the SVD UNet: {'; '.join(misfits[:3])}")
            with torch.no_grad():
                for key in shared:
                    own[key].copy_(weights.get_tensor(key))
    except (OSError, SafetensorError) as exc:
        raise ModelUnavailableError(f"checkpoint 'svd_lcm_unet' at {path} is not a readable safetensors file: {exc}") from exc
