"""Warm pipelines for one device: loaded once, kept, and evicted least-recently-used under a memory budget.

Pipelines are grouped by what they share: text-to-video and video-to-video are one group (the v2v
pipeline is `from_pipe` of the t2v one, same modules), turbo and SVD-LCM are groups of their own.
Before a group is loaded, least-recently-used groups are evicted until its weights (counted from its
safetensors headers) fit in the budget; then its weights are read from safetensors straight onto the
device in the pipelines' dtype, with no staging copy on the CPU. Once loaded it is measured (parameters
and buffers, shared storage once). The budget counts weights only; activations need the rest of the
device's memory.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from motionserve.config import Settings
from motionserve.errors import ModelUnavailableError
from motionserve.inference.context_windows import ContextWindows
from motionserve.inference.speedups import ALL, NONE, Speedups, apply_speedups
from motionserve.inference.weights import Checkpoints, LoraSourceError, load_checkpoints, lora_weights_file, resolve_lora_source

if TYPE_CHECKING:
    from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, DiffusionPipeline

log = logging.getLogger(__name__)

GB = 1024**3
LCM_ADAPTER = "lcm"
LCM_ADAPTER_SCALE = 1.0  # AnimateLCM's LoRA at full weight, as its authors run it
# The weights each group reads: (checkpoint, its subfolders; "" the checkpoint itself). For its size
# before it is loaded; the SVD-LCM UNet file is left out: it replaces the base UNet's weights.
GROUP_WEIGHTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "animatediff": (("sd15_base", ("unet", "vae", "text_encoder")), ("motion_adapter", ("",))),
    "turbo": (("sd15_base", ("unet", "vae", "text_encoder")), ("animatelcm_adapter", ("",)), ("animatelcm_lora", ("",))),
    "svd_lcm": (("svd_base", ("unet", "vae", "image_encoder")),),
}


# Per group, how far the speed-ups reach (see inference.speedups): the UNet attention that keeps separate
# projections because LoRAs are loaded into it, and whether the UNet is compiled. Text-to-video's motion
# LoRAs go into the motion modules (never fused; a compile per motion set); turbo's LCM and user LoRAs
# into the UNet's own attention, set per request: neither fused nor compiled there.
SPEEDUP_SCOPES: dict[str, tuple[re.Pattern[str], bool]] = {
    "animatediff": (NONE, True), "turbo": (ALL, False), "svd_lcm": (NONE, True),
}


class ModelManager:
    """Builds pipelines on first use and keeps them warm on `device`.

    `weights` is `Settings.weights` ("real", "tiny", or a JSON map path); `cache_dir` holds the tiny
    models (real checkpoints live in the Hugging Face cache). `memory_budget_bytes=None` means unbounded.
    """

    def __init__(
        self,
        weights: str,
        cache_dir: Path,
        device: str,
        memory_budget_bytes: int | None = None,
        *,
        lora_dir: Path | None = None,
        max_lora_bytes: int | None = None,
        context_windows: ContextWindows | None = None,
        speedups: Speedups = Speedups(),
    ) -> None:
        self.device = torch.device(device)
        # Half precision on GPUs (how the checkpoints are meant to run); CPUs are slow and inexact in fp16.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.memory_budget_bytes = memory_budget_bytes
        self.lora_dir = lora_dir  # the only place user LoRAs given as local paths may come from
        self.max_lora_bytes = max_lora_bytes
        # The endpoints' windows for long AnimateDiff clips (default: the default windows for the device).
        self.context_windows = context_windows or ContextWindows.for_device(self.device)
        self.speedups = speedups  # applied to each group once, as it loads
        self.checkpoints: Checkpoints = load_checkpoints(weights, tiny_root=Path(cache_dir) / "tiny")
        self._groups: OrderedDict[str, dict[str, Any]] = OrderedDict()  # group -> {"size": bytes, pipeline name -> pipe}
        self._motion_loras: dict[str, dict[str, torch.Tensor]] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings, device: str) -> "ModelManager":
        budget: int | None
        if settings.memory_budget_gb is not None:
            budget = int(settings.memory_budget_gb * GB)
        elif torch.device(device).type == "cuda":
            budget = torch.cuda.get_device_properties(torch.device(device)).total_memory
        else:
            budget = None
        return cls(
            settings.weights, settings.models_dir, device, budget,
            lora_dir=settings.user_lora_dir, max_lora_bytes=settings.max_fetch_bytes,
            context_windows=ContextWindows.for_device(torch.device(device), settings.context_length, settings.context_overlap),
            speedups=Speedups.from_settings(settings),
        )

    # -- pipelines ---------------------------------------------------------------------------------

    def text_to_video(self) -> "AnimateDiffPipeline":
        """AnimateDiff with the v1-5-2 motion adapter and AnimateDiff's recommended DDIM schedule."""
        return self._get("animatediff", "text_to_video", self._load_animatediff)

    def video_to_video(self) -> "AnimateDiffVideoToVideoPipeline":
        """The video-to-video pipeline over the very same modules as `text_to_video()`."""
        return self._get("animatediff", "video_to_video", self._load_animatediff)

    def turbo(self) -> "AnimateDiffVideoToVideoPipeline":
        """Video-to-video with the AnimateLCM adapter, LCM scheduler and the LCM LoRA as adapter "lcm"."""
        return self._get("turbo", "turbo", self._load_turbo)

    def svd_lcm(self) -> "DiffusionPipeline":
        """StableVideoDiffusionPipeline with the AnimateLCM-SVD UNet (built by `inference.svd`)."""
        return self._get("svd_lcm", "svd_lcm", self._load_svd_lcm)

    def load(self, group: str) -> None:
        """Load a pipeline group now (a worker's preload) rather than on its first request."""
        getters: dict[str, Callable[[], Any]] = {
            "animatediff": self.text_to_video, "turbo": self.turbo, "svd_lcm": self.svd_lcm,
        }
        getters[group]()

    def loaded(self) -> list[str]:
        """Warm groups, least recently used first."""
        with self._lock:
            return list(self._groups)

    def _get(self, group: str, name: str, loader: Callable[[], dict[str, Any]]) -> Any:
        with self._lock:
            if group not in self._groups:
                try:
                    self._make_room(self._weights_bytes(group))
                    pipes = loader()
                except ModelUnavailableError:
                    raise
                except (OSError, ValueError) as exc:
                    # A checkpoint folder that exists but is incomplete or of the wrong kind.
                    raise ModelUnavailableError(
                        f"the {group} pipeline could not be loaded from its checkpoints ({exc}); re-run "
                        f"`motionserve models pull` or fix the paths in the weights map"
                    ) from exc
                # Once per group: its pipelines share their UNet and VAE. Before measuring: fused layers add weights.
                keep_unfused, compile_unet = SPEEDUP_SCOPES[group]
                apply_speedups(next(iter(pipes.values())), self.speedups, keep_unfused=keep_unfused, compile_unet=compile_unet)
                size = _module_bytes(pipes.values())
                self._make_room(size)  # in case the headers undercounted it (e.g. .bin weights)
                for pipe in pipes.values():
                    pipe.to(self.device)  # no-op for what was loaded onto the device: only small leftovers move
                    pipe.set_progress_bar_config(disable=True)
                self._groups[group] = {"size": size, **pipes}
                log.info("loaded %s (%.2f GB) on %s", group, size / GB, self.device)
            self._groups.move_to_end(group)
            return self._groups[group][name]

    def _make_room(self, size: int) -> None:
        if self.memory_budget_bytes is None:
            return
        if size > self.memory_budget_bytes:
            log.warning("a pipeline of %.2f GB exceeds the %.2f GB budget; loading it alone", size / GB, self.memory_budget_bytes / GB)
        while self._groups and sum(g["size"] for g in self._groups.values()) + size > self.memory_budget_bytes:
            evicted, _ = self._groups.popitem(last=False)
            log.info("evicting %s to make room", evicted)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _weights_bytes(self, group: str) -> int:
        """What `group`'s weights will take in the pipelines' dtype, from the safetensors headers alone."""
        files: list[Path] = []
        for name, subfolders in GROUP_WEIGHTS[group]:
            root = self.checkpoints.path(name)
            for where in (root / sub if sub else root for sub in subfolders):
                # Not the variants some folders also hold (diffusion_pytorch_model.fp16.safetensors).
                files += [where] if where.is_file() else [f for f in sorted(where.glob("*.safetensors")) if "." not in f.stem]
        return _safetensors_bytes(files, torch.empty((), dtype=self.dtype).element_size())

    # -- loaders -----------------------------------------------------------------------------------

    def _on_device(self) -> dict[str, Any]:
        """`from_pretrained` arguments that read safetensors straight onto the device in the pipelines' dtype."""
        return {"dtype": self.dtype, "device_map": {"": self.device}}

    def _animatediff_modules(self, adapter_name: str) -> dict[str, Any]:
        """The SD1.5 components and the motion UNet of SD1.5's UNet with `adapter_name`'s motion modules.

        diffusers would build the motion UNet in the pipeline's constructor (`UNetMotionModel.from_unet2d`):
        a randomly initialised fp32 model on the CPU that both are copied into, the adapter's weights then
        held twice. Here it is built on the meta device and takes the loaded tensors themselves.
        """
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
        from transformers import CLIPTextModel

        base = self.checkpoints.path("sd15_base")
        adapter = MotionAdapter.from_pretrained(self.checkpoints.path(adapter_name), **self._on_device())
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **self._on_device())
        with init_empty_weights():
            motion_unet = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
        motion_unet.load_state_dict({**unet.state_dict(), **adapter.state_dict()}, strict=True, assign=True)
        return {
            "unet": motion_unet,
            "motion_adapter": adapter,
            "vae": AutoencoderKL.from_pretrained(base, subfolder="vae", **self._on_device()),
            "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **self._on_device()),
        }

    def _load_animatediff(self) -> dict[str, Any]:
        from diffusers import DDIMScheduler

        from motionserve.inference.animatediff_pipelines import (
            MotionserveAnimateDiffPipeline,
            MotionserveAnimateDiffVideoToVideoPipeline,
        )

        t2v = MotionserveAnimateDiffPipeline.from_pretrained(
            self.checkpoints.path("sd15_base"), **self._animatediff_modules("motion_adapter"), dtype=self.dtype
        )
        # AnimateDiff's documented schedule; the motion modules were trained with linear betas.
        t2v.scheduler = DDIMScheduler.from_config(
            t2v.scheduler.config, clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1
        )
        v2v = MotionserveAnimateDiffVideoToVideoPipeline.from_pipe(t2v)
        return {"text_to_video": t2v, "video_to_video": v2v}

    def _load_turbo(self) -> dict[str, Any]:
        from diffusers import LCMScheduler

        from motionserve.inference.animatediff_pipelines import MotionserveAnimateDiffVideoToVideoPipeline

        pipe = MotionserveAnimateDiffVideoToVideoPipeline.from_pretrained(
            self.checkpoints.path("sd15_base"), **self._animatediff_modules("animatelcm_adapter"), dtype=self.dtype
        )
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear")
        pipe.load_lora_weights(str(self.checkpoints.path("animatelcm_lora")), adapter_name=LCM_ADAPTER)
        pipe.set_adapters([LCM_ADAPTER], adapter_weights=[LCM_ADAPTER_SCALE])
        return {"turbo": pipe}

    def _load_svd_lcm(self) -> dict[str, Any]:
        from motionserve.inference.svd import load_svd_lcm

        return {"svd_lcm": load_svd_lcm(self.checkpoints, self.device, self.dtype)}

    # -- LoRAs -------------------------------------------------------------------------------------

    def motion_lora_path(self, motion: str) -> Path:
        """The weights file of a motion LoRA (e.g. "zoom-in")."""
        return lora_weights_file(self.checkpoints.path(f"motion_lora:{motion}"))

    def motion_lora_state_dict(self, motion: str) -> Mapping[str, torch.Tensor]:
        """A motion LoRA's weights, read once and kept in memory (loading it into a pipeline is then cheap)."""
        with self._lock:
            if motion not in self._motion_loras:
                from safetensors.torch import load_file

                self._motion_loras[motion] = load_file(self.motion_lora_path(motion))
            return self._motion_loras[motion]

    def resolve_lora(self, source: str) -> Path:
        """A user LoRA given as a file/folder in `lora_dir` or a hub repo id (optionally `owner/repo/file.safetensors`).

        Raises `LoraSourceError` (a ValueError) with a user-facing message when it cannot be had.
        """
        return resolve_lora_source(source, local_root=self.lora_dir, max_bytes=self.max_lora_bytes)


def _module_bytes(pipes: Any) -> int:
    """Bytes of the parameters and buffers of the pipelines' modules, shared storage counted once (the
    motion adapter's tensors are the motion UNet's)."""
    seen: set[tuple[torch.device, int]] = set()
    total = 0
    for pipe in pipes:
        for component in pipe.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for tensor in [*component.parameters(), *component.buffers()]:
                key = (tensor.device, tensor.data_ptr())
                if key not in seen:
                    seen.add(key)
                    total += tensor.numel() * tensor.element_size()
    return total


def _safetensors_bytes(files: list[Path], element_size: int) -> int:
    """Bytes the tensors of `files` take at `element_size` bytes per value, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys()) * element_size
    return total


__all__ = ["ModelManager", "LoraSourceError", "LCM_ADAPTER", "LCM_ADAPTER_SCALE"]
