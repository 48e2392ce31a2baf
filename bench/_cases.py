"""One benchmark case per endpoint: the fal request, and the plain diffusers pipeline call it amounts to.

Each case loads its bare pipeline from the same checkpoint folders the server loads, with the scheduler
settings `inference/models.py` uses, and builds both forms of a request from the same numbers: the JSON
payload for `/queue/{endpoint}` and the keyword arguments of the pipeline call (same size, frames, steps,
guidance, strength, seed). What the bare call skips is what the service adds: fetching and decoding the
input, prompt weighting, the MP4 encode, storing the file, and the HTTP queue around it all. The AnimateDiff
pipelines are the project's subclasses (`inference/animatediff_pipelines.py`): diffusers' own except that
context windows (beyond 32 frames) run batched, so both forms do the same model work at 64 frames too.

Input media are synthetic (a moving gradient and disc), 512×512 so that the video endpoints' working size
(about 512×512 pixels, aspect kept) is exactly 512×512 for both forms; the SVD image is 1024×576, its
landscape working size, so it needs no crop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import argparse

    from _weights import Weights

PROMPT = "a red rocket over the sea at sunset, high quality"
NEGATIVE = "(bad quality, worst quality:1.2), ugly faces, bad anime"  # the endpoints' default
SEED = 42
SOURCE_FPS = 16
SIZE = 512
MAX_MOTION_FRAMES = 32


@dataclass
class Request:
    """One request in both forms. `media` maps a payload field to (bytes, content type, file name)."""

    frames: int
    payload: dict[str, Any]
    call: dict[str, Any]
    media: dict[str, tuple[bytes, str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    key: str
    endpoint_id: str
    default_frames: int
    long_clips: bool  # 16 vs 64 frames applies (AnimateDiff family)
    load: Callable[["Weights", str, Any], Any]
    request: Callable[[int | None], Request]


# ---- synthetic media ---------------------------------------------------------------------------------


def synthetic_frames(count: int, width: int = SIZE, height: int = SIZE) -> list[np.ndarray]:
    """A gradient background with a disc moving across it: smooth content, like a real clip, not noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        t = i / max(count - 1, 1)
        cx, cy = width * (0.2 + 0.6 * t), height * (0.5 + 0.25 * np.sin(6.28 * t))
        disc = ((xs - cx) ** 2 + (ys - cy) ** 2) < (0.12 * min(width, height)) ** 2
        frame = np.stack([xs / width, ys / height, np.full_like(xs, 0.5 + 0.5 * t)], axis=-1)
        frame[disc] = (1.0, 0.9, 0.1)
        frames.append((frame * 255).astype(np.uint8))
    return frames


_VIDEOS: dict[int, bytes] = {}


def source_video(frames: int) -> bytes:
    """An MP4 of `frames` frames at 16 fps, made once per length."""
    from motionserve.inference.video_io import encode_mp4

    if frames not in _VIDEOS:
        _VIDEOS[frames] = encode_mp4(synthetic_frames(frames), fps=SOURCE_FPS)
    return _VIDEOS[frames]


def source_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(synthetic_frames(1, 1024, 576)[0]).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- pipelines as plain diffusers builds them ----------------------------------------------------------


def _animatediff(weights: "Weights", dtype: Any, adapter: str) -> Any:
    from diffusers import MotionAdapter

    # diffusers' AnimateDiffPipeline but for FreeNoise's windows, which run batched as in the endpoints
    # (identical below 33 frames), so that bare and e2e do the same model work at 64 frames too.
    from motionserve.inference.animatediff_pipelines import MotionserveAnimateDiffPipeline

    motion_adapter = MotionAdapter.from_pretrained(weights.paths[adapter], dtype=dtype)
    return MotionserveAnimateDiffPipeline.from_pretrained(weights.paths["sd15_base"], motion_adapter=motion_adapter,
                                                          dtype=dtype)


def _ddim(pipe: Any) -> Any:
    from diffusers import DDIMScheduler

    # AnimateDiff's documented schedule, as the server's ModelManager sets it.
    return DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, timestep_spacing="linspace",
                                     beta_schedule="linear", steps_offset=1)


def load_t2v(weights: "Weights", device: str, dtype: Any) -> Any:
    pipe = _animatediff(weights, dtype, "motion_adapter")
    pipe.scheduler = _ddim(pipe)
    return _ready(pipe, device)


def load_v2v(weights: "Weights", device: str, dtype: Any) -> Any:
    from motionserve.inference.animatediff_pipelines import MotionserveAnimateDiffVideoToVideoPipeline

    pipe = _animatediff(weights, dtype, "motion_adapter")
    pipe.scheduler = _ddim(pipe)
    return _ready(MotionserveAnimateDiffVideoToVideoPipeline.from_pipe(pipe), device)


def load_turbo(weights: "Weights", device: str, dtype: Any) -> Any:
    from diffusers import LCMScheduler, MotionAdapter

    from motionserve.inference.animatediff_pipelines import MotionserveAnimateDiffVideoToVideoPipeline

    adapter = MotionAdapter.from_pretrained(weights.paths["animatelcm_adapter"], dtype=dtype)
    pipe = MotionserveAnimateDiffVideoToVideoPipeline.from_pretrained(weights.paths["sd15_base"], motion_adapter=adapter,
                                                                      dtype=dtype)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear")
    pipe.load_lora_weights(str(weights.paths["animatelcm_lora"]), adapter_name="lcm")
    pipe.set_adapters(["lcm"], adapter_weights=[1.0])
    return _ready(pipe, device)


def load_svd(weights: "Weights", device: str, dtype: Any) -> Any:
    from diffusers import StableVideoDiffusionPipeline
    from safetensors.torch import load_file

    # diffusers has no AnimateLCM-SVD sampler; the project's scheduler is the published one (notes §1.4).
    from motionserve.inference.svd_lcm_scheduler import AnimateLCMSVDScheduler

    pipe = StableVideoDiffusionPipeline.from_pretrained(weights.paths["svd_base"], dtype=dtype)
    pipe.unet.load_state_dict(load_file(str(weights.paths["svd_lcm_unet"])), strict=False)
    pipe.scheduler = AnimateLCMSVDScheduler()
    return _ready(pipe, device)


def _ready(pipe: Any, device: str) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---- requests ------------------------------------------------------------------------------------------


def request_t2v(frames: int | None) -> Request:
    n = frames or 16
    common = {"num_frames": n, "num_inference_steps": 25, "guidance_scale": 7.5}
    payload = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "video_size": "square", "fps": 8, "seed": SEED, **common}
    call = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "height": SIZE, "width": SIZE, **common}
    return Request(n, payload, call)


def request_v2v(frames: int | None) -> Request:
    from motionserve.inference.video_io import decode_video

    # fal's default is 3 s at 8 fps = 24 frames; 16 = 2 s at 8 fps, 64 = 4 s at 16 fps (both maxima).
    seconds, fps = {None: (3, 8), 16: (2, 8), 64: (4, 16)}[frames]
    data = source_video(4 * SOURCE_FPS)
    clip = decode_video(data, max_seconds=seconds, sample_fps=fps)
    common = {"num_inference_steps": 25, "strength": 0.7, "guidance_scale": 7.5}
    payload = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "first_n_seconds": seconds, "fps": fps, "seed": SEED,
               **common}
    call = {"video": clip.frames, "prompt": PROMPT, "negative_prompt": NEGATIVE, "height": SIZE, "width": SIZE, **common}
    return Request(len(clip.frames), payload, call, {"video_url": (data, "video/mp4", "source.mp4")})


def request_turbo(frames: int | None) -> Request:
    from motionserve.inference.video_io import decode_video

    n = frames or 16
    data = source_video(2 * n)  # select_every_nth_frame=2 (fal's default) keeps n of 2n frames
    clip = decode_video(data, every_nth=2)
    common = {"num_inference_steps": 8, "guidance_scale": 2.2}
    payload = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "select_every_nth_frame": 2, "seed": SEED, **common}
    # The endpoint runs exactly num_inference_steps over the last 70% of the schedule (turbo.STRENGTH).
    call = {"video": clip.frames, "prompt": PROMPT, "negative_prompt": NEGATIVE, "height": SIZE, "width": SIZE,
            "strength": 0.7, "enforce_inference_steps": True, **common}
    return Request(len(clip.frames), payload, call, {"video_url": (data, "video/mp4", "source.mp4")})


def request_svd(frames: int | None) -> Request:
    from PIL import Image

    if frames not in (None, 25):
        raise ValueError("fast-svd-lcm always makes 25 frames")
    data = source_image()
    payload = {"motion_bucket_id": 127, "cond_aug": 0.02, "steps": 4, "fps": 10, "seed": SEED}
    call = {
        "image": Image.open(io.BytesIO(data)).convert("RGB"), "height": 576, "width": 1024, "num_frames": 25,
        "num_inference_steps": 4, "min_guidance_scale": 1.0, "max_guidance_scale": 1.0, "fps": 10,
        "motion_bucket_id": 127, "noise_aug_strength": 0.02, "decode_chunk_size": 8,  # as svd_lcm.py
    }
    return Request(25, payload, call, {"image_url": (data, "image/png", "source.png")})


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case("t2v", "fal-ai/fast-animatediff/text-to-video", 16, True, load_t2v, request_t2v),
        Case("v2v", "fal-ai/fast-animatediff/video-to-video", 24, True, load_v2v, request_v2v),
        Case("turbo", "fal-ai/animatediff-v2v/turbo", 16, True, load_turbo, request_turbo),
        Case("svd-lcm", "fal-ai/fast-svd-lcm", 25, False, load_svd, request_svd),
    )
}


def chosen_endpoints(parser: "argparse.ArgumentParser", value: str) -> list[str]:
    """The case keys of an `--endpoint` value (`all`, or keys comma-separated); a parser error otherwise."""
    keys = list(CASES) if value == "all" else [k.strip() for k in value.split(",") if k.strip()]
    if not keys or any(k not in CASES for k in keys):
        parser.error(f"--endpoint must be one or more of {', '.join(CASES)} (comma-separated), or all")
    return keys


def with_steps(request: Request, steps: int | None) -> Request:
    """The same request with another step count in both forms (quick checks; not the default request)."""
    if steps is None:
        return request
    payload_key = "steps" if "steps" in request.payload else "num_inference_steps"
    payload = {**request.payload, payload_key: steps}
    return Request(request.frames, payload, {**request.call, "num_inference_steps": steps}, request.media)


def call_bare(pipe: Any, request: Request, device: str) -> np.ndarray:
    """The plain pipeline call for `request`; returns its frames (F, H, W, 3) floats in [0, 1]."""
    import torch

    from motionserve.config import Settings

    generator = torch.Generator(device=device).manual_seed(SEED)
    if hasattr(pipe, "enable_free_noise"):
        # What the endpoints do: context windows only beyond the motion modules' 32 frames, of the
        # server's MOTIONSERVE_CONTEXT_LENGTH / _OVERLAP (the server started here reads the same environment).
        if request.frames > MAX_MOTION_FRAMES:
            settings = Settings()
            pipe.enable_free_noise(context_length=settings.context_length,
                                   context_stride=settings.context_length - settings.context_overlap)
        elif pipe.free_noise_enabled:
            pipe.disable_free_noise()
    if hasattr(pipe.scheduler, "noise_generator"):
        pipe.scheduler.noise_generator = generator  # the SVD-LCM sampler's re-noising, seeded as the endpoint does
    out = pipe(**request.call, generator=generator, output_type="np")  # under no_grad, as the endpoints call it
    return np.asarray(out.frames[0])
