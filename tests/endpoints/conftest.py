"""A fake RunContext for calling AnimateDiff handlers directly (the HTTP path is tested elsewhere).

Only the service boundary is faked: inputs come from a dict of URL -> bytes or from data: URIs, outputs
are written to a temporary folder, logs and previews collected in lists, cancellation is a predicate the
test sets.
The models are the real tiny checkpoints in the real ModelManager (tests/conftest.py).

Reproducibility is asserted on the frames a handler hands to `video_io.encode_mp4`, not on MP4 bytes:
libx264 occasionally (about 1 encode in 100, under CPU load) turns identical frames into a different
file, while the product only guarantees bit-identical frames. `encode_spy` records those frames and
`RecordingContext.output_frames(file)` returns the ones behind a saved output.
"""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest

from motionserve.endpoints.base import File, Limits
from motionserve.errors import InputValidationError, JobCancelledError


class EncodeSpy:
    """Wraps the real `encode_mp4`: keeps a copy of the frames of the last few calls, with the bytes returned."""

    def __init__(self, real: Callable[..., bytes]) -> None:
        self.real = real
        # A handler saves its MP4 right after encoding it; a few calls are plenty and bound the memory.
        self.calls: deque[tuple[np.ndarray, bytes]] = deque(maxlen=4)

    def __call__(self, frames: Sequence[Any], *args: Any, **kwargs: Any) -> bytes:
        # Copied before encoding: the caller may reuse or mutate its arrays afterwards.
        copied = np.stack([np.array(f, copy=True) for f in frames])
        data = self.real(frames, *args, **kwargs)
        self.calls.append((copied, data))
        return data

    def frames_of(self, data: bytes) -> np.ndarray | None:
        """The frames that produced exactly this bytes object (identity, not equality), if recorded."""
        for frames, encoded in reversed(self.calls):
            if encoded is data:
                return frames
        return None


@pytest.fixture(scope="session", autouse=True)
def encode_spy() -> Iterator[EncodeSpy]:
    # Patched on the module: the endpoints look `encode_mp4` up there at call time, whether as
    # `video_io.encode_mp4` or through `from motionserve.inference.video_io import encode_mp4` inside `run`.
    from motionserve.inference import video_io

    spy = EncodeSpy(video_io.encode_mp4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(video_io, "encode_mp4", spy)
        yield spy


def visibly_different(a: np.ndarray, b: np.ndarray) -> bool:
    """Frames (floats in [0, 1]) differ by more than one 8-bit level somewhere: the input reached the pixels."""
    return a.shape != b.shape or float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) > 1 / 255


class RecordingContext:
    def __init__(self, models: Any, out_dir: Path, *, max_frames: int = 128) -> None:
        self.request_id = "test-request"
        self.limits = Limits(max_frames=max_frames)
        self.models = models
        self.out_dir = out_dir
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, Path] = {}
        self.frames: dict[str, np.ndarray] = {}  # output URL -> the frames encoded into it
        self.logs: list[str] = []
        self.cancel_when: Callable[["RecordingContext"], bool] = lambda ctx: False
        self.previews_on = True
        self.previews: list[tuple[int, str, bytes]] = []  # (step, content type, image) of every preview published

    def add_input(self, url: str, data: bytes) -> str:
        self.inputs[url] = data
        return url

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append(message)

    def is_cancelled(self) -> bool:
        return self.cancel_when(self)

    def raise_if_cancelled(self) -> None:
        if self.is_cancelled():
            raise JobCancelledError("request cancelled")

    def read_input(self, url: str, field: str) -> bytes:
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            return base64.b64decode(payload) if header.endswith(";base64") else urllib.parse.unquote_to_bytes(payload)
        if url not in self.inputs:
            raise InputValidationError.for_field(field, f"Could not read the file at {url} (404)")
        return self.inputs[url]

    def save_output(self, data: bytes, *, content_type: str, file_name: str) -> File:
        path = self.out_dir / f"{len(self.outputs)}-{file_name}"
        path.write_bytes(data)
        url = f"https://files.test/{path.name}"
        self.outputs[url] = path
        frames = self._encoded_frames(data)
        if frames is not None:
            self.frames[url] = frames
        return File(url=url, content_type=content_type, file_name=file_name, file_size=len(data))

    def preview_due(self, step: int, total_steps: int | None) -> bool:
        return self.previews_on  # every step: the tests check what a handler hands over

    def preview(self, image: bytes, *, step: int, content_type: str) -> None:
        self.previews.append((step, content_type, image))

    def output_bytes(self, file: File) -> bytes:
        return self.outputs[file.url].read_bytes()

    def output_frames(self, file: File) -> np.ndarray:
        """The frames the handler passed to `encode_mp4` for this output (bit-exact, before encoding)."""
        if file.url not in self.frames:
            raise AssertionError(f"{file.url} was not produced by video_io.encode_mp4 during this test session")
        return self.frames[file.url]

    @staticmethod
    def _encoded_frames(data: bytes) -> np.ndarray | None:
        from motionserve.inference import video_io

        # Duck-typed, not isinstance: pytest's conftest and `tests.endpoints.conftest` (imported by the test
        # modules) can be two module objects, each with its own EncodeSpy class.
        frames_of = getattr(video_io.encode_mp4, "frames_of", None)
        return frames_of(data) if frames_of is not None else None

    def step_logs(self) -> list[str]:
        return [m for m in self.logs if m.startswith("step ")]


@pytest.fixture(scope="module")
def models(tiny_models: Any) -> Any:
    return tiny_models


@pytest.fixture(scope="module")
def new_ctx(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., RecordingContext]:
    def make(max_frames: int = 128) -> RecordingContext:
        # A folder per context: a context names its outputs by their index within it.
        return RecordingContext(tiny_models, tmp_path_factory.mktemp("out"), max_frames=max_frames)

    return make


@pytest.fixture
def ctx(tiny_models: Any, tmp_path: Path) -> RecordingContext:
    return RecordingContext(tiny_models, tmp_path)


def mp4_facts(data: bytes) -> dict[str, Any]:
    """What a player sees in an MP4: container, codec, pixel format, size, rate, decoded frame count."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        facts = {
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate),
        }
        facts["frames"] = sum(1 for _ in container.decode(stream))
    return facts


@pytest.fixture
def probe_mp4() -> Callable[[bytes], dict[str, Any]]:
    return mp4_facts
