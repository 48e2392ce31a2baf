"""The MP4 output every endpoint ends with, handed to the job runner to encode off the model's path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from motionserve.endpoints.base import File, OutputT, PendingOutput

if TYPE_CHECKING:
    import numpy as np

    from motionserve.endpoints.base import RunContext


def pending_mp4(frames: "np.ndarray", fps: float, ctx: "RunContext", finish: Callable[[File], OutputT]) -> PendingOutput[OutputT]:
    """An MP4 of `frames` (F×H×W×3 floats in [0, 1]) at `fps`, encoded when the runner asks for it; NVENC when
    the pipelines run on a CUDA device that has it."""
    from motionserve.inference import video_io

    encoder = video_io.h264_encoder_for(str(ctx.models.device))
    kept = list(frames)

    def encode() -> bytes:
        # Looked up at call time: tests wrap `video_io.encode_mp4` to see the frames.
        return video_io.encode_mp4(kept, fps=fps, encoder=encoder)

    return PendingOutput(encode=encode, content_type="video/mp4", file_name="output.mp4", finish=finish)

