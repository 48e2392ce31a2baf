"""Which H.264 encoder an output gets, and that a missing hardware encoder never costs the video."""

from __future__ import annotations

import io

import av
import pytest

from motionserve.inference.video_encode import NVENC_ENCODER, SOFTWARE_ENCODER, encode_mp4, h264_encoder_for
from tests.media import frame_array

BOTH = {NVENC_ENCODER, SOFTWARE_ENCODER}


@pytest.mark.parametrize(("device", "available", "expected"), [
    ("cuda", BOTH, NVENC_ENCODER),
    ("cuda:1", BOTH, NVENC_ENCODER),
    ("cuda:0", {SOFTWARE_ENCODER}, SOFTWARE_ENCODER),  # an FFmpeg build without NVENC
    ("cpu", BOTH, SOFTWARE_ENCODER),  # NVENC is only worth it beside CUDA pipelines
    ("mps", BOTH, SOFTWARE_ENCODER),
])
def test_nvenc_only_for_cuda_devices_whose_ffmpeg_has_it(device: str, available: set[str], expected: str) -> None:
    assert h264_encoder_for(device, available) == expected


def test_the_default_encoder_list_is_pyavs() -> None:
    assert h264_encoder_for("cpu") == SOFTWARE_ENCODER
    assert h264_encoder_for("cuda") == (NVENC_ENCODER if NVENC_ENCODER in av.codecs_available else SOFTWARE_ENCODER)


def test_an_encoder_that_cannot_open_falls_back_to_libx264() -> None:
    # Without an NVIDIA driver (CI) opening NVENC fails, and the frames are encoded in software instead.
    frames = [frame_array(i, 64, 48, "gradient") for i in range(4)]

    data = encode_mp4(frames, 8, encoder=NVENC_ENCODER)

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(video=0)) == 4
