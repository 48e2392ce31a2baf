"""Small, seeded, randomly initialised stand-ins for every AnimateDiff-family checkpoint.

Real weights cannot be downloaded in tests or offline demos, so `ensure_tiny_weights(root)` builds
models with the real architecture classes and saves them in the real on-disk layouts; they are then
loaded by exactly the code that loads the real checkpoints (through a weights map, `root/weights.json`).

What is kept real, because code depends on it: the VAE downsamples ×8 (4 blocks) into 4 latent
channels, text is 77 CLIP tokens, the motion modules accept 32 frames, the UNet's default sample is
64 latents = 512 px. What is shrunk: channels, depth, and attention (spatial attention only in the
lowest-resolution UNet block, no VAE mid-block attention), so that a request at the endpoints' default
size (512×512, 16 frames, 25 steps, CFG) takes seconds on a small CPU. Outputs are noise-like videos.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from motionserve.inference.motions import MOTIONS

if TYPE_CHECKING:
    import torch

# Bump when the tiny architecture changes so stale builds are not reused.
TINY_VERSION = "1"
SEED = 20240601

UNET_CHANNELS = (4, 8, 8)
TEXT_DIM = 32
# Motion LoRAs touch the temporal attention; spatial LoRAs (LCM, user) the UNet's own attention.
MOTION_LORA_TARGETS = r".*motion_modules.*\.(to_q|to_k|to_v|to_out\.0)"
SPATIAL_LORA_TARGETS = r"^(?!.*motion_modules).*attentions.*\.(to_q|to_k|to_v|to_out\.0)"
LCM_LORA_FILE = "AnimateLCM_sd15_t2v_lora.safetensors"
USER_LORA_FILE = "user-lora.safetensors"
# diffusers' loaders swap module construction to the meta device process-wide while loading, so two
# builds in one process must not overlap; across processes the rename below settles races.
_BUILD_LOCK = threading.Lock()


def ensure_tiny_weights(root: Path) -> Path:
    """Build the tiny checkpoints under `root` once and return the folder holding `weights.json`.

    Idempotent and safe when processes race: each build happens in a private temporary folder that is
    renamed into place; the loser of the race discards its copy.
    """
    root = Path(root)
    final = root / f"animatediff-v{TINY_VERSION}"
    if (final / "weights.json").exists():
        return final
    with _BUILD_LOCK:
        if not (final / "weights.json").exists():
            _build_into(root, final)
    return final


def _build_into(root: Path, final: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the built weights are for every local user
    try:
        build_tiny_weights(staging)
        try:
            os.rename(staging, final)
        except OSError:
            # Another process finished first (the target exists and is not empty): use theirs.
            if not (final / "weights.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tiny_weights(out: Path) -> None:
    """Write every tiny checkpoint and the weights map into `out` (which must exist)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        tokenizer = _tokenizer()
        text_encoder = _text_encoder(tokenizer)
        unet = _unet()
        vae = _vae()
    _save_sd15_base(out / "sd15", unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)
    _motion_adapter(SEED + 1).save_pretrained(out / "motion-adapter")
    _motion_adapter(SEED + 2).save_pretrained(out / "animatelcm-adapter")

    motion_unet = _motion_unet(unet, out / "motion-adapter")
    for i, motion in enumerate(MOTIONS):
        _save_lora(motion_unet, MOTION_LORA_TARGETS, SEED + 10 + i, out / "motion-loras" / motion, "pytorch_lora_weights.safetensors")
    _save_lora(unet, SPATIAL_LORA_TARGETS, SEED + 30, out / "animatelcm", LCM_LORA_FILE)
    _save_lora(unet, SPATIAL_LORA_TARGETS, SEED + 31, out, USER_LORA_FILE)

    weights: dict[str, Any] = {
        "sd15_base": "./sd15",
        "motion_adapter": "./motion-adapter",
        "motion_loras": {m: f"./motion-loras/{m}" for m in MOTIONS},
        "animatelcm_adapter": "./animatelcm-adapter",
        "animatelcm_lora": {"source": "./animatelcm", "file": LCM_LORA_FILE},
    }
    try:
        from motionserve.inference.tiny_svd import build_tiny_svd
    except ImportError:
        build_tiny_svd = None  # the SVD family is optional: its endpoint reports it missing
    if build_tiny_svd is not None:
        build_tiny_svd(out)
        weights["svd_base"] = "./svd"
        weights["svd_lcm_unet"] = "./svd-lcm-unet.safetensors"
    else:
        # Point at paths that do not exist so the SVD endpoint fails with ModelUnavailableError, not a download.
        weights["svd_base"] = "./svd-missing"
        weights["svd_lcm_unet"] = "./svd-lcm-unet-missing.safetensors"
    (out / "weights.json").write_text(json.dumps(weights, indent=2))


def _tokenizer() -> Any:
    """A CLIP tokenizer built offline: byte-level vocabulary, no merges, 77 tokens (one per byte)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    symbols = _bytes_to_unicode()
    for sym in symbols:
        vocab[sym] = len(vocab)
    for sym in symbols:
        vocab[f"{sym}</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in character for each byte (transformers 5 no longer exports it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=max(1000, len(tokenizer)),
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(config).eval()


def _unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,  # 64 latents × 8 = 512 px default, as SD1.5
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=4,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 4, 4, 4),  # 4 blocks: ×8 downsampling like SD's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        # No encoder resnets and one decoder resnet per level: full-resolution convs with few channels
        # are slow on CPU, and equal channels let the blocks work without resnets.
        layers_per_block=0,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=512,
        mid_block_add_attention=False,  # full attention over 64×64 latents would dominate CPU time
    )


def _motion_adapter(seed: int) -> Any:
    import torch
    from diffusers import MotionAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = MotionAdapter(
            block_out_channels=UNET_CHANNELS,
            motion_layers_per_block=1,
            motion_num_attention_heads=1,
            motion_norm_num_groups=4,
            motion_max_seq_length=32,  # as v1-5-2 and AnimateLCM: longer clips need FreeNoise
            use_motion_mid_block=True,
        )
        # diffusers zero-initialises the motion modules' output projections (an identity at start of
        # training); random values make the motion modules, and LoRAs on them, actually change the output.
        for name, param in adapter.named_parameters():
            if "proj_out" in name:
                torch.nn.init.normal_(param, std=0.2)
    return adapter


def _save_sd15_base(folder: Path, *, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # the SD1.5 repo's scheduler config; the ModelManager overrides it as the real one must be
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)


def _motion_unet(unet: Any, adapter_dir: Path) -> Any:
    from diffusers import MotionAdapter, UNetMotionModel

    return UNetMotionModel.from_unet2d(unet, MotionAdapter.from_pretrained(adapter_dir))


def _save_lora(model: "torch.nn.Module", targets: str, seed: int, folder: Path, weight_name: str) -> None:
    """A rank-4 LoRA with random (non-zero) weights on `targets`, saved in diffusers' format."""
    import copy

    import torch
    from diffusers import AnimateDiffPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora_model = inject_adapter_in_model(config, copy.deepcopy(model))
        for name, param in lora_model.named_parameters():
            if "lora_" in name:
                torch.nn.init.normal_(param, std=0.3)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(lora_model))
    AnimateDiffPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=weight_name)
