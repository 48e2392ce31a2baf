"""Real media generated at test time (PyAV and Pillow), reusable by every test layer.

No binary fixtures: each helper returns the bytes of a small, genuine file. Frames drawn with the
"index" pattern carry their frame number as an 8-bit barcode of black/white vertical stripes that
survives lossy codecs, so a test can tell exactly which source frame a decoder returned
(`read_index`). The "quadrants" pattern (red, green / blue, white) shows orientation.

    from tests.media import make_video, make_gif, make_png, read_index
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from fractions import Fraction
from typing import Sequence

import av
import numpy as np
from PIL import Image

INDEX_BITS = 8
QUADRANT_COLORS = {"top_left": (255, 0, 0), "top_right": (0, 255, 0), "bottom_left": (0, 0, 255), "bottom_right": (255, 255, 255)}

# container name accepted by make_video -> FFmpeg muxer
_MUXERS = {"mp4": "mp4", "mov": "mov", "webm": "webm", "mkv": "matroska", "avi": "avi"}
# codec name accepted by make_video -> FFmpeg encoder
_ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "vp8": "libvpx", "mpeg4": "mpeg4"}


def frame_array(index: int, width: int, height: int, pattern: str = "index") -> np.ndarray:
    """The RGB frame `index` of a pattern, HxWx3 uint8."""
    if pattern == "index":
        bits = [(index >> (INDEX_BITS - 1 - b)) & 1 for b in range(INDEX_BITS)]
        columns = np.array([bits[min(x * INDEX_BITS // width, INDEX_BITS - 1)] for x in range(width)], np.uint8)
        return np.repeat(np.repeat((columns * 255)[None, :, None], height, axis=0), 3, axis=2)
    if pattern == "quadrants":
        array = np.zeros((height, width, 3), np.uint8)
        top, left = height // 2, width // 2
        array[:top, :left] = QUADRANT_COLORS["top_left"]
        array[:top, left:] = QUADRANT_COLORS["top_right"]
        array[top:, :left] = QUADRANT_COLORS["bottom_left"]
        array[top:, left:] = QUADRANT_COLORS["bottom_right"]
        return array
    if pattern == "gradient":  # smooth and moving: closer to natural video for encoders
        y, x = np.mgrid[0:height, 0:width]
        base = (x * 255 // max(width - 1, 1) + index * 8) % 256
        return np.stack([base, y * 255 // max(height - 1, 1) * np.ones_like(base), 255 - base], axis=2).astype(np.uint8)
    raise ValueError(f"unknown pattern {pattern!r}")


def read_index(image: Image.Image | np.ndarray) -> int:
    """Recover the frame number drawn by the "index" pattern (thresholding each stripe's centre)."""
    array = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if array.ndim == 3:
        array = array.mean(axis=2)
    height, width = array.shape
    value = 0
    for b in range(INDEX_BITS):
        x0, x1 = b * width // INDEX_BITS, (b + 1) * width // INDEX_BITS
        pad = max((x1 - x0) // 4, 0)
        stripe = array[height // 4 : height - height // 4 or None, x0 + pad : max(x1 - pad, x0 + 1)]
        value = (value << 1) | int(stripe.mean() > 127)
    return value


def quadrant_color(image: Image.Image, quadrant: str) -> tuple[int, int, int]:
    """Mean colour at the centre of a quadrant ("top_left", ...), for orientation checks."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    y = height // 4 if quadrant.startswith("top") else 3 * height // 4
    x = width // 4 if quadrant.endswith("left") else 3 * width // 4
    patch = rgb[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
    return tuple(int(round(v)) for v in patch.reshape(-1, 3).mean(axis=0))  # type: ignore[return-value]


def make_video(
    fmt: str = "mp4",
    codec: str = "h264",
    width: int = 64,
    height: int = 48,
    fps: float = 8,
    seconds: float = 1.0,
    pattern: str = "index",
    *,
    frames: int | None = None,
    rotation: int = 0,
    faststart: bool = True,
) -> bytes:
    """A real video file: `frames` (default `round(fps * seconds)`) frames at a constant `fps`.

    fmt: mp4 | mov | webm | mkv | avi; codec: h264 | vp9 | vp8 | mpeg4. Odd sizes are encoded as
    4:4:4 for H.264/VP9 (4:2:0 needs even sizes). `rotation` writes a display matrix (counter-
    clockwise degrees, as a phone does for portrait video; mp4/mov only). `faststart=False` leaves the
    moov atom at the end, as many cameras do: truncating such a file loses the index.
    """
    count = frames if frames is not None else max(1, round(fps * seconds))
    rate = Fraction(fps).limit_denominator(1001)
    odd = width % 2 or height % 2
    pix_fmt = "yuv444p" if odd and codec in ("h264", "vp9") else "yuv420p"
    options = {"movflags": "+faststart"} if faststart and fmt in ("mp4", "mov") else {}
    with tempfile.TemporaryDirectory(prefix="motionserve-media-") as tmp:
        path = os.path.join(tmp, f"video.{fmt}")
        with av.open(path, mode="w", format=_MUXERS[fmt], options=options) as container:
            stream = container.add_stream(_ENCODERS[codec], rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            if codec == "h264":
                stream.options = {"crf": "12", "preset": "ultrafast"}
            elif codec in ("vp8", "vp9"):
                stream.options = {"crf": "10", "b": "0" if codec == "vp9" else "2M", "deadline": "realtime", "cpu-used": "8"}
            else:
                stream.options = {"qscale": "2"}
            if rotation:
                stream.set_display_rotation(rotation)
            for i in range(count):
                frame = av.VideoFrame.from_ndarray(frame_array(i, width, height, pattern), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        with open(path, "rb") as fh:
            return fh.read()


def make_gif(
    width: int = 64,
    height: int = 48,
    delays_ms: Sequence[int] = (100, 100, 100, 100),
    pattern: str = "index",
    loop: int = 0,
) -> bytes:
    """An animated GIF with one frame per delay (GIF stores delays in 10 ms units)."""
    images = [Image.fromarray(frame_array(i, width, height, pattern)) for i in range(len(delays_ms))]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=len(images) > 1, append_images=images[1:], duration=list(delays_ms), loop=loop, disposal=1)
    return buf.getvalue()


def make_image(
    fmt: str = "PNG",
    width: int = 64,
    height: int = 48,
    pattern: str = "quadrants",
    *,
    mode: str = "RGB",
    exif_orientation: int | None = None,
) -> bytes:
    """A still image (PNG | JPEG | WEBP | GIF). `mode="RGBA"` makes the left half transparent.

    `exif_orientation` stores the pixels pre-rotated the way a camera does, with the EXIF tag
    (274) that tells viewers how to show them upright; e.g. 6 = "rotate 90° clockwise to view".
    """
    image = Image.fromarray(frame_array(0, width, height, pattern))
    if mode == "RGBA":
        alpha = np.full((height, width), 255, np.uint8)
        alpha[:, : width // 2] = 0
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(alpha))
    exif = Image.Exif()
    if exif_orientation is not None:
        # The stored pixels are the upright picture transformed by the inverse of the tag.
        inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
        image = image.transpose(inverse[exif_orientation])
        exif[274] = exif_orientation
    buf = io.BytesIO()
    save_kwargs = {"exif": exif.tobytes()} if exif_orientation is not None else {}
    if fmt.upper() == "JPEG":
        save_kwargs["quality"] = 95
    image.save(buf, format=fmt.upper(), **save_kwargs)
    return buf.getvalue()


def make_png(width: int = 64, height: int = 48, pattern: str = "quadrants", *, mode: str = "RGB") -> bytes:
    return make_image("PNG", width, height, pattern, mode=mode)


def decode_mp4(data: bytes) -> dict:
    """An encoded video's codec, pixel format, rate, size and decoded RGB frames, for assertions."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "fps": float(stream.average_rate),
            "size": (stream.codec_context.width, stream.codec_context.height),
            "frames": frames,
        }


def random_bytes(size: int = 4096, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]
