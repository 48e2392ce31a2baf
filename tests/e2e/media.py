"""Small test media made on the fly with PyAV / Pillow, and a probe for the MP4s the server returns."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def make_mp4(num_frames: int = 16, fps: int = 8, width: int = 64, height: int = 64) -> bytes:
    """An H.264 MP4 of a moving colour gradient (motion, so encoders and decoders do real work)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ys, xs = np.mgrid[0:height, 0:width]
        for i in range(num_frames):
            rgb = np.stack(
                [(xs * 4 + i * 8) % 256, (ys * 4 + i * 4) % 256, np.full_like(xs, (i * 16) % 256)], axis=-1
            ).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def make_png(width: int = 64, height: int = 64) -> bytes:
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xs * 4) % 256, (ys * 4) % 256, ((xs + ys) * 2) % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


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
