"""`fal-ai/fast-animatediff/text-to-video`: AnimateDiff (SD1.5 + motion adapter v1-5-2) from a prompt.

The input schema is fal's (field names, defaults, enums). Where fal's page gives no range, the bounds
are ours and documented on the field: `num_inference_steps` 1..50 and `guidance_scale` 0..20 as on the
sibling video-to-video page, `fps` 1..60, and custom `video_size` sides 64..2048 px, rounded to the
nearest multiple of 8 (the VAE works in 8-pixel cells). `num_frames` is capped by the operator's
`max_frames` (checked before the request is queued); beyond 32 frames, the motion modules' training
length, FreeNoise context windows (16 frames, stride 4) are used. Prompts understand A1111 weighting,
e.g. fal's default negative prompt ``(bad quality, worst quality:1.2)``.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from motionserve.endpoints._video import pending_mp4
from motionserve.endpoints.base import Endpoint, EndpointInput, File, Limits, PendingOutput
from motionserve.errors import InputValidationError

if TYPE_CHECKING:
    import numpy as np

    from motionserve.endpoints.base import RunContext

DEFAULT_NEGATIVE_PROMPT = "(bad quality, worst quality:1.2), ugly faces, bad anime"
SIZE_MULTIPLE = 8


class Motion(str, Enum):
    """Camera motions, each a guoyww motion LoRA; several can be combined."""

    zoom_in = "zoom-in"
    zoom_out = "zoom-out"
    pan_left = "pan-left"
    pan_right = "pan-right"
    tilt_up = "tilt-up"
    tilt_down = "tilt-down"
    rolling_clockwise = "rolling-clockwise"
    rolling_anticlockwise = "rolling-anticlockwise"


class VideoSizePreset(str, Enum):
    square_hd = "square_hd"
    square = "square"
    portrait_4_3 = "portrait_4_3"
    portrait_16_9 = "portrait_16_9"
    landscape_4_3 = "landscape_4_3"
    landscape_16_9 = "landscape_16_9"


# (width, height) as on fal's pages.
PRESET_SIZES: dict[VideoSizePreset, tuple[int, int]] = {
    VideoSizePreset.square_hd: (1024, 1024),
    VideoSizePreset.square: (512, 512),
    VideoSizePreset.portrait_4_3: (768, 1024),
    VideoSizePreset.portrait_16_9: (576, 1024),
    VideoSizePreset.landscape_4_3: (1024, 768),
    VideoSizePreset.landscape_16_9: (1024, 576),
}


class ImageSize(BaseModel):
    width: int = Field(512, ge=64, le=2048, description="The width of the generated image (rounded to a multiple of 8).")
    height: int = Field(512, ge=64, le=2048, description="The height of the generated image (rounded to a multiple of 8).")


class Input(EndpointInput):
    prompt: str = Field(
        description="The prompt to use for generating the video. Be as descriptive as possible for best results.",
        examples=["masterpiece, best quality, 1girl, solo, cherry blossoms, hanami, pink flower, white flower"],
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT,
        description="The negative prompt to use. Use it to address details that you don't want in the image.",
    )
    num_frames: int = Field(16, ge=1, description="The number of frames to generate for the video.")
    num_inference_steps: int = Field(25, ge=1, le=50, description="The number of inference steps to perform.")
    guidance_scale: float = Field(
        7.5, ge=0.0, le=20.0, description="The CFG (Classifier Free Guidance) scale: how closely to follow the prompt."
    )
    seed: int | None = Field(None, description="The same seed and the same prompt give the same video every time.")
    fps: int = Field(8, ge=1, le=60, description="Number of frames per second of the output video.")
    motions: list[Motion] | None = Field(None, description="The motions to apply to the video.")
    video_size: ImageSize | VideoSizePreset = Field(
        VideoSizePreset.square, description="The size of the video to generate (preset or {width, height})."
    )


class Output(BaseModel):
    video: File = Field(description="Generated video file.")
    seed: int = Field(description="Seed used for generating the video.")


def resolve_size(size: ImageSize | VideoSizePreset) -> tuple[int, int]:
    """(width, height) in pixels, custom sizes rounded to the nearest multiple of 8."""
    if isinstance(size, VideoSizePreset):
        return PRESET_SIZES[size]
    return _round_to_multiple(size.width), _round_to_multiple(size.height)


def _round_to_multiple(value: int) -> int:
    return max(SIZE_MULTIPLE, int(value / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def check(inputs: Input, limits: Limits) -> None:
    if inputs.num_frames > limits.max_frames:
        raise InputValidationError.for_field(
            "num_frames",
            f"num_frames must be at most {limits.max_frames} on this server (max_frames), got {inputs.num_frames}",
            "less_than_equal",
            inputs.num_frames,
        )


def generate(inputs: Input, ctx: "RunContext") -> tuple["np.ndarray", int]:
    """Denoise the video; returns frames (F, H, W, 3) as floats in [0, 1] and the seed used."""
    from motionserve.endpoints._animatediff import configure_context_windows, make_generator, motion_loras, step_callback
    from motionserve.inference.prompt_weighting import encode_weighted_prompts

    # 1. The warm pipeline and the output size.
    pipe = ctx.models.text_to_video()
    width, height = resolve_size(inputs.video_size)
    ctx.raise_if_cancelled()

    # 2. Context windows for long clips (before any LoRA wraps the motion modules).
    windows = configure_context_windows(pipe, inputs.num_frames, ctx.models.context_windows)
    ctx.log(f"{inputs.num_frames} frames at {width}x{height}" + (", FreeNoise context windows" if windows else ""))

    # 3. Camera motions as LoRAs on the motion modules, for this request only.
    motions = [m.value for m in inputs.motions or []]
    with motion_loras(pipe, motions, ctx.models.motion_lora_state_dict):
        # 4. Weighted prompt embeddings and the seeded generator.
        prompt_embeds, negative_prompt_embeds = encode_weighted_prompts(
            pipe, inputs.prompt, inputs.negative_prompt, device=ctx.models.device
        )
        generator, seed = make_generator(inputs.seed, ctx.models.device)

        # 5. Denoise and decode.
        result = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            num_frames=inputs.num_frames,
            height=height,
            width=width,
            num_inference_steps=inputs.num_inference_steps,
            guidance_scale=inputs.guidance_scale,
            generator=generator,
            output_type="np",
            callback_on_step_end=step_callback(ctx, inputs.num_inference_steps),
        )
    return result.frames[0], seed


def run_pending(inputs: Input, ctx: "RunContext") -> PendingOutput[Output]:
    frames, seed = generate(inputs, ctx)
    # 6. The MP4 at the requested rate, encoded and stored by the runner.
    return pending_mp4(frames, inputs.fps, ctx, lambda file: Output(video=file, seed=seed))


def run(inputs: Input, ctx: "RunContext") -> Output:
    return run_pending(inputs, ctx).complete(ctx.save_output)


ENDPOINT = Endpoint(
    endpoint_id="fal-ai/fast-animatediff/text-to-video",
    title="AnimateDiff Text to Video",
    description="Generate a short video from a prompt with AnimateDiff (SD1.5 + motion adapter v1-5-2).",
    input_model=Input,
    output_model=Output,
    run=run,
    check=check,
    tags=("animation", "text-to-video"),
    pipeline_group="animatediff",
    run_pending=run_pending,
)
