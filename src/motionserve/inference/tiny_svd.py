"""Small, seeded, randomly initialised stand-ins for the SVD-XT 1.1 and AnimateLCM-SVD checkpoints.

`build_tiny_svd(root)` writes, in the layouts of the published files:

- ``root/svd``: a `StableVideoDiffusionPipeline` folder like `stabilityai/stable-video-diffusion-img2vid-xt-1-1`
  (UNet, temporal-decoder VAE, CLIP vision encoder, image processor, and that repo's Euler scheduler config);
- ``root/svd-lcm-unet.safetensors``: a complete UNet state dict with diffusers key names, like
  `wangfuyun/AnimateLCM-SVD-xt`'s `AnimateLCM-SVD-xt-1.1.safetensors`, which is loaded over the base UNet.

Kept real, because code depends on it: UNet input 8 channels (4 noise + 4 image latents), output 4,
25 frames, micro-conditioning on (fps, motion bucket, noise augmentation); VAE ×8 downsampling (4 blocks)
into 4 latent channels with the temporal decoder; CLIP input 224 px (the pipeline resizes PIL images to
224, so a smaller encoder would fail on real inputs). Shrunk: channels (32, the minimum the hard-coded
GroupNorm(32) layers accept), depth, and attention (spatial attention only in the UNet's lowest-resolution
block and its mid block). The temporal decoder always has a mid-block attention and 32-channel full-
resolution convolutions; at 1024×576 × 25 frames that decode dominates the cost on a CPU.

Deterministic: the same seed gives byte-identical weights, and the caller's global RNG is left untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED = 20240602
NUM_FRAMES = 25
CROSS_ATTENTION_DIM = 32  # = the image encoder's projection size
TIME_EMBED_DIM = 32  # per added time id; the UNet checks 3 ids × this = projection input dim
SVD_FOLDER = "svd"
LCM_UNET_FILE = "svd-lcm-unet.safetensors"

# stabilityai/stable-video-diffusion-img2vid-xt-1-1 scheduler/scheduler_config.json.
EULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "sigma_max": 700.0,
    "sigma_min": 0.002,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "trained_betas": None,
    "use_karras_sigmas": True,
}


def build_tiny_svd(root: Path, seed: int = SEED) -> None:
    """Write `root/svd` (pipeline folder) and `root/svd-lcm-unet.safetensors` (UNet state dict).

    Each is written under a temporary name and renamed into place, so a reader never sees half a file.
    """
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = StableVideoDiffusionPipeline(
            vae=_vae(),
            image_encoder=_image_encoder(),
            unet=_unet(),
            scheduler=_scheduler(),
            feature_extractor=_feature_extractor(),
        )
        # The distilled UNet: same architecture, different weights (another seed), as a fine-tune would be.
        torch.manual_seed(seed + 1)
        lcm_state = {k: v.contiguous() for k, v in _unet().state_dict().items()}

    staging = Path(tempfile.mkdtemp(prefix=".svd-", dir=root))
    try:
        pipe.save_pretrained(staging / SVD_FOLDER)
        save_file(lcm_state, str(staging / LCM_UNET_FILE), metadata={"format": "pt"})
        for name in (SVD_FOLDER, LCM_UNET_FILE):
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unet() -> "torch.nn.Module":
    from diffusers import UNetSpatioTemporalConditionModel

    # Three levels (SVD-XT has four): full latent resolution without attention, cross-attention only at
    # a quarter resolution, where 1024×576 is 32×18 tokens per frame.
    return UNetSpatioTemporalConditionModel(
        sample_size=96,
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlockSpatioTemporal", "DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        num_attention_heads=(2, 2, 4),
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=3 * TIME_EMBED_DIM,
        num_frames=NUM_FRAMES,
    )


def _vae() -> "torch.nn.Module":
    from diffusers import AutoencoderKLTemporalDecoder

    return AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
        force_upcast=True,
    )


def _image_encoder() -> "torch.nn.Module":
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=CROSS_ATTENTION_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
    )
    return CLIPVisionModelWithProjection(config)


def _feature_extractor():  # type: ignore[no-untyped-def]
    from transformers import CLIPImageProcessor

    # Without torchvision transformers substitutes CLIPImageProcessorPil; same preprocessing.
    return CLIPImageProcessor(crop_size=224, size=224)


def _scheduler():  # type: ignore[no-untyped-def]
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(EULER_CONFIG)
