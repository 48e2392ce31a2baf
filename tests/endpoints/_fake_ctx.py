"""A RunContext for calling endpoint handlers directly, backed by a real ModelManager on tiny weights.

Only the service boundary is faked: inputs come from a dict of URL -> bytes, outputs land in a dict,
logs in a list, and cancellation is a predicate the test sets. The models are the real tiny checkpoints
loaded by the real ModelManager, built once per test process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from motionserve.endpoints.base import File, Limits
from motionserve.errors import JobCancelledError, InputValidationError

_MODELS: dict[str, Any] = {}


def tiny_models() -> Any:
    """The process-wide ModelManager on tiny weights (built on first use into a temporary folder)."""
    if "cpu" not in _MODELS:
        from motionserve.inference.models import ModelManager

        root = Path(tempfile.mkdtemp(prefix="motionserve-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _MODELS["cpu"] = ModelManager("tiny", root, "cpu")
        _MODELS["root"] = root
    return _MODELS["cpu"]


def tiny_root() -> Path:
    """The folder holding the tiny checkpoints and weights.json (e.g. the sample user LoRA)."""
    from motionserve.inference.tiny import ensure_tiny_weights

    tiny_models()
    return ensure_tiny_weights(_MODELS["root"] / "tiny")


class FakeContext:
    def __init__(self, models: Any, *, max_frames: int = 128, request_id: str = "test-request") -> None:
        self.request_id = request_id
        self.limits = Limits(max_frames=max_frames)
        self.models = models
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, tuple[bytes, str]] = {}
        self.logs: list[tuple[str, str]] = []
        self.fetched: list[tuple[str, str]] = []
        # Cancellation: a predicate over the context, e.g. "after the first step was logged".
        self.cancel_when: Callable[["FakeContext"], bool] = lambda ctx: False

    def add_input(self, url: str, data: bytes) -> str:
        self.inputs[url] = data
        return url

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append((level, message))

    def is_cancelled(self) -> bool:
        return self.cancel_when(self)

    def raise_if_cancelled(self) -> None:
        if self.is_cancelled():
            raise JobCancelledError("request cancelled")

    def read_input(self, url: str, field: str) -> bytes:
        self.fetched.append((url, field))
        try:
            return self.inputs[url]
        except KeyError:
            raise InputValidationError.for_field(field, f"Could not read the file: {url} was not found (404)") from None

    def save_output(self, data: bytes, *, content_type: str, file_name: str) -> File:
        url = f"https://files.test/{len(self.outputs)}/{file_name}"
        self.outputs[url] = (data, content_type)
        return File(url=url, content_type=content_type, file_name=file_name, file_size=len(data))

    def output_bytes(self, file: File) -> bytes:
        return self.outputs[file.url][0]

    def step_logs(self) -> list[str]:
        return [m for _, m in self.logs if m.startswith("step ")]
