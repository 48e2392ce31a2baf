"""video_io on real media generated at test time: containers, sampling, limits, bad input, encoding."""

from __future__ import annotations

import io
import math
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from motionserve.inference import video_io
from motionserve.inference.video_io import (
    MediaDecodeError,
    decode_image,
    decode_video,
    encode_mp4,
    probe_video,
)
from tests.media import (
    QUADRANT_COLORS,
    frame_array,
    make_gif,
    make_image,
    make_png,
    make_video,
    quadrant_color,
    random_bytes,
    read_index,
    truncated,
)


def indices(frames: list[Image.Image]) -> list[int]:
    return [read_index(f) for f in frames]


def close_to(color: tuple[int, int, int], expected: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(color, expected))


# ------------------------------------------------------------------------------------ containers


@pytest.mark.parametrize(
    ("fmt", "codec", "decoder"),
    [("mp4", "h264", "h264"), ("webm", "vp9", "vp9"), ("webm", "vp8", "vp8"), ("mov", "h264", "h264"), ("mkv", "h264", "h264"), ("avi", "mpeg4", "mpeg4")],
)
def test_every_container_decodes_all_frames_in_order(fmt: str, codec: str, decoder: str) -> None:
    data = make_video(fmt, codec, width=64, height=48, fps=8, seconds=1)

    video = decode_video(data)

    assert indices(video.frames) == list(range(8))
    assert (video.width, video.height) == (64, 48)
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in video.frames)
    assert video.fps == pytest.approx(8) and video.source_fps == pytest.approx(8)
    assert video.duration_s == pytest.approx(1.0, abs=0.01)
    info = probe_video(data)
    assert (info.width, info.height, info.codec) == (64, 48, decoder)
    assert info.fps == pytest.approx(8)
    assert info.duration_s == pytest.approx(1.0, abs=0.01)


def test_probe_reports_frame_count_when_the_container_indexes_it() -> None:
    assert probe_video(make_video("mp4", fps=8, seconds=1.5)).frame_count == 12
    assert "mp4" in probe_video(make_video("mp4")).container


def test_portrait_video_keeps_its_shape() -> None:
    video = decode_video(make_video(width=360, height=640, fps=4, seconds=1))
    assert (video.width, video.height) == (360, 640)
    assert indices(video.frames) == [0, 1, 2, 3]


def test_rotation_metadata_is_applied_like_a_phone_player() -> None:
    # A phone films portrait as landscape pixels plus "rotate 90° clockwise" (-90 counter-clockwise).
    data = make_video(width=64, height=48, pattern="quadrants", rotation=-90, frames=2)

    info = probe_video(data)
    video = decode_video(data)

    assert (info.width, info.height, info.rotation) == (48, 64, 270)
    assert (video.width, video.height) == (48, 64)
    # Turned clockwise, the stored bottom-left (blue) is shown top-left and top-left (red) top-right.
    assert close_to(quadrant_color(video.frames[0], "top_left"), QUADRANT_COLORS["bottom_left"])
    assert close_to(quadrant_color(video.frames[0], "top_right"), QUADRANT_COLORS["top_left"])


def test_odd_dimensions_are_decoded_exactly() -> None:
    video = decode_video(make_video(width=321, height=241, fps=4, seconds=1))
    assert (video.width, video.height) == (321, 241)
    assert indices(video.frames) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------ sampling


def test_sample_fps_picks_the_nearest_frame_in_time() -> None:
    video = decode_video(make_video(fps=30, seconds=2), sample_fps=7)

    assert video.fps == 7 and video.source_fps == pytest.approx(30)
    assert len(video.frames) == 14  # 2 s at 7 fps
    assert indices(video.frames) == [round(k * 30 / 7) for k in range(14)]


def test_downsampling_by_an_integer_ratio_takes_every_third_frame() -> None:
    video = decode_video(make_video(fps=24, seconds=2), sample_fps=8)
    assert indices(video.frames) == list(range(0, 48, 3))


def test_upsampling_repeats_frames_only_as_the_rate_implies() -> None:
    video = decode_video(make_video(fps=4, seconds=1), sample_fps=8)
    # Targets 0, .125, .25...: each half-way target goes to the earlier frame.
    assert indices(video.frames) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_max_seconds_keeps_only_the_first_seconds() -> None:
    data = make_video(fps=8, seconds=3)

    assert indices(decode_video(data, max_seconds=1.5).frames) == list(range(12))
    sampled = decode_video(data, max_seconds=1.5, sample_fps=4)
    assert indices(sampled.frames) == [0, 2, 4, 6, 8, 10]
    assert sampled.duration_s == pytest.approx(3.0, abs=0.01)  # the source's, not the clip's


def test_max_seconds_longer_than_the_video_returns_it_all() -> None:
    video = decode_video(make_video(fps=8, seconds=1), max_seconds=4, sample_fps=8)
    assert indices(video.frames) == list(range(8))


def test_every_nth_keeps_every_nth_frame_and_divides_the_rate() -> None:
    video = decode_video(make_video(fps=24, seconds=1), every_nth=3)
    assert indices(video.frames) == list(range(0, 24, 3))
    assert video.fps == pytest.approx(8)


def test_max_frames_caps_the_result() -> None:
    data = make_video(fps=24, seconds=2)
    assert indices(decode_video(data, max_frames=5).frames) == [0, 1, 2, 3, 4]
    assert indices(decode_video(data, sample_fps=8, max_frames=4).frames) == [0, 3, 6, 9]
    assert indices(decode_video(data, every_nth=2, max_frames=3).frames) == [0, 2, 4]


def test_gif_variable_frame_delays_are_honoured_when_sampling() -> None:
    # Frames shown at 0, 0.1, 0.4 and 0.5 s; the last one lasts 0.5 s, so the clip is 1 s long.
    data = make_gif(delays_ms=[100, 300, 100, 500])

    plain = decode_video(data)
    sampled = decode_video(data, sample_fps=10)

    assert indices(plain.frames) == [0, 1, 2, 3]
    assert plain.duration_s == pytest.approx(1.0)
    assert probe_video(data).codec == "gif"
    assert indices(sampled.frames) == [0, 1, 1, 2, 2, 3, 3, 3, 3, 3]


def test_unbounded_output_is_refused_beyond_the_default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_io, "DEFAULT_FRAME_LIMIT", 5)
    data = make_video(fps=8, seconds=1)

    with pytest.raises(MediaDecodeError, match="more than 5 frames"):
        decode_video(data)
    assert len(decode_video(data, max_frames=6).frames) == 6  # an explicit cap is the caller's choice


def test_memory_budget_bounds_the_returned_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video_io, "MAX_KEPT_BYTES", 64 * 48 * 3 * 4)
    data = make_video(width=64, height=48, fps=8, seconds=1)

    with pytest.raises(MediaDecodeError, match="too large to process"):
        decode_video(data, max_frames=8)
    assert len(decode_video(data, max_frames=4).frames) == 4


def test_bad_arguments_are_programming_errors() -> None:
    data = make_video(frames=2)
    for kwargs in ({"every_nth": 0}, {"sample_fps": 0}, {"max_seconds": -1}, {"max_frames": 0}):
        with pytest.raises(ValueError):
            decode_video(data, **kwargs)


# ------------------------------------------------------------------------------------ untrusted input


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (random_bytes(8192), "not a readable video"),
        (b"hello, this is a text file\n" * 50, "not a readable video"),
    ],
    ids=["empty", "random-bytes", "text"],
)
def test_non_video_data_is_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(MediaDecodeError, match=message):
        decode_video(data)
    with pytest.raises(MediaDecodeError):
        probe_video(data)


@pytest.mark.parametrize("faststart", [True, False], ids=["moov-first", "moov-last"])
def test_mp4_truncated_at_half_is_refused(faststart: bool) -> None:
    data = make_video("mp4", width=128, height=96, fps=24, seconds=3, pattern="gradient", faststart=faststart)
    with pytest.raises(MediaDecodeError, match="truncated"):
        decode_video(truncated(data, 0.5))


def test_webm_truncated_at_half_is_refused() -> None:
    data = make_video("webm", "vp9", width=128, height=96, fps=24, seconds=3, pattern="gradient")
    with pytest.raises(MediaDecodeError, match="truncated"):
        decode_video(truncated(data, 0.5))


def test_playlists_cannot_make_ffmpeg_read_other_files(tmp_path: Path) -> None:
    # HLS and concat playlists name other files; a decoder that followed them would read the
    # server's disk (or fetch URLs) on behalf of whoever uploaded the playlist.
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(make_video(frames=4))
    playlists = [
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n",
        f"ffconcat version 1.0\nfile 'file:{secret}'\n",
    ]
    for playlist in playlists:
        with pytest.raises(MediaDecodeError, match="not a readable video"):
            decode_video(playlist.encode())


def test_a_still_image_is_not_a_video() -> None:
    with pytest.raises(MediaDecodeError, match="still image"):
        decode_video(make_png())
    with pytest.raises(MediaDecodeError, match="still image"):
        decode_video(make_image("JPEG"))


def test_an_audio_file_has_no_video_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(MediaDecodeError, match="no video stream"):
        decode_video(buf.getvalue())


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = make_video(width=64, height=48, frames=2)
    with pytest.raises(MediaDecodeError, match="64x48"):
        decode_video(data, max_pixels=64 * 48 - 1)
    with pytest.raises(MediaDecodeError, match="64x48"):
        probe_video(data, max_pixels=64 * 48 - 1)
    assert len(decode_video(data, max_pixels=64 * 48).frames) == 2


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decode_image_reads_common_formats_as_rgb(fmt: str) -> None:
    image = decode_image(make_image(fmt, 64, 48))

    assert image.mode == "RGB" and image.size == (64, 48)
    for quadrant, color in QUADRANT_COLORS.items():
        assert close_to(quadrant_color(image, quadrant), color), (fmt, quadrant)


def test_decode_image_takes_the_first_frame_of_an_animated_gif() -> None:
    image = decode_image(make_gif(delays_ms=[100, 100, 100]))
    assert read_index(image) == 0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    image = decode_image(make_image("JPEG", 64, 48, exif_orientation=orientation))

    assert image.size == (64, 48)  # stored rotated, shown upright
    for quadrant, color in QUADRANT_COLORS.items():
        assert close_to(quadrant_color(image, quadrant), color), (orientation, quadrant)


def test_transparency_is_composited_over_white() -> None:
    image = decode_image(make_png(mode="RGBA"))  # left half fully transparent
    assert quadrant_color(image, "top_left") == (255, 255, 255)
    assert quadrant_color(image, "top_right") == QUADRANT_COLORS["top_right"]


def test_decode_image_falls_back_to_the_first_video_frame() -> None:
    image = decode_image(make_video(frames=3))
    assert image.size == (64, 48) and read_index(image) == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (random_bytes(4096), "not an image"), (truncated(make_png(256, 256, "gradient"), 0.5), "corrupt or truncated")],
    ids=["empty", "random-bytes", "truncated-png"],
)
def test_bad_images_are_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(MediaDecodeError, match=message):
        decode_image(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but holds no pixel data: decoding it must fail on size, not memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (100_000, 100_000)], ids=["over-our-limit", "decompression-bomb"])
def test_huge_declared_image_is_refused_from_its_header(width: int, height: int) -> None:
    with pytest.raises(MediaDecodeError, match="too large"):
        decode_image(png_header_only(width, height))


# ------------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize("fps", [8, 10, 7.5])
def test_encode_round_trip_keeps_frames_size_and_exact_rate(fps: float) -> None:
    frames = [Image.fromarray(frame_array(i, 64, 48)) for i in range(12)]

    data = encode_mp4(frames, fps)
    video = decode_video(data)

    assert indices(video.frames) == list(range(12))
    assert (video.width, video.height) == (64, 48)
    assert video.fps == pytest.approx(fps)
    assert video.duration_s == pytest.approx(12 / fps, abs=1e-3)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(fps)
        assert stream.frames == 12


def test_encoded_mp4_is_browser_playable_h264() -> None:
    data = encode_mp4([frame_array(i, 64, 48, "gradient") for i in range(4)], 8)

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert "4:4:4" not in (stream.codec_context.profile or "")
        assert "mp4" in container.format.name
    # faststart: the index (moov) precedes the media data (mdat), so playback starts while loading.
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    assert data[4:8] == b"ftyp"


def test_odd_sizes_are_padded_by_one_pixel() -> None:
    frames = [frame_array(i, 33, 25) for i in range(3)]

    video = decode_video(encode_mp4(frames, 8))

    assert (video.width, video.height) == (34, 26)
    assert indices([f.crop((0, 0, 33, 25)) for f in video.frames]) == [0, 1, 2]


def test_float_arrays_in_unit_range_are_accepted() -> None:
    # diffusers' output_type="np": float32 in [0, 1]
    frames = [np.full((32, 32, 3), value, np.float32) for value in (0.0, 0.5, 1.0)]

    video = decode_video(encode_mp4(frames, 8))

    means = [float(np.asarray(f).mean()) for f in video.frames]
    assert means == pytest.approx([0, 128, 255], abs=4)


def test_encode_refuses_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        encode_mp4([], 8)
    with pytest.raises(ValueError, match="expected 32x32"):
        encode_mp4([np.zeros((32, 32, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)], 8)
    for bad_fps in (0, -1, math.inf):
        with pytest.raises(ValueError):
            encode_mp4([np.zeros((32, 32, 3), np.uint8)], bad_fps)
