"""`fal-ai/fast-svd-lcm`: image to a 25-frame video with SVD-XT 1.1 + AnimateLCM-SVD in a few steps.

Mapping from fal's inputs to `StableVideoDiffusionPipeline.__call__`:

- `cond_aug` -> `noise_aug_strength`; `motion_bucket_id` -> `motion_bucket_id`; `steps` -> `num_inference_steps`.
- `fps` is both the frame-rate conditioning (the pipeline passes `fps - 1`, as SVD was trained) and the
  rate of the MP4. Bounded to 1..30 here (fal does not publish a bound): SVD-XT was trained around 6 fps,
  and beyond 30 a 25-frame clip lasts under a second.
- No classifier-free guidance (`min_guidance_scale = max_guidance_scale = 1.0`): the LCM-distilled UNet is
  sampled without CFG, and fal exposes no guidance input. It also halves the UNet batch.
- `decode_chunk_size` is fixed: the temporal VAE decoder mixes the frames of a chunk, so a different chunk
  size would give a different video for the same seed.
- Size: SVD-XT 1.1 was trained at 1024×576. Landscape inputs are made 1024×576, portrait 576×1024, and
  inputs near square (between 3:4 and 4:3) 768×768, the square of the same area. The input is scaled to
  cover the target and centre-cropped, keeping its aspect ratio; the boundaries are where the crop is the
  same for either neighbouring shape.
- `seed`: one torch generator drives the augmentation noise, the initial latents and the sampler's
  re-noising between steps, so the video is a function of the inputs and the seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from motionserve.endpoints._video import pending_mp4
from motionserve.endpoints.base import Endpoint, EndpointInput, File, PendingOutput
from motionserve.errors import InputValidationError

if TYPE_CHECKING:
    from PIL import Image

    from motionserve.endpoints.base import RunContext

ENDPOINT_ID = "fal-ai/fast-svd-lcm"
NUM_FRAMES = 25  # fal: "Total video length is 25 frames" (SVD-XT's native length)
WORKING_SIZE = (1024, 576)  # (width, height) for landscape inputs; SVD-XT 1.1's training resolution
DECODE_CHUNK_SIZE = 8  # frames per temporal-decoder call; fixed for reproducibility (see above)
GUIDANCE_SCALE = 1.0  # no CFG for the LCM-distilled UNet
MAX_FPS = 30


class Input(EndpointInput):
    image_url: str = Field(
        description="The URL of the image to use as a starting point for the generation.",
        examples=["https://storage.googleapis.com/falserverless/model_tests/svd/rocket.png"],
    )
    motion_bucket_id: int = Field(
        default=127,
        ge=1,
        le=255,
        description="The motion bucket id determines the motion of the generated video. The higher the number, "
        "the more motion there will be.",
    )
    cond_aug: float = Field(
        default=0.02,
        ge=0,
        le=10,
        description="The conditoning augmentation determines the amount of noise that will be added to the "
        "conditioning frame. The higher the number, the more noise there will be, and the less the video will "
        "look like the initial image. Increase it for more motion.",
    )
    seed: int | None = Field(
        default=None,
        description="The same seed and the same prompt given to the same version of Stable Diffusion will output "
        "the same image every time.",
    )
    steps: int = Field(
        default=4,
        ge=1,
        le=20,
        description="The number of steps to run the model for. The higher the number the better the quality and "
        "longer it will take to generate.",
    )
    fps: int = Field(
        default=10,
        ge=1,
        le=MAX_FPS,
        description="The FPS of the generated video. The higher the number, the faster the video will play. "
        "Total video length is 25 frames.",
    )


class Output(BaseModel):
    video: File = Field(description="The generated video file.")
    seed: int = Field(
        description="Seed of the generated Image. It will be the same value of the one passed in the input or the "
        "randomly generated that was used in case none was passed."
    )


def working_size(width: int, height: int, landscape: tuple[int, int] = WORKING_SIZE) -> tuple[int, int]:
    """The (width, height) to generate at for an input of `width`×`height`.

    The shape (landscape, portrait = landscape turned, or the square of equal area) is the one whose
    aspect ratio is nearest the input's on a log scale, so the centre crop discards the least.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    long_side, short_side = max(landscape), min(landscape)
    side = max(8, round(math.sqrt(long_side * short_side) / 8) * 8)
    # Halfway (in log aspect) between square and the landscape shape: 4:3 for 16:9.
    threshold = math.sqrt(long_side / short_side)
    aspect = width / height
    if aspect >= threshold:
        return long_side, short_side
    if aspect <= 1 / threshold:
        return short_side, long_side
    return side, side


def fit_image(image: "Image.Image", size: tuple[int, int]) -> "Image.Image":
    """Scale `image` to cover `size` and centre-crop it to exactly `size`, keeping its aspect ratio."""
    from PIL import Image as PILImage, ImageOps

    return ImageOps.fit(image, size, method=PILImage.Resampling.LANCZOS, centering=(0.5, 0.5))


def run_pending(inputs: Input, ctx: "RunContext") -> PendingOutput[Output]:
    from motionserve.endpoints._animatediff import make_generator, step_callback
    from motionserve.inference import video_io

    # 1. Fetch and decode the image.
    data = ctx.read_input(inputs.image_url, "image_url")
    try:
        image = video_io.decode_image(data)
    except video_io.MediaDecodeError as exc:
        raise InputValidationError.for_field("image_url", f"The image could not be read: {exc}") from exc

    # 2. Fit it to the working size.
    width, height = working_size(image.width, image.height, WORKING_SIZE)
    image = fit_image(image, (width, height))
    ctx.log(f"Generating {NUM_FRAMES} frames at {width}x{height}, {inputs.steps} steps")
    ctx.raise_if_cancelled()

    # 3. Load the pipeline (warm after the first request).
    pipe = ctx.models.svd_lcm()
    ctx.raise_if_cancelled()

    # 4. Denoise and decode; the sampler's re-noising draws from the request's generator.
    generator, seed = make_generator(inputs.seed, ctx.models.device)
    pipe.scheduler.noise_generator = generator
    try:
        result = pipe(
            image,
            height=height,
            width=width,
            num_frames=NUM_FRAMES,
            num_inference_steps=inputs.steps,
            min_guidance_scale=GUIDANCE_SCALE,
            max_guidance_scale=GUIDANCE_SCALE,
            fps=inputs.fps,
            motion_bucket_id=inputs.motion_bucket_id,
            noise_aug_strength=inputs.cond_aug,
            decode_chunk_size=DECODE_CHUNK_SIZE,
            generator=generator,
            output_type="np",
            callback_on_step_end=step_callback(ctx, inputs.steps, layout="bfchw"),  # SVD: frames before channels
        )
    finally:
        pipe.scheduler.noise_generator = None
    frames = result.frames[0]

    # 5. The MP4 at the requested rate, encoded and stored by the runner.
    ctx.raise_if_cancelled()
    return pending_mp4(frames, inputs.fps, ctx, lambda file: Output(video=file, seed=seed))


def run(inputs: Input, ctx: "RunContext") -> Output:
    return run_pending(inputs, ctx).complete(ctx.save_output)


ENDPOINT = Endpoint(
    endpoint_id=ENDPOINT_ID,
    title="Stable Video Diffusion Turbo",
    description="Image to video with SVD-XT 1.1 and AnimateLCM-SVD: 25 frames in a few steps.",
    input_model=Input,
    output_model=Output,
    run=run,
    tags=("image-to-video", "svd", "lcm"),
    pipeline_group="svd_lcm",
    run_pending=run_pending,
)
