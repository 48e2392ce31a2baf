"""Optional speed-ups, applied once to a warm pipeline as it is loaded: fused attention projections,
channels-last convolutions, and `torch.compile` of the UNet and the VAE decoder.

Each changes how the same weights are computed, not what: `tests/inference/test_speedups.py` holds each
to the eager pipeline's output within a stated tolerance. bench/README.md ("Speed-up options") has the
figures behind the defaults.

What each leaves alone, and why:
- Fused projections: the fused processor reads one `to_qkv` (or `to_kv`) layer instead of `to_q`,
  `to_k`, `to_v`, so a LoRA that peft injects into those would be silently skipped. Attention a LoRA
  may target keeps its separate projections (the caller names it); so do the motion modules, which
  FreeNoise rebuilds from their plain state dict.
- Compile: a compiled module is guarded on its structure, so every LoRA set injected into it is a
  fresh compile. It is applied to modules whose structure stays put across requests (the caller says
  which UNets). Shapes are static (`dynamic=False`): one graph per latent shape the module meets (size,
  frame count, windows on or off), up to dynamo's recompile limit, after which that module runs eager.
  Compiled kernels are cached on disk (inductor's FX graph cache, `TORCHINDUCTOR_CACHE_DIR`), so a
  restarted worker skips code generation for shapes it has seen; dynamo's tracing is paid again.
  The AnimateDiff UNet traces whole (no graph breaks), with context windows (`BatchedWindowsBlock`) as
  without: turning windows on for a long clip is one more graph, not a fallback to eager.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from motionserve.config import Settings

ALL = re.compile("")  # every attention layer of a module
NONE = re.compile(r"(?!)")
MOTION_MODULES = re.compile(r"motion_modules")


@dataclass(frozen=True)
class Speedups:
    fuse_qkv: bool = False
    channels_last: bool = False
    torch_compile: bool = False
    compile_cache_dir: Path | None = None  # None: inductor's own default (under /tmp)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Speedups":
        return cls(settings.fuse_qkv, settings.channels_last, settings.torch_compile, settings.compile_cache_path)


def apply_speedups(
    pipe: Any, speedups: Speedups, *, keep_unfused: re.Pattern[str], compile_unet: bool
) -> None:
    """Apply `speedups` to `pipe`'s UNet and VAE in place (modules shared between pipelines once).

    `keep_unfused` matches the UNet attention layers (by module name) that keep separate projections;
    the motion modules always do. `compile_unet`: whether the UNet's structure is fixed enough to
    compile (no LoRAs injected per request).
    """
    unet, vae = pipe.unet, pipe.vae
    if speedups.fuse_qkv:
        fuse_attention_projections(unet, lambda name: bool(keep_unfused.search(name) or MOTION_MODULES.search(name)))
        fuse_attention_projections(vae, lambda name: False)
    if speedups.channels_last:
        convs_channels_last(unet)
        convs_channels_last(vae)
    if speedups.torch_compile:
        if speedups.compile_cache_dir is not None:
            # Read by inductor whenever it opens its caches, so setting it before the first compile suffices.
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(speedups.compile_cache_dir)
        if compile_unet:
            compile_module(unet)
        compile_module(vae.decoder)


def fuse_attention_projections(module: torch.nn.Module, keep: Callable[[str], bool]) -> int:
    """Fuse the projections of `module`'s attention layers that run diffusers' plain SDPA processor,
    except those whose name `keep(name)` is true. Returns how many were fused."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for name, layer in module.named_modules():
        if isinstance(layer, Attention) and type(layer.processor) is AttnProcessor2_0 and not keep(name):
            layer.fuse_projections(fuse=True)
            layer.set_processor(FusedAttnProcessor2_0())
            fused += 1
    return fused


def convs_channels_last(module: torch.nn.Module) -> None:
    """2-D convolution weights in channels-last layout (NHWC), which oneDNN and cuDNN convolve without
    transposing; activations follow their weights' layout. 3-D convolutions (SVD's temporal ones) stay."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            layer.to(memory_format=torch.channels_last)


def compile_module(module: torch.nn.Module) -> None:
    """Compile `module`'s forward in place (the module object, its attributes and its callers stay)."""
    module.compile(dynamic=False)


__all__ = ["Speedups", "apply_speedups", "ALL", "NONE", "fuse_attention_projections", "convs_channels_last"]
