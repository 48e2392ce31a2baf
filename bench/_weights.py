"""The weights a benchmark runs on: the project's tiny models, or random models of a chosen shape saved in
the published checkpoints' layouts and pointed to by a weights map (`inference/weights.py` format).

- ``tiny``: `ensure_tiny_weights` (the models the tests use).
- ``small``: the same components wider (ten times the tiny UNet's parameters, about twice its work per
  step), so the fixed costs of the service are set against more model work.
- ``full``: SD1.5's UNet, VAE and CLIP-L text encoder, motion adapter v1-5-2 (also the AnimateLCM adapter's
  shape), a rank-64 LCM LoRA, and SVD-XT's UNet, temporal VAE and CLIP-H image encoder (configs from
  shared/reference/video-diffusion-notes.md §3). Random values: the time of a forward pass does not
  depend on them. For GPU runs; `check_full_configs()` counts their parameters on the meta device.

Small and full are built by the same code from a `Spec`, so a CPU run of ``small`` exercises the
builder a GPU run of ``full`` uses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAP_FILE = "weights.json"
LCM_LORA_FILE = "lcm-lora.safetensors"
SEED = 1234


@dataclass(frozen=True)
class Spec:
    """Constructor arguments of every component (diffusers / transformers config names)."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    adapter: dict[str, Any]
    lcm_lora_rank: int
    svd_unet: dict[str, Any]
    svd_vae: dict[str, Any]
    svd_image: dict[str, Any]
    # Millions of parameters the published checkpoints have, to check a `full` spec against.
    expected_mparams: dict[str, float] = field(default_factory=dict)


_SD_BLOCKS = {
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}

FULL = Spec(
    name="full",
    unet=dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
              layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, **_SD_BLOCKS),
    vae=dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             latent_channels=4, norm_num_groups=32, sample_size=512),
    text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    adapter=dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_max_seq_length=32,
                 motion_num_attention_heads=8, motion_norm_num_groups=32, use_motion_mid_block=True),
    lcm_lora_rank=64,
    svd_unet=dict(sample_size=96, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                  layers_per_block=2, cross_attention_dim=1024, num_attention_heads=(5, 10, 20, 20),
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, num_frames=25),
    svd_vae=dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4, sample_size=768,
                 scaling_factor=0.18215, force_upcast=True),
    svd_image=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu"),
    expected_mparams={"unet": 859.5, "adapter": 453.2, "text": 123.1, "vae": 83.7, "svd_unet": 1524.6,
                      "svd_vae": 97.7, "svd_image": 632.1},
)

SMALL = Spec(
    name="small",
    # About twice the tiny models' work per denoising step (0.65 s against 0.35 s for 16 frames with CFG at
    # 512×512 on one CPU thread) and ten times their parameters; attention stays at the lowest resolution
    # only, since spatial attention over 32×32 latents would make a CPU call take minutes. The VAE keeps
    # the tiny shape (equal channels: its blocks have no resnets to change them).
    unet=dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(4, 16, 32), layers_per_block=1,
              down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
              cross_attention_dim=64, attention_head_dim=8, norm_num_groups=4),
    vae=dict(in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4), layers_per_block=0,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             latent_channels=4, norm_num_groups=2, sample_size=512, mid_block_add_attention=False),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=77, projection_dim=64),
    adapter=dict(block_out_channels=(4, 16, 32), motion_layers_per_block=1, motion_max_seq_length=32,
                 motion_num_attention_heads=2, motion_norm_num_groups=4, use_motion_mid_block=True),
    lcm_lora_rank=4,
    # The temporal VAE decoder at 1024×576×25 frames dominates an SVD call on a CPU; it keeps the tiny
    # model's shape, and the UNet grows.
    svd_unet=dict(sample_size=96, in_channels=8, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
                  down_block_types=("DownBlockSpatioTemporal", "DownBlockSpatioTemporal",
                                    "CrossAttnDownBlockSpatioTemporal"),
                  up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
                  cross_attention_dim=64, num_attention_heads=(2, 4, 4), addition_time_embed_dim=32,
                  projection_class_embeddings_input_dim=96, num_frames=25),
    svd_vae=dict(in_channels=3, out_channels=3, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                 down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4, sample_size=768,
                 scaling_factor=0.18215, force_upcast=True),
    svd_image=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   image_size=224, patch_size=32, projection_dim=64),
)

SPECS = {"small": SMALL, "full": FULL}


@dataclass(frozen=True)
class Weights:
    """Where each checkpoint lies, and the `--weights` value that makes a server load the same files."""

    size: str
    map_path: Path
    paths: dict[str, Path]  # sd15_base, motion_adapter, animatelcm_adapter, animatelcm_lora, svd_base, svd_lcm_unet

    @property
    def server_arg(self) -> str:
        return str(self.map_path)


def prepare_for(args: Any) -> Weights:
    """`prepare` for a benchmark's parsed `--size`, `--cache-dir` and `--device`, saying what it uses."""
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    weights = prepare(args.size, args.cache_dir, build_device=args.device)
    print(f"weights: {args.size} ({weights.map_path}); device {args.device}; repeats {args.repeats}", flush=True)
    return weights


def prepare(size: str, cache_dir: Path, *, build_device: str = "cpu") -> Weights:
    """The weights for `size`, built into `cache_dir` on first use (later runs reuse them)."""
    from motionserve.inference.tiny import ensure_tiny_weights

    tiny = ensure_tiny_weights(cache_dir / "tiny")
    if size == "tiny":
        return _read(size, tiny / MAP_FILE)
    folder = cache_dir / f"{size}-v2"  # bump when a Spec changes
    if not (folder / MAP_FILE).exists():
        staging = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=cache_dir))
        try:
            build(SPECS[size], staging, tokenizer_dir=tiny / "sd15" / "tokenizer", device=build_device)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _read(size, folder / MAP_FILE)


def _read(size: str, map_path: Path) -> Weights:
    raw = json.loads(map_path.read_text())
    paths: dict[str, Path] = {}
    for name in ("sd15_base", "motion_adapter", "animatelcm_adapter", "animatelcm_lora", "svd_base", "svd_lcm_unet"):
        spec = raw[name]
        source, file = (spec, None) if isinstance(spec, str) else (spec["source"], spec.get("file"))
        path = (map_path.parent / source).resolve()
        paths[name] = path / file if file else path
    return Weights(size, map_path.resolve(), paths)


def build(spec: Spec, out: Path, *, tokenizer_dir: Path, device: str = "cpu", dtype: Any = None) -> None:
    """Write every checkpoint of `spec` under `out` and the weights map; fp16 by default when built on a GPU."""
    import torch
    from transformers import CLIPTokenizer

    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = _built(device, dtype, lambda: _unet(spec))
        vae = _built(device, dtype, lambda: _vae(spec))
        text_encoder = _built(device, dtype, lambda: _text_encoder(spec, tokenizer))
        _save_sd15(out / "sd15", unet, vae, text_encoder, tokenizer)
        for folder in ("motion-adapter", "animatelcm-adapter"):
            _built(device, dtype, lambda: _adapter(spec)).save_pretrained(out / folder)
        _save_lcm_lora(unet, spec.lcm_lora_rank, out / "animatelcm")
        del unet, vae, text_encoder
        _save_svd(spec, out, device, dtype)
    weights = {
        "sd15_base": "./sd15",
        "motion_adapter": "./motion-adapter",
        "animatelcm_adapter": "./animatelcm-adapter",
        "animatelcm_lora": {"source": "./animatelcm", "file": LCM_LORA_FILE},
        "svd_base": "./svd",
        "svd_lcm_unet": "./svd-lcm-unet.safetensors",
    }
    (out / MAP_FILE).write_text(json.dumps(weights, indent=2))


def _built(device: str, dtype: Any, make: Any) -> Any:
    """`make()` with its parameters initialised on `device`, returned on the CPU in `dtype` for saving.

    Initialising billions of random parameters is much faster on a GPU; the values do not matter.
    """
    import torch

    with torch.device(device):
        model = make()
    return model.to(device="cpu", dtype=dtype)


def _unet(spec: Spec) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**spec.unet)


def _vae(spec: Spec) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**spec.vae)


def _text_encoder(spec: Spec, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = dict(spec.text)
    config.setdefault("vocab_size", max(1000, len(tokenizer)))
    return CLIPTextModel(CLIPTextConfig(
        **config, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )).eval()


def _adapter(spec: Spec) -> Any:
    from diffusers import MotionAdapter

    return MotionAdapter(**spec.adapter)


def _save_sd15(folder: Path, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # SD1.5's scheduler config; the server and the bare pipeline both replace it as AnimateDiff needs.
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def _save_lcm_lora(unet: Any, rank: int, folder: Path) -> None:
    """A LoRA on the UNet's spatial attention projections, in the diffusers format `load_lora_weights` reads."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights="gaussian")
    lora_unet = inject_adapter_in_model(config, unet.float())  # fp32: random init of fp16 on a CPU is patchy
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(lora_unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=LCM_LORA_FILE)


def _save_svd(spec: Spec, out: Path, device: str, dtype: Any) -> None:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from diffusers import UNetSpatioTemporalConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from motionserve.inference.tiny_svd import EULER_CONFIG

    unet = _built(device, dtype, lambda: UNetSpatioTemporalConditionModel(**spec.svd_unet))
    pipe = StableVideoDiffusionPipeline(
        vae=_built(device, dtype, lambda: AutoencoderKLTemporalDecoder(**spec.svd_vae)),
        image_encoder=_built(device, dtype, lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**spec.svd_image))),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(EULER_CONFIG),
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipe.save_pretrained(out / "svd")
    # The AnimateLCM-SVD file is a plain UNet state dict loaded over the base UNet; its values do not
    # matter for timing, so the base UNet's own weights stand in for it.
    save_file({k: v.detach().contiguous() for k, v in unet.state_dict().items()},
              str(out / "svd-lcm-unet.safetensors"), metadata={"format": "pt"})


def check_full_configs() -> dict[str, dict[str, float]]:
    """Parameter counts (millions) of the `full` components, built on the meta device (no memory)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    spec = FULL
    with torch.device("meta"):
        models = {
            "unet": _unet(spec),
            "adapter": _adapter(spec),
            "text": CLIPTextModel(CLIPTextConfig(**spec.text)),
            "vae": _vae(spec),
            "svd_unet": UNetSpatioTemporalConditionModel(**spec.svd_unet),
            "svd_vae": AutoencoderKLTemporalDecoder(**spec.svd_vae),
            "svd_image": CLIPVisionModelWithProjection(CLIPVisionConfig(**spec.svd_image)),
        }
    report = {}
    for name, model in models.items():
        mparams = sum(p.numel() for p in model.parameters()) / 1e6
        report[name] = {"mparams": round(mparams, 1), "expected": spec.expected_mparams[name]}
    return report
