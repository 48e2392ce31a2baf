"""The job records the API and the workers share through the store. Plain data, no I/O.

A job moves `queued -> running -> succeeded | failed | cancelled`; a running job whose worker
vanished may go back to `queued`. The three terminal states never change again. `store.py` is the
only place that performs these changes (see `ALLOWED_TRANSITIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# Every legal status change. RUNNING -> QUEUED is the retry of a job whose worker stopped
# heartbeating (or shut down); QUEUED -> FAILED is a start deadline that passed while waiting.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class CancelOutcome(str, Enum):
    """What `Store.request_cancel` did; the API maps it onto fal's cancel responses."""

    CANCELLED = "cancelled"  # it was still queued and is now terminal
    REQUESTED = "requested"  # it is running; its worker will stop it at the next step
    ALREADY_COMPLETED = "already_completed"


class Priority:
    """`X-Fal-Queue-Priority`: lower numbers run first."""

    NORMAL = 0
    LOW = 1


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    endpoint_id: str
    input: dict[str, Any] | None  # None when read for status only (it can be a 64 MB data URI)
    state: JobState
    priority: int
    created_at: float  # epoch seconds
    started_at: float | None
    finished_at: float | None
    start_deadline: float | None  # epoch seconds; a queued job past it fails with 504
    attempts: int
    worker_id: str | None
    lease_expires_at: float | None
    cancel_requested: bool
    result: dict[str, Any] | None
    error: dict[str, Any] | None  # {"status_code", "detail", "error_type", ...}
    webhook_url: str | None
    base_url: str  # how the submitter reached us; output file URLs are built on it
    file_retention_s: int | None
    inference_time: float | None
    runner_hint: str | None = None  # X-Fal-Runner-Hint: prefer the worker that last ran this hint
    no_retry: bool = False  # X-Fal-No-Retry: never run again after its worker died
    preview: dict[str, Any] | None = None  # {"url", "step"}: the latest live preview of a running job

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


@dataclass(frozen=True)
class LogLine:
    seq: int  # 1, 2, 3... per job; `Store.logs(job_id, after_seq)` pages on it
    timestamp: float  # epoch seconds; the API formats it as ISO 8601
    level: str
    message: str


class ApiKey(NamedTuple):
    key_id: str
    owner: str
    label: str
    created_at: float
    revoked: bool
    admin: bool


class Caller(NamedTuple):
    """Who a request's API key belongs to."""

    owner: str
    admin: bool


@dataclass(frozen=True)
class ClaimPreference:
    """What a worker would rather run next, among queued jobs of equal priority at the head of the
    queue (`store.PREFERENCE_WINDOW` of them, in queue order).

    Jobs of `warm_endpoints` (pipelines already loaded) or carrying one of `hints` (X-Fal-Runner-Hint
    of jobs it ran recently) come first, unless a job has waited `max_wait_s`: then the queue's own
    order wins, so preferences never starve anyone.
    """

    warm_endpoints: frozenset[str] = frozenset()
    hints: frozenset[str] = frozenset()
    max_wait_s: float = 30.0


@dataclass(frozen=True)
class SubmitRate:
    """At most `count` submits per owner in any `window_s` seconds (MOTIONSERVE_SUBMIT_RATE_PER_MIN)."""

    count: int
    window_s: float = 60.0


class SubmitRateExceeded(Exception):
    """`Store.submit` refused a job: its owner already submitted `rate.count` in the last window."""

    def __init__(self, rate: SubmitRate, retry_after_s: float) -> None:
        super().__init__(f"at most {rate.count} submits per {rate.window_s:g} s")
        self.rate = rate
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class WorkerRecord:
    """A worker supervisor as the registry knows it (one per device per worker process)."""

    id: str
    host: str
    pid: int
    device: str
    version: str
    state: str  # starting | idle | busy | draining | stopped
    warm: tuple[str, ...]  # endpoint ids whose pipelines its model process has loaded
    current_job: str | None
    started_at: float | None = None  # database clock; set by the store
    last_seen: float | None = None


@dataclass(frozen=True)
class PendingWebhook:
    id: int
    job_id: str
    url: str
    body: bytes  # the exact bytes that are signed and sent
    attempts: int  # failed attempts so far
    next_attempt_at: float
    owner: str  # sent as X-Fal-Webhook-User-Id


def error_dict(status_code: int, detail: Any, error_type: str, **extra: Any) -> dict[str, Any]:
    """The shape of `Job.error`: what the API turns into fal's error body and headers."""
    return {"status_code": status_code, "detail": detail, "error_type": error_type, **extra}
