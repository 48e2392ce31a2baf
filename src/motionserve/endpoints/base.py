"""The seam between the service (api, jobs) and the models (endpoints, inference).

An endpoint is a pydantic `Input`, a pydantic `Output`, an optional `check` for rules pydantic cannot
express (frame caps), and a `run` function. `run` receives a `RunContext` implemented by the job
runner: it logs progress, polls for cancellation, reads input files and stores output files without
knowing where the request came from. An endpoint may also offer `run_pending`, which stops before its
output file is encoded and returns a `PendingOutput`: the runner then encodes and stores the file off
the model's critical path while the next request denoises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Mapping, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from motionserve.errors import InputValidationError

if TYPE_CHECKING:
    # Types only: importing endpoints must not load torch/diffusers (the API process imports them).
    import torch
    from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, DiffusionPipeline

    from motionserve.inference.context_windows import ContextWindows


class File(BaseModel):
    """fal's `File` output type."""

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


@dataclass(frozen=True)
class Limits:
    """Operator-set bounds that validation needs (from Settings)."""

    max_frames: int = 128  # AnimateDiff frames per request (beyond 32 uses context windows)


@runtime_checkable
class ModelManagerLike(Protocol):
    """What handlers use of the model process's warm pipelines: `motionserve.inference.models.ModelManager`.

    Declared here, and satisfied structurally, so that endpoints can name it without importing the
    inference layer. Each getter loads its pipeline group on first use and keeps it warm.
    """

    @property
    def device(self) -> "torch.device":
        """Where the pipelines run; generators and prompt embeddings are made there."""

    @property
    def dtype(self) -> "torch.dtype":
        """The pipelines' precision (fp16 on CUDA, fp32 on CPU)."""

    @property
    def context_windows(self) -> "ContextWindows":
        """Window length and overlap for AnimateDiff clips longer than the motion modules' frames."""

    def text_to_video(self) -> "AnimateDiffPipeline":
        """AnimateDiff (SD1.5 + motion adapter v1-5-2); group "animatediff"."""

    def video_to_video(self) -> "AnimateDiffVideoToVideoPipeline":
        """Video-to-video over the same modules as `text_to_video()`; group "animatediff"."""

    def turbo(self) -> "AnimateDiffVideoToVideoPipeline":
        """AnimateLCM video-to-video with the LCM LoRA as adapter "lcm"; group "turbo"."""

    def svd_lcm(self) -> "DiffusionPipeline":
        """SVD-XT 1.1 with the AnimateLCM-SVD UNet; group "svd_lcm"."""

    def motion_lora_state_dict(self, motion: str) -> Mapping[str, "torch.Tensor"]:
        """A motion LoRA's weights (e.g. "zoom-in"), kept in memory after the first read."""

    def resolve_lora(self, source: str) -> Path:
        """A user LoRA's weights file; raises a ValueError with a user-facing message when it cannot be had."""

    def load(self, group: str) -> None:
        """Load a pipeline group (an `Endpoint.pipeline_group` value) now, ahead of its first request."""

    def loaded(self) -> list[str]:
        """Names of the warm pipeline groups (the `Endpoint.pipeline_group` values), least recently used first."""


class RunContext(Protocol):
    """What a handler may ask of the service while it runs. Implemented in motionserve.jobs.runner."""

    request_id: str
    limits: Limits

    @property
    def models(self) -> ModelManagerLike:
        """The model process's warm pipelines (built on first access)."""

    def log(self, message: str, level: str = "INFO") -> None:
        """Append a line to the request's logs (seen by clients with logs=true)."""

    def is_cancelled(self) -> bool:
        """True once the owner cancelled; handlers poll it every denoising step."""

    def raise_if_cancelled(self) -> None:
        """Raise JobCancelledError if cancelled."""

    def read_input(self, url: str, field: str) -> bytes:
        """Bytes behind an http(s) URL, a data: URI or one of our own file URLs.

        Raises InputValidationError naming `field` when it cannot be fetched.
        """

    def save_output(self, data: bytes, *, content_type: str, file_name: str) -> File:
        """Store an output file and return its public `File` (absolute URL, type, size)."""

    def preview_due(self, step: int, total_steps: int | None) -> bool:
        """Whether to make a preview after denoising step `step` (1-based) of `total_steps`: previews
        are on, it is one of the steps they are made at, and the last was not published too recently.
        Cheap; handlers ask it every step and make the image only when it says yes."""

    def preview(self, image: bytes, *, step: int, content_type: str) -> None:
        """Publish a preview image of the run so far: the status then carries `preview: {url, step}`.

        Never raises and does not wait for the image to be stored: a preview must not slow down or
        fail the request."""


OutputT = TypeVar("OutputT", bound=BaseModel)


class SaveOutput(Protocol):
    def __call__(self, data: bytes, *, content_type: str, file_name: str) -> File: ...


@dataclass(frozen=True)
class PendingOutput(Generic[OutputT]):
    """A handler's outcome whose output file is still to be made: `encode()` returns the file's bytes (an
    MP4 of the finished frames, which it holds), `finish(file)` builds the output around the stored file.

    The job runner calls them on a thread of its own, so that the model is free for the next request
    while the file is encoded; the request completes only once the file is stored."""

    encode: Callable[[], bytes]
    content_type: str
    file_name: str
    finish: Callable[[File], OutputT]

    def complete(self, save: SaveOutput) -> OutputT:
        """Encode, store with `save` (a `RunContext.save_output`), and build the output."""
        data = self.encode()
        return self.finish(save(data, content_type=self.content_type, file_name=self.file_name))


class EndpointInput(BaseModel):
    """Base for inputs: unknown fields are ignored, as fal's endpoints do."""

    model_config = ConfigDict(extra="ignore")


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    title: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    run: Callable[[Any, RunContext], BaseModel]
    check: Callable[[Any, Limits], None] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    # The ModelManager group (a `ModelManagerLike.loaded()` name) whose pipelines `run` uses; None: no model.
    pipeline_group: str | None = None
    # `run` up to its output file: `run(inputs, ctx)` is `run_pending(inputs, ctx).complete(ctx.save_output)`.
    run_pending: Callable[[Any, RunContext], PendingOutput[Any]] | None = None

    def validate(self, payload: Any, limits: Limits) -> BaseModel:
        """Parse a JSON payload into the input model; raise fal-shaped InputValidationError."""
        try:
            parsed = self.input_model.model_validate(payload)
        except ValidationError as exc:
            raise InputValidationError(pydantic_errors_to_detail(exc)) from exc
        if self.check is not None:
            self.check(parsed, limits)
        return parsed


def pydantic_errors_to_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as fal's detail entries: loc prefixed with "body", JSON-safe."""
    out = []
    for err in exc.errors(include_url=False):
        entry: dict[str, Any] = {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        if "input" in err:
            entry["input"] = _json_safe(err["input"])
        if err.get("ctx"):
            entry["ctx"] = {k: _json_safe(v) for k, v in err["ctx"].items()}
        out.append(entry)
    return out


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)
