"""Video and image I/O for the endpoints: decode untrusted uploads, encode browser-playable MP4s.

Decoding goes through PyAV (FFmpeg), so anything FFmpeg reads works: MP4/MOV (H.264, HEVC...),
WebM (VP8/VP9, AV1), MKV, AVI, animated GIF. Input is untrusted: dimensions are checked before any
frame is kept, the number of frames is bounded, and every FFmpeg/Pillow failure becomes a
`MediaDecodeError` whose message tells the user what is wrong with *their file*.

Decisions worth knowing:
- `decode_video` refuses still images (PNG/JPEG/WebP/...): a 1-frame "video" would silently
  produce nonsense in a video-to-video endpoint. Single-frame GIFs are accepted (they are GIFs).
- `decode_image` accepts any image Pillow reads, and falls back to the first frame of anything
  FFmpeg reads (AVIF/HEIC builds, even a video), so an image field is as lenient as possible.
- Display rotation (portrait phone videos) and EXIF orientation are applied: returned frames are
  upright, and `width`/`height` are the displayed size.
- `encode_mp4` writes H.264 yuv420p with the moov atom first (+faststart); odd sizes are padded by one
  pixel (edge replicated), because 4:2:0 chroma needs even dimensions.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 4096 * 4096
# Without an explicit `max_frames`, more output frames than this is refused rather than held in memory.
DEFAULT_FRAME_LIMIT = 1024
# Frames decoded (not kept) before giving up: bounds CPU time on long or very high-rate inputs.
MAX_DECODED_FRAMES = 20_000
# FFmpeg demuxers that read single still images; a "video" in one of these is refused.
_STILL_IMAGE_DEMUXERS = ("image2", "_pipe")
# Slack when comparing timestamps that went through integer time bases (1/90000, 1/15360...).
_EPS = 1e-4


class MediaDecodeError(Exception):
    """The uploaded file cannot be used; the message says what is wrong with it (user-facing)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int  # displayed size (rotation applied)
    height: int
    fps: float  # average frame rate; 0.0 when the container does not say and it cannot be derived
    frame_count: int | None  # from the container index; None when unknown (WebM, some AVI)
    duration_s: float | None
    codec: str  # FFmpeg decoder name, e.g. "h264", "vp9", "gif"
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
    rotation: int = 0  # counter-clockwise degrees applied to frames for display


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[Image.Image]  # RGB, upright, all the same size
    fps: float  # the rate of the returned frames (after sampling)
    source_fps: float  # average rate of the source stream
    width: int
    height: int
    duration_s: float | None  # duration of the source (not of the returned clip); None if unknown


# --------------------------------------------------------------------------------------------- decode


def probe_video(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Describe a video without decoding it all (one frame is decoded to learn rotation and prove
    the stream is readable). Raises MediaDecodeError for anything that is not a readable video."""
    with _open_video(data) as (container, stream):
        _check_declared_size(stream, max_pixels)
        first = next(_decode_frames(container, stream), None)
        if first is None:
            raise MediaDecodeError("the video has no frames that can be decoded")
        rotation = _rotation_of(first)
        width, height = _displayed_size(first.width, first.height, rotation)
        _check_pixels(width, height, max_pixels)
        frame_count = stream.frames or None
        duration = _container_duration(container, stream)
        fps = _declared_fps(stream)
        if fps is None and frame_count and duration:
            fps = frame_count / duration
        return VideoInfo(
            width=width,
            height=height,
            fps=float(fps or 0.0),
            frame_count=frame_count,
            duration_s=duration,
            codec=stream.codec_context.name,
            container=container.format.name,
            rotation=rotation,
        )


def decode_video(
    data: bytes,
    *,
    max_seconds: float | None = None,
    sample_fps: float | None = None,
    every_nth: int = 1,
    max_frames: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedVideo:
    """Decode frames of the first video stream as upright RGB PIL images.

    Applied in this order, all by presentation time relative to the first frame:
    - `max_seconds`: only frames starting before that time;
    - `every_nth`: keep decoded frames 0, n, 2n...; the returned rate is `source_fps / n`;
    - `sample_fps`: resample to that rate, taking for each target time k/sample_fps the frame
      whose timestamp is nearest (a frame repeats only when sample_fps exceeds the source rate);
    - `max_frames`: stop once that many frames are kept. Without it, more than
      DEFAULT_FRAME_LIMIT frames is an error (untrusted input must not fill memory).
    Variable-rate sources (animated GIFs with per-frame delays) are only made uniform by `sample_fps`.
    """
    if every_nth < 1:
        raise ValueError("every_nth must be >= 1")
    if sample_fps is not None and not sample_fps > 0:
        raise ValueError("sample_fps must be > 0")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError("max_seconds must be > 0")
    if max_frames is not None and max_frames < 1:
        raise ValueError("max_frames must be >= 1")

    with _open_video(data) as (container, stream):
        _check_declared_size(stream, max_pixels)
        declared_fps = _declared_fps(stream)
        sampler = _Sampler(sample_fps)
        kept: list[Image.Image] = []
        size: tuple[int, int] | None = None  # decoded (pre-rotation) size of the first frame
        rotation = 0
        t0: float | None = None
        last_t = 0.0
        last_step = 0.0  # gap between the last two decoded frames: the last frame's duration
        decoded = 0
        full = False  # stopped because enough frames were kept (not by time or end of stream)

        def keep(frame: av.VideoFrame) -> None:
            nonlocal full
            if len(kept) >= DEFAULT_FRAME_LIMIT and max_frames is None:
                raise MediaDecodeError(f"the video has more than {DEFAULT_FRAME_LIMIT} frames; use a shorter clip")
            if (frame.width, frame.height) != size:  # resolution changed mid-stream
                frame = frame.reformat(width=size[0], height=size[1])
            kept.append(_upright(frame.to_image(), rotation))
            full = max_frames is not None and len(kept) >= max_frames

        for frame in _decode_frames(container, stream):
            if size is None:
                rotation = _rotation_of(frame)
                _check_pixels(frame.width, frame.height, max_pixels)
                size = (frame.width, frame.height)
            t = _frame_time(frame, decoded, declared_fps)
            if t0 is None:
                t0 = t
            t -= t0
            if max_seconds is not None and t >= max_seconds - _EPS:
                break
            decoded += 1
            if decoded > MAX_DECODED_FRAMES:
                raise MediaDecodeError(f"the video has more than {MAX_DECODED_FRAMES} frames; use a shorter clip")
            if decoded > 1 and t > last_t:
                last_step = t - last_t
            last_t = max(last_t, t)
            if (decoded - 1) % every_nth:
                continue
            for chosen in sampler.push(frame, t):
                keep(chosen)
                if full:
                    break
            if full:
                break

        if size is None:
            raise MediaDecodeError("the video has no frames that can be decoded")
        source_fps = declared_fps or _measured_fps(decoded, last_t)
        if not full:
            span = last_t + (last_step or (1.0 / source_fps if source_fps else 0.0))
            if max_seconds is not None:
                span = min(span, max_seconds)
            for chosen in sampler.finish(span):
                keep(chosen)
                if full:
                    break
        duration = _container_duration(container, stream)
        if duration is None and not full and max_seconds is None:
            duration = last_t + last_step

    width, height = kept[0].size
    fps = sample_fps if sample_fps is not None else source_fps / every_nth
    return DecodedVideo(
        frames=kept,
        fps=float(fps),
        source_fps=float(source_fps),
        width=width,
        height=height,
        duration_s=duration,
    )


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a still image (PNG/JPEG/WebP/GIF/...; first frame if animated) to upright RGB.

    EXIF orientation is applied; transparency is composited over white (what a browser shows).
    Formats Pillow cannot read fall back to the first frame FFmpeg decodes.
    """
    if not data:
        raise MediaDecodeError("the image file is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _first_frame_via_ffmpeg(data, max_pixels)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaDecodeError(f"the image cannot be read: {exc}") from exc
    with image:
        # Size is known from the header: refuse huge images before allocating their pixels.
        _check_pixels(image.width, image.height, max_pixels)
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise MediaDecodeError(f"the image is corrupt or truncated: {exc}") from exc
        rgb = _to_rgb(upright)
        # Closing `image` frees its pixels; never hand back the object the `with` closes.
        return rgb.copy() if rgb is image else rgb


def _first_frame_via_ffmpeg(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with _open_video(data, what="image") as (container, stream):
            _check_declared_size(stream, max_pixels)
            frame = next(_decode_frames(container, stream), None)
            if frame is None:
                raise MediaDecodeError("the image has no decodable picture")
            _check_pixels(frame.width, frame.height, max_pixels)
            return _upright(frame.to_image(), _rotation_of(frame))
    except MediaDecodeError as exc:
        raise MediaDecodeError("the file is not an image in a supported format (PNG, JPEG, WebP, GIF)") from exc


# ---------------------------------------------------------------------------------------------- encode


def encode_mp4(frames: Sequence[Image.Image | np.ndarray], fps: float, *, crf: int = 18) -> bytes:
    """Encode frames as an H.264 (libx264) yuv420p MP4 with the moov atom first (plays in browsers).

    Frames are PIL images or HxWx3 (or HxW / HxWx4) arrays, uint8 or float in [0, 1] (diffusers'
    `output_type="np"`). All frames must have the same size. Odd widths/heights are padded by one
    pixel, replicating the edge, since 4:2:0 chroma subsampling needs even dimensions. The frame
    rate is stored as an exact fraction (8, 7.5, 29.97 fps), one frame per tick.
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

    # +faststart rewrites the file after the mdat is written, which FFmpeg only does on a real file.
    with tempfile.TemporaryDirectory(prefix="motionserve-enc-") as tmp:
        path = os.path.join(tmp, "out.mp4")
        try:
            with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = width + pad_w, height + pad_h
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = 1 / rate
                # BT.709, limited range: what browsers assume for untagged H.264; tag it explicitly.
                stream.codec_context.colorspace = 1
                stream.codec_context.color_primaries = 1
                stream.codec_context.color_trc = 1
                stream.codec_context.color_range = 1
                stream.options = {"crf": str(crf), "preset": "medium"}
                for index, array in enumerate(arrays):
                    if pad_h or pad_w:
                        array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                    frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                    frame.pts = index
                    frame.time_base = stream.codec_context.time_base
                    container.mux(stream.encode(frame))
                container.mux(stream.encode(None))
        except av.FFmpegError as exc:
            raise RuntimeError(f"H.264 encoding failed: {exc}") from exc
        with open(path, "rb") as fh:
            return fh.read()


def _as_rgb_array(frame: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(_to_rgb(frame))
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


# --------------------------------------------------------------------------------------------- helpers


class _Sampler:
    """Nearest-in-time resampling to a fixed rate, streaming: holds at most one previous frame.

    Target times are k / rate. A target is settled as soon as a frame at or after it arrives: the
    nearer of that frame and the previous one wins (ties go to the earlier frame).
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.k = 0
        self.prev: tuple[av.VideoFrame, float] | None = None

    def _target(self) -> float:
        return self.k / self.rate  # type: ignore[operator]

    def push(self, frame: av.VideoFrame, t: float) -> Iterator[av.VideoFrame]:
        if self.rate is None:
            yield frame
            return
        while self._target() <= t + _EPS:
            target = self._target()
            if self.prev is not None and target - self.prev[1] <= t - target:
                yield self.prev[0]
            else:
                yield frame
            self.k += 1
        self.prev = (frame, t)

    def finish(self, span: float) -> Iterator[av.VideoFrame]:
        """Targets after the last frame but before `span` (end of the clip) map to the last frame."""
        if self.rate is None or self.prev is None:
            return
        while self._target() < span - _EPS:
            yield self.prev[0]
            self.k += 1


class _open_video:
    """Context manager: open bytes with PyAV and pick the first video stream, errors translated."""

    def __init__(self, data: bytes, what: str = "video") -> None:
        self.data = data
        self.what = what
        self.container: av.container.InputContainer | None = None

    def __enter__(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
        if not self.data:
            raise MediaDecodeError(f"the {self.what} file is empty")
        try:
            self.container = av.open(io.BytesIO(self.data), mode="r")
        except av.FFmpegError as exc:
            raise MediaDecodeError(f"the file is not a readable {self.what} ({_ffmpeg_reason(exc)})") from exc
        container = self.container
        if not container.streams.video:
            self.close()
            raise MediaDecodeError(f"the file has no video stream (format: {container.format.name})")
        if self.what == "video" and any(container.format.name.endswith(s) for s in _STILL_IMAGE_DEMUXERS):
            kind = container.format.name.removesuffix("_pipe").upper()
            self.close()
            raise MediaDecodeError(f"the file is a still image ({kind}), not a video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def _decode_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Yield decoded frames; FFmpeg errors become MediaDecodeError (corrupt or truncated data)."""
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                yield frame
    except av.FFmpegError as exc:
        raise MediaDecodeError(f"the video is corrupt or truncated ({_ffmpeg_reason(exc)})") from exc


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _check_declared_size(stream: av.video.stream.VideoStream, max_pixels: int) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width and height:
        _check_pixels(width, height, max_pixels)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise MediaDecodeError(f"invalid picture size {width}x{height}")
    if width * height > max_pixels:
        raise MediaDecodeError(
            f"the picture is {width}x{height}, more than the {max_pixels} pixels allowed; use a smaller file"
        )


def _declared_fps(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 0 < float(rate) <= 1000:  # 90000 etc. are time bases leaking through, not rates
            return float(rate)
    return None


def _measured_fps(decoded: int, last_t: float) -> float:
    if decoded > 1 and last_t > 0:
        return (decoded - 1) / last_t
    return 1.0  # a single frame has no rate; 1 fps keeps arithmetic downstream finite


def _frame_time(frame: av.VideoFrame, index: int, fps: float | None) -> float:
    t = frame.time
    if t is None:  # no pts: assume a constant rate
        return index / (fps or 1.0)
    return float(t)


def _container_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _rotation_of(frame: av.VideoFrame) -> int:
    try:
        rotation = frame.rotation
    except (AttributeError, ValueError):
        return 0
    # Only right angles are meaningful for video; round the matrix's float angle to one.
    return int(round((rotation or 0) / 90.0)) * 90 % 360


def _displayed_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, 270) else (width, height)


_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    """Rotate counter-clockwise by the display matrix angle, as players do."""
    op = _TRANSPOSE.get(rotation)
    return image.transpose(op) if op is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
