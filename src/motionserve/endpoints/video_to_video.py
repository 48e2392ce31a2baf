"""`fal-ai/fast-animatediff/video-to-video`: restyle the start of a clip with AnimateDiff.

Schema as on fal's page. Behaviour:
- the first `first_n_seconds` of the video are sampled at `fps` (nearest frame in time), so 3 s at 8 fps
  gives 24 frames; the output MP4 plays at that rate, so it lasts as long as the part it restyles;
- the output keeps the input's aspect ratio at the model's working area (about 512×512 pixels), both
  sides multiples of 8;
- `strength` is diffusers' strength: the share of the noise schedule re-run over the input (0.7 with
  25 steps = 17 denoising steps). At least one step always runs, so a strength that rounds to zero
  steps gives a video very close to the input;
- more than 32 sampled frames (e.g. 4 s at 16 fps) use FreeNoise context windows; the total is
  capped by the operator's `max_frames`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from motionserve.endpoints._video import pending_mp4
from motionserve.endpoints.base import Endpoint, EndpointInput, File, Limits, PendingOutput
from motionserve.endpoints.text_to_video import DEFAULT_NEGATIVE_PROMPT, Motion
from motionserve.errors import InputValidationError

if TYPE_CHECKING:
    import numpy as np

    from motionserve.endpoints.base import RunContext

WORKING_AREA = 512 * 512  # SD1.5's training resolution, in pixels


class Input(EndpointInput):
    video_url: str = Field(
        description="URL of the video.",
        examples=["https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/animatediff-vid2vid-input-2.gif"],
    )
    first_n_seconds: int = Field(3, ge=2, le=4, description="The first N number of seconds of video to animate.")
    prompt: str = Field(
        description="The prompt to use for generating the image. Be as descriptive as possible for best results.",
        examples=["closeup of tony stark, robert downey jr, fireworks, high quality, ultra HD"],
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT,
        description="The negative prompt to use. Use it to address details that you don't want in the image.",
    )
    num_inference_steps: int = Field(25, ge=1, le=50, description="The number of inference steps to perform.")
    strength: float = Field(0.7, ge=0.0, le=1.0, description="The strength of the input video in the final output.")
    guidance_scale: float = Field(
        7.5, ge=0.0, le=20.0, description="The CFG (Classifier Free Guidance) scale: how closely to follow the prompt."
    )
    seed: int | None = Field(None, description="The same seed and the same prompt give the same video every time.")
    fps: int = Field(8, ge=1, le=16, description="Number of frames per second to extract from the video.")
    motions: list[Motion] | None = Field(None, description="The motions to apply to the video.")


class Output(BaseModel):
    video: File = Field(description="Generated video file.")
    seed: int = Field(description="Seed used for generating the video.")


def check(inputs: Input, limits: Limits) -> None:
    frames = inputs.first_n_seconds * inputs.fps
    if frames > limits.max_frames:
        raise InputValidationError.for_field(
            "fps",
            f"first_n_seconds × fps = {frames} frames, but this server processes at most {limits.max_frames} "
            f"frames per request (max_frames); lower fps or first_n_seconds",
            "less_than_equal",
            inputs.fps,
        )


def effective_strength(num_inference_steps: int, strength: float) -> float:
    """diffusers runs int(steps × strength) steps; never let that be zero (the pipeline cannot run none)."""
    return max(strength, 1.0 / num_inference_steps)


def generate(inputs: Input, ctx: "RunContext") -> tuple["np.ndarray", float, int]:
    """Restyle the clip; returns frames (F, H, W, 3) as floats in [0, 1], their fps, and the seed used."""
    from motionserve.endpoints._animatediff import (
        configure_context_windows,
        fit_to_area,
        make_generator,
        motion_loras,
        step_callback,
    )
    from motionserve.inference import video_io
    from motionserve.inference.prompt_weighting import encode_weighted_prompts

    # 1. Fetch and sample the first N seconds at `fps`.
    data = ctx.read_input(inputs.video_url, "video_url")
    try:
        clip = video_io.decode_video(
            data, max_seconds=inputs.first_n_seconds, sample_fps=inputs.fps, max_frames=ctx.limits.max_frames
        )
    except video_io.MediaDecodeError as exc:
        raise InputValidationError.for_field("video_url", f"The video could not be read: {exc}") from exc
    # Explicit size: without it the pipeline silently resizes every input to 512×512.
    width, height = fit_to_area(clip.width, clip.height, WORKING_AREA)
    ctx.raise_if_cancelled()

    # 2. The warm pipeline (shares its modules with text-to-video); windows for long clips.
    pipe = ctx.models.video_to_video()
    windows = configure_context_windows(pipe, len(clip.frames), ctx.models.context_windows)
    ctx.log(
        f"{len(clip.frames)} frames at {width}x{height}, {clip.fps:g} fps" + (", FreeNoise context windows" if windows else "")
    )

    # 3. Camera motions for this request only, then prompts, seed and denoising.
    motions = [m.value for m in inputs.motions or []]
    strength = effective_strength(inputs.num_inference_steps, inputs.strength)
    with motion_loras(pipe, motions, ctx.models.motion_lora_state_dict):
        prompt_embeds, negative_prompt_embeds = encode_weighted_prompts(
            pipe, inputs.prompt, inputs.negative_prompt, device=ctx.models.device
        )
        generator, seed = make_generator(inputs.seed, ctx.models.device)
        result = pipe(
            video=clip.frames,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            height=height,
            width=width,
            num_inference_steps=inputs.num_inference_steps,
            strength=strength,
            guidance_scale=inputs.guidance_scale,
            generator=generator,
            output_type="np",
            callback_on_step_end=step_callback(ctx),  # the pipeline's own count: int(steps × strength)
        )
    return result.frames[0], clip.fps, seed


def run_pending(inputs: Input, ctx: "RunContext") -> PendingOutput[Output]:
    frames, fps, seed = generate(inputs, ctx)
    # 4. The MP4 at the sampling rate, encoded and stored by the runner.
    return pending_mp4(frames, fps, ctx, lambda file: Output(video=file, seed=seed))


def run(inputs: Input, ctx: "RunContext") -> Output:
    return run_pending(inputs, ctx).complete(ctx.save_output)


ENDPOINT = Endpoint(
    endpoint_id="fal-ai/fast-animatediff/video-to-video",
    title="AnimateDiff Video to Video",
    description="Re-animate your videos: restyle the first seconds of a clip with AnimateDiff.",
    input_model=Input,
    output_model=Output,
    run=run,
    check=check,
    tags=("animation", "stylized", "video-to-video"),
    pipeline_group="animatediff",
    run_pending=run_pending,
)
