"""Video and image I/O for the endpoints: decode untrusted uploads, encode browser-playable MP4s.

Decoding goes through PyAV (FFmpeg): MP4/MOV (H.264, HEVC...), WebM (VP8/VP9, AV1), MKV, AVI,
MPEG-TS, FLV, animated GIF... Input is untrusted: only self-contained container formats are opened
(no playlists that name other files), dimensions are checked before any frame is kept, frame count
and memory are bounded, a file cut short is refused rather than silently shortened, and every
FFmpeg/Pillow failure becomes a `MediaDecodeError` whose message tells the user what is wrong
with *their file*.

Decisions worth knowing:
- `decode_video` refuses still images (PNG/JPEG/WebP/...): a 1-frame "video" would silently
  produce nonsense in a video-to-video endpoint. Single-frame GIFs are accepted (they are GIFs).
- `decode_image` accepts any image Pillow reads, and falls back to the first frame of anything
  FFmpeg reads (AVIF, BMP/TIFF, even a video), so an image field is as lenient as possible.
- Display rotation (portrait phone videos) and EXIF orientation are applied: returned frames are
  upright, and `width`/`height` are the displayed size.
- `encode_mp4` writes H.264 yuv420p with the moov atom first (+faststart); odd sizes are padded by one
  pixel (edge replicated), because 4:2:0 chroma needs even dimensions; `h264_encoder_for(device)` picks
  NVENC for outputs made on a CUDA device when FFmpeg has it, libx264 otherwise.
"""

from __future__ import annotations

import errno
import io
from dataclasses import dataclass
from typing import Iterator

import av
from PIL import Image, ImageOps, UnidentifiedImageError

from motionserve.inference.frame_sampling import EPS, NearestSampler, StreamClock
from motionserve.inference.video_encode import encode_mp4, h264_encoder_for, to_rgb

__all__ = ["DecodedVideo", "MediaDecodeError", "VideoInfo", "decode_image", "decode_video", "encode_mp4", "h264_encoder_for", "probe_video"]

DEFAULT_MAX_PIXELS = 4096 * 4096
# Without an explicit `max_frames`, more output frames than this is refused rather than held in memory.
DEFAULT_FRAME_LIMIT = 1024
# Frames decoded (not kept) before giving up: bounds CPU time on long or very high-rate inputs.
MAX_DECODED_FRAMES = 20_000
# RGB bytes of all returned frames: bounds memory even when max_frames x max_pixels is large.
MAX_KEPT_BYTES = 2 * 1024**3
# FFmpeg demuxers that read single still images; a "video" in one of these is refused.
_STILL_IMAGE_DEMUXERS = ("image2", "_pipe")
# Only these demuxers may read uploads. Playlist-like formats (HLS, concat, DASH...) would make
# FFmpeg open other URLs or local files named inside the upload: an SSRF / file-read hole.
_ALLOWED_DEMUXERS = ",".join(
    (
        "mov,mp4,m4a,3gp,3g2,mj2",  # MP4 / MOV
        "matroska,webm",
        "avi,gif,mpegts,flv,ogg,asf,mpeg,ivf,h264,hevc,m4v,apng",
        "png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe,avif",  # decode_image's fallback
        "wav,mp3,aac,flac",  # audio only: read so that the error can say "no video stream"
    )
)
_OPEN_OPTIONS = {"format_whitelist": _ALLOWED_DEMUXERS, "protocol_whitelist": "none"}


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
        sampler: NearestSampler[av.VideoFrame] = NearestSampler(sample_fps)
        kept = _KeptFrames(max_frames, max_pixels)
        clock = StreamClock(declared_fps)
        reached_end = True  # False when a limit stopped decoding before the end of the stream
        for frame in _decode_frames(container, stream):
            t = clock.time_of(frame.time)
            if max_seconds is not None and t >= max_seconds - EPS:
                reached_end = False
                break
            clock.advance(t, float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None)
            if clock.count > MAX_DECODED_FRAMES:
                raise MediaDecodeError(f"the video has more than {MAX_DECODED_FRAMES} frames; use a shorter clip")
            if (clock.count - 1) % every_nth:
                continue
            kept.extend(sampler.push(frame, t))
            if kept.full:
                reached_end = False
                break

        if clock.count == 0:
            raise MediaDecodeError("the video has no frames that can be decoded")
        source_fps = declared_fps or clock.measured_fps()
        if not kept.full:
            span = clock.end if max_seconds is None else min(clock.end, max_seconds)
            kept.extend(sampler.finish(span))
        if reached_end:
            _check_complete(container, stream, clock)
        duration = _container_duration(container, stream) or (clock.end if reached_end else None)

    fps = sample_fps if sample_fps is not None else source_fps / every_nth
    width, height = kept.frames[0].size
    return DecodedVideo(
        frames=kept.frames,
        fps=float(fps),
        source_fps=float(source_fps),
        width=width,
        height=height,
        duration_s=duration,
    )


class _KeptFrames:
    """Frames returned to the caller: upright RGB, one size, at most `max_frames` (or the default cap)."""

    def __init__(self, max_frames: int | None, max_pixels: int) -> None:
        self.max_frames = max_frames
        self.max_pixels = max_pixels
        self.frames: list[Image.Image] = []
        self.size: tuple[int, int] | None = None  # decoded (pre-rotation) size of the first frame
        self.rotation = 0

    @property
    def full(self) -> bool:
        return self.max_frames is not None and len(self.frames) >= self.max_frames

    def extend(self, frames: Iterator[av.VideoFrame]) -> None:
        for frame in frames:
            if self.full:
                return
            self.add(frame)

    def add(self, frame: av.VideoFrame) -> None:
        if self.max_frames is None and len(self.frames) >= DEFAULT_FRAME_LIMIT:
            raise MediaDecodeError(f"the video has more than {DEFAULT_FRAME_LIMIT} frames; use a shorter clip")
        if self.size is None:
            _check_pixels(frame.width, frame.height, self.max_pixels)
            self.size = (frame.width, frame.height)
            self.rotation = _rotation_of(frame)
        if (len(self.frames) + 1) * self.size[0] * self.size[1] * 3 > MAX_KEPT_BYTES:
            raise MediaDecodeError(
                f"the video is too large to process: more than {len(self.frames)} frames of"
                f" {self.size[0]}x{self.size[1]}; use a shorter or smaller clip"
            )
        elif (frame.width, frame.height) != self.size:  # resolution changed mid-stream
            frame = frame.reformat(width=self.size[0], height=self.size[1])
        self.frames.append(_upright(frame.to_image(), self.rotation))


def _check_complete(container: av.container.InputContainer, stream: av.video.stream.VideoStream, clock: StreamClock) -> None:
    """A file cut short (interrupted upload, partial copy) decodes its first part without error;
    refuse it rather than silently return a shorter video. A few undecodable frames are tolerated."""
    declared = stream.frames
    if declared:
        if clock.count < declared - max(2, declared // 50):
            raise MediaDecodeError(
                f"the video is truncated or corrupt: only {clock.count} of its {declared} frames could be decoded"
            )
        return
    # No frame index (Matroska/WebM): compare with the declared duration, but only without audio,
    # whose track may legitimately run longer than the video.
    duration = _container_duration(container, stream)
    if duration and not container.streams.audio and clock.end < 0.9 * duration - 0.25:
        raise MediaDecodeError(
            f"the video is truncated or corrupt: its header says {duration:.2f} s but only"
            f" {clock.end:.2f} s could be decoded"
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
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours
        raise MediaDecodeError(f"the picture is too large to decode ({exc})") from exc
    except (OSError, ValueError) as exc:
        raise MediaDecodeError(f"the image cannot be read: {exc}") from exc
    with image:
        # Size is known from the header: refuse huge images before allocating their pixels.
        _check_pixels(image.width, image.height, max_pixels)
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise MediaDecodeError(f"the image is corrupt or truncated: {exc}") from exc
        rgb = to_rgb(upright)
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


# --------------------------------------------------------------------------------------------- helpers


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
            self.container = av.open(io.BytesIO(self.data), mode="r", options=_OPEN_OPTIONS)
        except av.FFmpegError as exc:
            # EINVAL is how FFmpeg says no allowed demuxer recognised the data: nothing to add.
            detail = "" if getattr(exc, "errno", None) == errno.EINVAL else f" ({_ffmpeg_reason(exc)})"
            raise MediaDecodeError(
                f"the file is not a readable {self.what}: it is corrupt, truncated or in an unsupported format{detail}"
            ) from exc
        container = self.container
        if not container.streams.video:
            self.close()
            raise MediaDecodeError(f"the file has no video stream (format: {container.format.name})")
        if self.what == "video" and any(container.format.name.endswith(s) for s in _STILL_IMAGE_DEMUXERS):
            kind = container.format.name.removesuffix("_pipe").upper()
            self.close()
            raise MediaDecodeError(f"the file is a still image ({kind}), not a video")
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
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
            f"the picture is {width}x{height}, too large: at most {max_pixels} pixels are allowed; use a smaller file"
        )


def _declared_fps(stream: av.video.stream.VideoStream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate and 0 < float(rate) <= 1000:  # 90000 etc. are time bases leaking through, not rates
            return float(rate)
    return None


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
