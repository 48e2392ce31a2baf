"""H.264 MP4 encoding for endpoint outputs: yuv420p, exact frame rate, moov atom first.

Browsers play H.264 High profile in 4:2:0 only, and start playback before the download ends only
when the index (moov) precedes the data (mdat); both are guaranteed here.

The encoder is libx264, or NVIDIA's h264_nvenc when the pipelines run on a CUDA device and this FFmpeg
build has it (`h264_encoder_for`); if NVENC cannot be opened after all (no driver, all sessions taken),
the frames are encoded with libx264. x264's preset and CRF were chosen with bench/bench_encode.py: the
fastest preset that, at some CRF, keeps the SSIM of the former default (preset medium, CRF 18) on
realistic clips at the endpoints' output sizes (bench/README.md, "MP4 encoding"): ultrafast, at the CRF
(13) that keeps that SSIM on all of them, flat gradients included (ultrafast has no deblocking filter).
It encodes several times faster, in larger files; its stream is H.264 Constrained Baseline (no CABAC,
no B-frames), which every browser plays.
"""

from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from typing import Collection, Sequence

import av
import numpy as np
from PIL import Image


SOFTWARE_ENCODER = "libx264"
NVENC_ENCODER = "h264_nvenc"
X264_PRESET = "ultrafast"
X264_CRF = 13
# NVENC's constant-quality mode with x264-like settings: p4 (the middle of its speed/quality scale), high
# quality tuning, no bitrate cap. NVENC runs on its own engine of the GPU, beside the denoising kernels.
NVENC_OPTIONS = {"preset": "p4", "tune": "hq", "rc": "vbr", "cq": "19", "b": "0"}


def h264_encoder_for(device: str, available: Collection[str] | None = None) -> str:
    """The H.264 encoder for outputs made on `device` ("cpu", "cuda", "cuda:1"...): NVENC when the pipelines
    run on a CUDA device and the FFmpeg build has it (`available` defaults to PyAV's codecs), else libx264."""
    codecs = av.codecs_available if available is None else available
    if device.startswith("cuda") and NVENC_ENCODER in codecs:
        return NVENC_ENCODER
    return SOFTWARE_ENCODER


def encode_mp4(
    frames: Sequence[Image.Image | np.ndarray],
    fps: float,
    *,
    encoder: str = SOFTWARE_ENCODER,
    preset: str = X264_PRESET,
    crf: int = X264_CRF,
) -> bytes:
    """Encode frames as an H.264 yuv420p MP4 with the moov atom first (plays in browsers).

    Frames are PIL images or HxWx3 (or HxW / HxWx4) arrays, uint8 or float in [0, 1] (diffusers'
    `output_type="np"`). All frames must have the same size. Odd widths/heights are padded by one
    pixel, replicating the edge, since 4:2:0 chroma subsampling needs even dimensions. The frame
    rate is stored as an exact fraction (8, 7.5, 29.97 fps), one frame per tick. `preset` and `crf` are
    x264's; NVENC uses `NVENC_OPTIONS`, and libx264 is used when NVENC fails to encode.
    """
    if not frames:
        raise ValueError("encode_mp4 needs at least one frame")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    arrays = [_as_rgb_array(f) for f in frames]
    height, width = arrays[0].shape[:2]
    for i, a in enumerate(arrays):
        if a.shape[:2] != (height, width):
            raise ValueError(f"frame {i} is {a.shape[1]}x{a.shape[0]}, expected {width}x{height}")
    pad_h, pad_w = height % 2, width % 2

    if pad_h or pad_w:
        arrays = [np.pad(a, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") for a in arrays]
    x264_options = {"crf": str(crf), "preset": preset}
    if encoder != SOFTWARE_ENCODER:
        try:
            return _encode(arrays, rate, encoder, NVENC_OPTIONS if encoder == NVENC_ENCODER else {})
        except RuntimeError:
            pass  # e.g. no NVIDIA driver in this process after all: the software encoder always works
    return _encode(arrays, rate, SOFTWARE_ENCODER, x264_options)


def _encode(arrays: list[np.ndarray], rate: Fraction, encoder: str, options: dict[str, str]) -> bytes:
    height, width = arrays[0].shape[:2]
    # +faststart rewrites the file after the mdat is written, which FFmpeg only does on a real file.
    with tempfile.TemporaryDirectory(prefix="motionserve-enc-") as tmp:
        path = os.path.join(tmp, "out.mp4")
        try:
            with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
                stream = container.add_stream(encoder, rate=rate)
                stream.width, stream.height = width, height
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = 1 / rate
                # BT.709, limited range: what browsers assume for untagged H.264; tag it explicitly.
                stream.codec_context.colorspace = 1
                stream.codec_context.color_primaries = 1
                stream.codec_context.color_trc = 1
                stream.codec_context.color_range = 1
                stream.options = dict(options)
                for index, array in enumerate(arrays):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                    frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                    frame.pts = index
                    frame.time_base = stream.codec_context.time_base
                    container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
        except av.FFmpegError as exc:
            raise RuntimeError(f"H.264 encoding ({encoder}) failed: {exc}") from exc
        with open(path, "rb") as fh:
            return fh.read()


def _as_rgb_array(frame: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(to_rgb(frame))
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxWx3 frame, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparency is composited over white (what a browser shows)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
