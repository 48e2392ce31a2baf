"""The tiny AnimateDiff-family checkpoints: real layouts, real shapes, deterministic, built once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from motionserve.inference import tiny
from motionserve.inference.motions import MOTIONS
from motionserve.inference.tiny import build_tiny_weights, ensure_tiny_weights
from motionserve.inference.weights import Checkpoints


def test_every_component_is_saved_in_its_real_layout(tiny_weights: Path) -> None:
    base = tiny_weights / "sd15"
    index = json.loads((base / "model_index.json").read_text())
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert component in index and (base / component).is_dir()
    assert (base / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (base / "text_encoder" / "model.safetensors").exists()
    for adapter in ("motion-adapter", "animatelcm-adapter"):
        assert (tiny_weights / adapter / "config.json").exists()
        assert (tiny_weights / adapter / "diffusion_pytorch_model.safetensors").exists()
    for motion in MOTIONS:
        assert (tiny_weights / "motion-loras" / motion / "pytorch_lora_weights.safetensors").exists()
    assert (tiny_weights / "animatelcm" / "AnimateLCM_sd15_t2v_lora.safetensors").exists()
    assert (tiny_weights / "user-lora.safetensors").exists()


def test_the_weights_map_points_at_local_folders(tiny_weights: Path) -> None:
    raw = json.loads((tiny_weights / "weights.json").read_text())
    checkpoints = Checkpoints.from_map(raw, base_dir=tiny_weights)
    for ckpt in checkpoints:
        assert ckpt.is_local
    for name in ("sd15_base", "motion_adapter", "animatelcm_adapter", "animatelcm_lora", "motion_lora:zoom-in"):
        assert checkpoints.path(name).exists()


def test_shapes_the_code_relies_on_are_real(tiny_weights: Path) -> None:
    vae = AutoencoderKL.from_pretrained(tiny_weights / "sd15" / "vae")
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8  # ×8 downsampling
    assert vae.config.latent_channels == 4
    unet = UNet2DConditionModel.from_pretrained(tiny_weights / "sd15" / "unet")
    assert unet.config.in_channels == 4 and unet.config.sample_size * 8 == 512
    # Spatial attention only at the lowest resolution (speed on CPUs).
    assert unet.config.down_block_types[0] == "DownBlock2D"
    tokenizer = CLIPTokenizer.from_pretrained(tiny_weights / "sd15" / "tokenizer")
    assert tokenizer.model_max_length == 77
    assert len(tokenizer("hello world").input_ids) == len("helloworld") + 2  # a token per byte, BOS/EOS
    adapter = MotionAdapter.from_pretrained(tiny_weights / "motion-adapter")
    assert adapter.config.motion_max_seq_length == 32


def test_loras_target_the_right_layers(tiny_weights: Path) -> None:
    motion = load_file(tiny_weights / "motion-loras" / "zoom-in" / "pytorch_lora_weights.safetensors")
    assert motion and all("motion_modules" in k and k.startswith("unet.") for k in motion)
    lcm = load_file(tiny_weights / "animatelcm" / "AnimateLCM_sd15_t2v_lora.safetensors")
    assert lcm and all("motion_modules" not in k and "attentions" in k for k in lcm)
    zoom_out = load_file(tiny_weights / "motion-loras" / "zoom-out" / "pytorch_lora_weights.safetensors")
    assert any(not (motion[k] == zoom_out[k]).all() for k in motion)  # each motion is its own LoRA


def test_the_base_loads_as_an_animatediff_pipeline(tiny_weights: Path) -> None:
    adapter = MotionAdapter.from_pretrained(tiny_weights / "motion-adapter")
    pipe = AnimateDiffPipeline.from_pretrained(tiny_weights / "sd15", motion_adapter=adapter)
    assert type(pipe.unet).__name__ == "UNetMotionModel"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
        if "svd" not in p.name and "svd" not in p.parts[len(folder.parts)]
    }


def test_builds_are_deterministic(tmp_path: Path, tiny_weights: Path) -> None:
    (tmp_path / "again").mkdir()
    build_tiny_weights(tmp_path / "again")
    assert _digest(tmp_path / "again") == _digest(tiny_weights)


def test_ensure_builds_once_and_two_processes_can_race(tmp_path: Path) -> None:
    script = "import sys; from pathlib import Path; from motionserve.inference.tiny import ensure_tiny_weights; print(ensure_tiny_weights(Path(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(set(outputs)) == 1
    final = Path(outputs[0])
    assert (final / "weights.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no staging folders left behind

    stamp = (final / "weights.json").stat().st_mtime_ns
    assert ensure_tiny_weights(tmp_path) == final
    assert (final / "weights.json").stat().st_mtime_ns == stamp  # not rebuilt


def test_a_build_that_loses_the_race_uses_the_winners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / f"animatediff-v{tiny.TINY_VERSION}"

    def build_while_another_process_finishes(out: Path) -> None:
        (out / "weights.json").write_text("{}")  # ours
        final.mkdir()
        (final / "weights.json").write_text('{"winner": true}')  # theirs lands first

    monkeypatch.setattr(tiny, "build_tiny_weights", build_while_another_process_finishes)
    assert ensure_tiny_weights(tmp_path) == final
    assert json.loads((final / "weights.json").read_text()) == {"winner": True}
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


@pytest.mark.parametrize("motion", ["zoom-in", "rolling-anticlockwise"])
def test_motion_loras_load_into_the_pipeline(tiny_weights: Path, motion: str) -> None:
    adapter = MotionAdapter.from_pretrained(tiny_weights / "motion-adapter")
    pipe = AnimateDiffPipeline.from_pretrained(tiny_weights / "sd15", motion_adapter=adapter)
    pipe.load_lora_weights(str(tiny_weights / "motion-loras" / motion), adapter_name=motion)
    assert pipe.get_list_adapters() == {"unet": [motion]}
