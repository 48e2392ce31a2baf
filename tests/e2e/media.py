"""A probe for the MP4s the server returns. Input media come from the shared tests/media.py."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: Fraction
    width: int
    height: int
    codec: str


def probe_mp4(data: bytes) -> VideoInfo:
    """Decode every frame (a header-only probe would miss a broken stream) and report what was there."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        return VideoInfo(frames, Fraction(fps), stream.codec_context.width, stream.codec_context.height, stream.codec_context.name)
