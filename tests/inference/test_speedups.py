"""The speed-up options (inference.speedups) on the tiny weights: each computes what the eager pipeline
computes, within a stated tolerance, and leaves alone the layers LoRAs and FreeNoise need.

Tolerance: fp32 on the CPU, outputs in [0, 1]. Fusing projections and changing memory layouts reorder
the same sums (oneDNN picks other kernels), and compiled kernels fuse and reorder them further. Seen on
the tiny and bench weights: fused projections ~1e-6, channels-last up to 6e-5 (the random weights'
VAE amplifies rounding). 1e-3 leaves room for other CPUs' kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

from motionserve.config import Settings
from motionserve.inference.models import ModelManager
from motionserve.inference.speedups import Speedups

TOLERANCE = 1e-3


def _t2v(manager: ModelManager, num_frames: int = 8) -> np.ndarray:
    pipe = manager.text_to_video()
    out = pipe(
        prompt="a boat", num_frames=num_frames, height=64, width=64, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )
    return np.asarray(out.frames[0])


def _svd(manager: ModelManager) -> np.ndarray:
    from PIL import Image

    pipe = manager.svd_lcm()
    pipe.scheduler.noise_generator = torch.Generator().manual_seed(1)  # its re-noising, as the endpoint seeds it
    image = Image.fromarray(np.linspace(0, 255, 64 * 64 * 3).astype(np.uint8).reshape(64, 64, 3))
    out = pipe(
        image, height=64, width=64, num_frames=4, num_inference_steps=2, decode_chunk_size=4,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )
    return np.asarray(out.frames[0])


def _fused_names(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, Attention) and isinstance(m.processor, FusedAttnProcessor2_0)]


@pytest.fixture
def manager(models_dir: Path, tiny_weights: Path) -> Any:
    def make(**options: Any) -> ModelManager:
        return ModelManager("tiny", models_dir, "cpu", lora_dir=tiny_weights, speedups=Speedups(**options))

    return make


def test_settings_parse_the_options_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Speedups.from_settings(Settings(data_dir=tmp_path)) == Speedups(False, True, False, tmp_path / "compile-cache")
    monkeypatch.setenv("MOTIONSERVE_FUSE_QKV", "true")
    monkeypatch.setenv("MOTIONSERVE_CHANNELS_LAST", "0")
    monkeypatch.setenv("MOTIONSERVE_TORCH_COMPILE", "yes")
    monkeypatch.setenv("MOTIONSERVE_COMPILE_CACHE_DIR", str(tmp_path / "kernels"))
    assert Speedups.from_settings(Settings(data_dir=tmp_path)) == Speedups(True, False, True, tmp_path / "kernels")
    assert Speedups.from_settings(Settings(data_dir=tmp_path, channels_last=True)).channels_last is True  # flags win


@pytest.mark.parametrize("options", [{"fuse_qkv": True}, {"channels_last": True}], ids=["fuse_qkv", "channels_last"])
def test_text_to_video_matches_eager(tiny_models: ModelManager, manager: Any, options: dict[str, bool]) -> None:
    sped_up = manager(**options)
    assert np.abs(_t2v(sped_up) - _t2v(tiny_models)).max() <= TOLERANCE


def test_long_clips_with_context_windows_match_eager_with_both_options(tiny_models: ModelManager, manager: Any) -> None:
    from motionserve.endpoints._animatediff import configure_context_windows
    from motionserve.inference.context_windows import ContextWindows

    sped_up = manager(fuse_qkv=True, channels_last=True)
    outputs = []
    for models in (sped_up, tiny_models):
        assert configure_context_windows(models.text_to_video(), 40, ContextWindows(16, 4))
        try:
            outputs.append(_t2v(models, num_frames=40))
        finally:
            models.text_to_video().disable_free_noise()
    assert np.abs(outputs[0] - outputs[1]).max() <= TOLERANCE


def test_svd_lcm_matches_eager_with_both_options(tiny_models: ModelManager, manager: Any) -> None:
    sped_up = manager(fuse_qkv=True, channels_last=True)
    assert _fused_names(sped_up.svd_lcm().unet)
    assert np.abs(_svd(sped_up) - _svd(tiny_models)).max() <= TOLERANCE


def test_attention_that_loras_go_into_keeps_its_projections(manager: Any) -> None:
    models = manager(fuse_qkv=True)
    fused = _fused_names(models.text_to_video().unet)
    # Text-to-video: the UNet's own attention is fused, the motion modules (motion LoRAs, FreeNoise) are not.
    assert fused and not [n for n in fused if "motion_modules" in n]
    # Turbo: LCM and user LoRAs go into the UNet's own attention, set per request: nothing there is fused.
    assert _fused_names(models.turbo().unet) == []


def _turbo(manager: ModelManager) -> np.ndarray:
    from PIL import Image

    frames = [Image.fromarray(np.full((64, 64, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    out = manager.turbo()(
        video=frames, prompt="a boat", num_inference_steps=2, strength=0.7, guidance_scale=1.0, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )
    return np.asarray(out.frames[0])


def test_compiled_decoder_matches_eager_compiles_once_per_shape_and_is_cached_on_disk(
    tiny_models: ModelManager, manager: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through turbo, whose compile scope is the VAE decoder alone (its UNet takes LoRAs per request):
    this test took 53 s on 2 shared cores at load average 5 (4 min at 13): inductor's g++ runs for the tiny
    decoder's kernels; the tiny UNet's took over 10 min at 13 (bench_options.py measures the UNet's
    compile and its difference to eager)."""
    from torch._dynamo.utils import counters

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # the option sets it; restored after
    torch._dynamo.reset()
    compiled = manager(torch_compile=True, compile_cache_dir=tmp_path / "kernels")
    first = _turbo(compiled)
    assert np.abs(first - _turbo(tiny_models)).max() <= TOLERANCE
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and any((tmp_path / "kernels").iterdir())  # kernels are kept where the setting says
    _turbo(compiled)
    assert counters["stats"]["unique_graphs"] == graphs  # the same shape again: no new graph

    # A second load (as after a restart; dynamo's in-memory state dropped): code comes from the cache.
    torch._dynamo.reset()
    hits = counters["inductor"]["fxgraph_cache_hit"]
    reloaded = manager(torch_compile=True, compile_cache_dir=tmp_path / "kernels")
    assert np.abs(_turbo(reloaded) - first).max() <= TOLERANCE
    assert counters["inductor"]["fxgraph_cache_hit"] > hits
    torch._dynamo.reset()


def test_turbo_with_its_lcm_lora_matches_eager_channels_last(tiny_models: ModelManager, manager: Any) -> None:
    assert np.abs(_turbo(manager(channels_last=True)) - _turbo(tiny_models)).max() <= TOLERANCE
