"""ModelManager on the tiny weights: pipelines as configured, loaded once, shared, evicted LRU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    AnimateDiffVideoToVideoPipeline,
    DDIMScheduler,
    LCMScheduler,
    StableVideoDiffusionPipeline,
)

from motionserve.config import Settings
from motionserve.endpoints.base import ModelManagerLike
from motionserve.endpoints.registry import warm_endpoints
from motionserve.errors import ModelUnavailableError
from motionserve.inference.models import LCM_ADAPTER, ModelManager, _module_bytes
from motionserve.inference.motions import MOTIONS
from motionserve.inference.weights import LoraSourceError


def test_it_is_what_handlers_expect_of_ctx_models(tiny_models: ModelManager) -> None:
    assert isinstance(tiny_models, ModelManagerLike)


def test_device_and_dtype(tiny_models: ModelManager) -> None:
    assert tiny_models.device == torch.device("cpu")
    assert tiny_models.dtype == torch.float32  # fp16 only on CUDA


def test_text_to_video_uses_animatediffs_ddim_schedule(tiny_models: ModelManager) -> None:
    pipe = tiny_models.text_to_video()
    assert isinstance(pipe, AnimateDiffPipeline)
    assert type(pipe.unet).__name__ == "UNetMotionModel"
    assert isinstance(pipe.scheduler, DDIMScheduler)
    config = pipe.scheduler.config
    assert (config.clip_sample, config.timestep_spacing, config.beta_schedule, config.steps_offset) == (False, "linspace", "linear", 1)


def test_pipelines_are_loaded_once_and_video_to_video_shares_modules(tiny_models: ModelManager) -> None:
    t2v = tiny_models.text_to_video()
    v2v = tiny_models.video_to_video()
    assert tiny_models.text_to_video() is t2v and tiny_models.video_to_video() is v2v
    assert isinstance(v2v, AnimateDiffVideoToVideoPipeline)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "motion_adapter"):
        assert getattr(v2v, name) is getattr(t2v, name)


def test_turbo_has_the_animatelcm_adapter_lcm_scheduler_and_lcm_lora(tiny_models: ModelManager) -> None:
    turbo = tiny_models.turbo()
    assert isinstance(turbo, AnimateDiffVideoToVideoPipeline)
    assert isinstance(turbo.scheduler, LCMScheduler) and turbo.scheduler.config.beta_schedule == "linear"
    assert turbo.get_list_adapters() == {"unet": [LCM_ADAPTER]}
    assert turbo.get_active_adapters() == [LCM_ADAPTER]
    # A different motion adapter from text-to-video's, over its own copy of the base.
    t2v = tiny_models.text_to_video()
    assert turbo.unet is not t2v.unet
    t2v_motion = dict(t2v.unet.named_parameters())
    differs = [not torch.equal(p, t2v_motion[n]) for n, p in turbo.unet.named_parameters() if "motion_modules" in n and n in t2v_motion]
    assert differs and any(differs)


def test_svd_lcm_delegates_to_the_svd_loader(tiny_models: ModelManager) -> None:
    pipe = tiny_models.svd_lcm()
    assert isinstance(pipe, StableVideoDiffusionPipeline)
    assert tiny_models.svd_lcm() is pipe
    assert "fal-ai/fast-svd-lcm" in warm_endpoints(tiny_models)


def test_motion_loras_are_found_and_cached(tiny_models: ModelManager) -> None:
    for motion in MOTIONS:
        assert tiny_models.motion_lora_path(motion).suffix == ".safetensors"
    weights = tiny_models.motion_lora_state_dict("zoom-in")
    assert weights and tiny_models.motion_lora_state_dict("zoom-in") is weights
    with pytest.raises(KeyError):
        tiny_models.motion_lora_path("spin")


def test_resolve_lora(tiny_models: ModelManager, tiny_weights: Path) -> None:
    assert tiny_models.resolve_lora(str(tiny_weights / "user-lora.safetensors")).exists()
    with pytest.raises(LoraSourceError):
        tiny_models.resolve_lora("/nowhere/lora.safetensors")


def test_least_recently_used_pipelines_are_evicted_to_fit_the_budget(models_dir: Path, tiny_weights: Path) -> None:
    probe = ModelManager("tiny", models_dir, "cpu")
    animatediff = _module_bytes([probe.text_to_video(), probe.video_to_video()])
    turbo = _module_bytes([probe.turbo()])
    assert probe.loaded() == ["animatediff", "turbo"]  # unbounded on CPU: nothing evicted

    # Room for the larger of the two groups, not for both.
    manager = ModelManager("tiny", models_dir, "cpu", memory_budget_bytes=max(animatediff, turbo) + 1)
    first = manager.text_to_video()
    manager.turbo()
    assert manager.loaded() == ["turbo"]
    reloaded = manager.text_to_video()
    assert manager.loaded() == ["animatediff"] and reloaded is not first
    assert manager.video_to_video().unet is reloaded.unet  # the group comes back whole


def test_the_adapter_is_held_once_and_a_groups_size_is_known_before_it_loads(tiny_models: ModelManager) -> None:
    """The motion UNet holds the adapter's tensors themselves (diffusers' own assembly copies them into a
    new UNet), and what the checkpoint headers say a group takes is what it takes once loaded (the
    buffers the files do not hold aside), so the budget can make room before any of it is read."""
    for pipe in (tiny_models.text_to_video(), tiny_models.turbo()):
        unet = {p.data_ptr() for p in pipe.unet.parameters()}
        assert all(p.data_ptr() in unet for p in pipe.motion_adapter.parameters())
    tiny_models.svd_lcm()
    for group in ("animatediff", "turbo", "svd_lcm"):
        assert tiny_models._weights_bytes(group) == pytest.approx(tiny_models._groups[group]["size"], rel=0.01)


def test_using_a_pipeline_makes_it_most_recent(models_dir: Path, tiny_weights: Path) -> None:
    manager = ModelManager("tiny", models_dir, "cpu")
    manager.text_to_video()
    manager.turbo()
    manager.video_to_video()
    assert manager.loaded() == ["turbo", "animatediff"]
    # The group names the endpoints declare are the manager's own.
    assert warm_endpoints(manager) == [
        "fal-ai/animatediff-v2v/turbo", "fal-ai/fast-animatediff/text-to-video", "fal-ai/fast-animatediff/video-to-video",
    ]


def test_from_settings_budget(models_dir: Path, tiny_weights: Path) -> None:
    data_dir = models_dir.parent
    assert ModelManager.from_settings(Settings(weights="tiny", data_dir=data_dir), "cpu").memory_budget_bytes is None
    manager = ModelManager.from_settings(Settings(weights="tiny", data_dir=data_dir, memory_budget_gb=1.5), "cpu")
    assert manager.memory_budget_bytes == int(1.5 * 1024**3)
    assert manager.checkpoints.path("sd15_base") == tiny_weights / "sd15"


def test_a_missing_checkpoint_fails_the_getter_with_model_unavailable(tmp_path: Path, tiny_weights: Path) -> None:
    map_path = tmp_path / "weights.json"
    map_path.write_text(f'{{"sd15_base": "{tiny_weights / "sd15"}", "motion_adapter": "{tmp_path / "no-adapter"}"}}')
    manager = ModelManager(str(map_path), tmp_path, "cpu")
    with pytest.raises(ModelUnavailableError) as info:
        manager.text_to_video()
    assert "motion_adapter" in info.value.message
    assert manager.loaded() == []


def test_an_incomplete_checkpoint_folder_is_model_unavailable(tmp_path: Path, tiny_weights: Path) -> None:
    (tmp_path / "empty-adapter").mkdir()
    map_path = tmp_path / "weights.json"
    map_path.write_text(f'{{"sd15_base": "{tiny_weights / "sd15"}", "motion_adapter": "{tmp_path / "empty-adapter"}"}}')
    with pytest.raises(ModelUnavailableError, match="animatediff pipeline could not be loaded"):
        ModelManager(str(map_path), tmp_path, "cpu").text_to_video()


def test_fp16_on_cuda_when_available(models_dir: Path, tiny_weights: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    manager = ModelManager.from_settings(Settings(weights="tiny", data_dir=models_dir.parent), "cuda")
    assert manager.memory_budget_bytes == torch.cuda.get_device_properties(0).total_memory
    pipe = manager.text_to_video()
    assert manager.dtype == torch.float16 and pipe.unet.dtype == torch.float16 and pipe.device.type == "cuda"
