"""A fake RunContext for calling AnimateDiff handlers directly (the HTTP path is tested elsewhere).

Only the service boundary is faked: inputs come from a dict of URL -> bytes or from data: URIs, outputs
are written to a temporary folder, logs collected in a list, cancellation is a predicate the test sets.
The models are the real tiny checkpoints in the real ModelManager (tests/conftest.py).
"""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import pytest

from motionserve.endpoints.base import File, Limits
from motionserve.errors import InputValidationError, JobCancelledError


class RecordingContext:
    def __init__(self, models: Any, out_dir: Path, *, max_frames: int = 128) -> None:
        self.request_id = "test-request"
        self.limits = Limits(max_frames=max_frames)
        self.models = models
        self.out_dir = out_dir
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, Path] = {}
        self.logs: list[str] = []
        self.cancel_when: Callable[["RecordingContext"], bool] = lambda ctx: False

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
        return File(url=url, content_type=content_type, file_name=file_name, file_size=len(data))

    def output_bytes(self, file: File) -> bytes:
        return self.outputs[file.url].read_bytes()

    def step_logs(self) -> list[str]:
        return [m for m in self.logs if m.startswith("step ")]


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
