"""Messages between a worker supervisor and its model process (sent over a multiprocessing Pipe).

Small picklable dataclasses, each tagged with the job it concerns, so the supervisor can drop
anything stale from a job it has already given up on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from motionserve.jobs.models import Job

# -- supervisor -> model process ---------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    job: Job


@dataclass(frozen=True)
class Shutdown:
    pass


# -- model process -> supervisor ---------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The process imported the endpoints, loaded the pipelines it was told to preload, and waits for jobs."""

    pid: int
    warm: tuple[str, ...] | None = None  # as in `Done`: what the preload left loaded


@dataclass(frozen=True)
class PreloadFailed:
    """A pipeline to preload cannot be had (unknown name, missing or broken checkpoints): a setting or
    a models volume to fix, which restarting the process will not do. It exits next."""

    message: str  # one line, for the operator


@dataclass(frozen=True)
class StartupFailed:
    """The process could not get ready (e.g. the endpoints failed to import); it exits next."""

    traceback: str


@dataclass(frozen=True)
class Log:
    job_id: str
    level: str
    message: str
    timestamp: float


@dataclass(frozen=True)
class Preview:
    """A preview image of the running job is stored at `url` (absolute): its status should show it."""

    job_id: str
    url: str
    step: int  # the denoising step it shows, 1-based


@dataclass(frozen=True)
class OutputPending:
    """The handler returned and the model is free for the next job; the job's output file is being
    encoded and stored by the model process, and its `Done` follows when it is (or when that failed)."""

    job_id: str
    warm: tuple[str, ...] | None = None  # as in `Done`


@dataclass(frozen=True)
class Done:
    """The handler returned or raised. Exactly one of result / error / cancelled describes how."""

    job_id: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancelled: bool = False
    inference_time: float | None = None
    warm: tuple[str, ...] | None = None  # endpoint ids whose pipelines the process now has loaded


ChildEvent = Ready | PreloadFailed | StartupFailed | Log | Preview | OutputPending | Done
