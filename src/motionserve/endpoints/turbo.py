"""`fal-ai/animatediff-v2v/turbo` ("AnimateDiff Video-to-Video Evolved"): restyle a whole clip with AnimateLCM.

fal's page points at a ComfyUI AnimateDiff-Evolved workflow with AnimateLCM (4-12 steps, CFG 1-2.5,
`select_every_nth_frame` from VideoHelperSuite's loader). The diffusers equivalent used here is
`AnimateDiffVideoToVideoPipeline` with the AnimateLCM motion adapter, `LCMScheduler` and the AnimateLCM
LoRA (adapter "lcm", from `ctx.models.turbo()`). Decisions:

- The whole clip is processed: every n-th frame of it, played back at `source fps / n`. Clips longer than
  the motion modules' 32 frames use FreeNoise context windows; the operator's `max_frames` caps the
  frame count (422 when the sampled clip is longer, which is only known once the video is read).
- Denoise: fal exposes no strength. `STRENGTH = 0.7` with `enforce_inference_steps=True` mirrors a
  ComfyUI KSampler at denoise 0.7: exactly `num_inference_steps` steps run, over the last 70% of the noise
  schedule, so the input keeps its layout and motion while the prompt restyles it (at 1.0 the video
  would only seed noise and be nearly ignored).
- Size: about 512×512 pixels (SD1.5's training area) with the input's aspect ratio, sides multiples of 8.
- User LoRAs are loaded for the request beside "lcm" and removed afterwards (see `_user_loras`).
- Prompts use A1111/ComfyUI weighting syntax (`(text:1.2)`), like the default negative prompt.
- `timings` reports seconds per stage: fetch, decode, load, loras, inference, encode, upload.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, Field

from motionserve.endpoints._video import pending_mp4
from motionserve.endpoints.base import Endpoint, EndpointInput, File, PendingOutput
from motionserve.errors import InputValidationError

if TYPE_CHECKING:
    from motionserve.endpoints.base import RunContext

ENDPOINT_ID = "fal-ai/animatediff-v2v/turbo"
DEFAULT_NEGATIVE_PROMPT = "(bad quality, worst quality:1.2), ugly faces, bad anime"
STRENGTH = 0.7  # share of the noise schedule re-run over the input video (ComfyUI "denoise")
WORKING_AREA = 512 * 512  # pixels per frame; SD1.5's native resolution


class LoraWeight(BaseModel):
    path: str = Field(description="URL or the path to the LoRA weights. Or HF model name.")
    scale: float = Field(
        default=1.0,
        description="The scale of the LoRA weight. This is used to scale the LoRA weight before merging it with "
        "the base model.",
    )


class Input(EndpointInput):
    video_url: str = Field(
        description="URL of the video.",
        examples=["https://storage.googleapis.com/falserverless/model_tests/animatediff_v2v/rocket.mp4"],
    )
    prompt: str = Field(
        description="The prompt to use for generating the image. Be as descriptive as possible for best results.",
        examples=["masterpiece, best quality, rocket in space, galaxies in the background"],
    )
    negative_prompt: str = Field(
        default=DEFAULT_NEGATIVE_PROMPT,
        description="The negative prompt to use. Use it to address details that you don't want in the image. This "
        "could be colors, objects, scenery and even the small details (e.g. moustache, blurry, low resolution).",
    )
    num_inference_steps: int = Field(
        default=8,
        ge=4,
        le=12,
        description="Increasing the amount of steps tells Stable Diffusion that it should take more steps to "
        "generate your final result which can increase the amount of detail in your image.",
    )
    guidance_scale: float = Field(
        default=2.2,
        ge=1,
        le=2.5,
        description="The CFG (Classifier Free Guidance) scale is a measure of how close you want the model to stick "
        "to your prompt when looking for a related image to show you.",
    )
    loras: list[LoraWeight] = Field(default_factory=list, description="The list of LoRA weights to use.")
    seed: int | None = Field(
        default=None,
        description="The same seed and the same prompt given to the same version of Stable Diffusion will output "
        "the same image every time.",
        examples=[537306],
    )
    select_every_nth_frame: int = Field(
        default=2,
        ge=1,
        description="Select every Nth frame from the video. This can be used to reduce the number of frames to "
        "process, which can reduce the time and the cost. However, it can also reduce the quality of the final "
        "video.",
    )


class Output(BaseModel):
    video: File = Field(description="Generated video file.")
    seed: int = Field(description="Seed used for generating the video.")
    timings: dict[str, float] = Field(description="Seconds spent in each stage of the request.")


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 4)


def run_pending(inputs: Input, ctx: "RunContext") -> PendingOutput[Output]:
    from motionserve.endpoints._animatediff import configure_context_windows, fit_to_area, make_generator, step_callback
    from motionserve.endpoints._user_loras import user_loras
    from motionserve.inference import video_io
    from motionserve.inference.models import LCM_ADAPTER, LCM_ADAPTER_SCALE
    from motionserve.inference.prompt_weighting import encode_weighted_prompts

    timings: dict[str, float] = {}
    n = inputs.select_every_nth_frame
    limit = ctx.limits.max_frames

    # 1. Fetch the video and decode every n-th frame (one past the cap, to know it is exceeded).
    with _timed(timings, "fetch"):
        data = ctx.read_input(inputs.video_url, "video_url")
    with _timed(timings, "decode"):
        try:
            clip = video_io.decode_video(data, every_nth=n, max_frames=limit + 1)
        except video_io.MediaDecodeError as exc:
            raise InputValidationError.for_field("video_url", f"The video could not be read: {exc}") from exc
    if len(clip.frames) > limit:
        raise InputValidationError.for_field(
            "video_url",
            f"The video has more than {limit} frames after selecting every {n}. frame; this server processes at "
            f"most {limit} frames per request (max_frames). Use a shorter clip or a larger select_every_nth_frame.",
        )
    width, height = fit_to_area(clip.width, clip.height, WORKING_AREA)
    ctx.raise_if_cancelled()

    # 2. The warm pipeline; FreeNoise windows for long clips (before LoRAs touch the motion modules).
    with _timed(timings, "load"):
        pipe = ctx.models.turbo()
    windows = configure_context_windows(pipe, len(clip.frames), ctx.models.context_windows)
    ctx.log(
        f"{len(clip.frames)} frames at {width}x{height}, {clip.fps:g} fps"
        + (", FreeNoise context windows" if windows else "")
    )

    with ExitStack() as stack:
        # 3. The request's LoRAs beside the AnimateLCM one; removed again when the block exits.
        with _timed(timings, "loras"):
            stack.enter_context(user_loras(pipe, inputs.loras, ctx, base_adapter=LCM_ADAPTER, base_scale=LCM_ADAPTER_SCALE))

        # 4. Encode the weighted prompts (after the LoRAs: they may change the text encoder) and denoise.
        with _timed(timings, "inference"):
            prompt_embeds, negative_embeds = encode_weighted_prompts(
                pipe, inputs.prompt, inputs.negative_prompt, device=ctx.models.device
            )
            generator, seed = make_generator(inputs.seed, ctx.models.device)
            result = pipe(
                video=clip.frames,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                num_inference_steps=inputs.num_inference_steps,
                enforce_inference_steps=True,
                strength=STRENGTH,
                guidance_scale=inputs.guidance_scale,
                height=height,
                width=width,
                generator=generator,
                output_type="np",
                callback_on_step_end=step_callback(ctx, inputs.num_inference_steps),
            )
    frames = result.frames[0]

    # 5. The MP4 at the sampled clip's rate, encoded and stored by the runner (timed when it does).
    ctx.raise_if_cancelled()
    encoded_at: list[float] = []

    def finish(file: File) -> Output:
        timings["upload"] = round(time.perf_counter() - encoded_at[-1], 4)
        return Output(video=file, seed=seed, timings=timings)

    mp4 = pending_mp4(frames, clip.fps, ctx, finish)

    def encode() -> bytes:
        with _timed(timings, "encode"):
            data = mp4.encode()
        encoded_at.append(time.perf_counter())
        return data

    return dataclasses.replace(mp4, encode=encode)


def run(inputs: Input, ctx: "RunContext") -> Output:
    return run_pending(inputs, ctx).complete(ctx.save_output)


ENDPOINT = Endpoint(
    endpoint_id=ENDPOINT_ID,
    title="AnimateDiff Video-to-Video Evolved",
    description="Re-animate your videos with evolved consistency: AnimateLCM video-to-video over the whole clip.",
    input_model=Input,
    output_model=Output,
    run=run,
    tags=("video-to-video", "animatediff", "turbo"),
    pipeline_group="turbo",
    run_pending=run_pending,
)
