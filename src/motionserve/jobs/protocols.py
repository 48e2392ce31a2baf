"""What the API and the workers need of the job store: the seams, as Protocols.

`motionserve.jobs.store.Store` implements both; the API depends on `JobStore`, a worker supervisor
on `WorkerStore`, so either side can be read (and faked) without the SQL behind it.
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Protocol, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from motionserve.jobs.models import Caller, CancelOutcome, ClaimPreference, Job, LogLine, WorkerRecord


class WorkerStore(Protocol):
    """The store as a worker supervisor uses it."""

    def claim(self, worker_id: str, lease_s: float, endpoint_ids: Iterable[str] | None = None,
              prefer: ClaimPreference | None = None) -> Job | None: ...

    def get(self, job_id: str, *, with_input: bool = False) -> Job | None: ...

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> Job | None: ...

    def append_logs(self, job_id: str, lines: Sequence[tuple[Any, ...]]) -> None: ...

    def finish(self, job_id: str, worker_id: str, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None, cancelled: bool = False,
               inference_time: float | None = None) -> bool: ...

    def release(self, job_id: str, worker_id: str) -> bool: ...

    def worker_seen(self, record: WorkerRecord) -> None: ...

    def worker_stopped(self, worker_id: str) -> None: ...


class JobStore(Protocol):
    """The store as the API uses it."""

    def submit(self, *, owner: str, endpoint_id: str, input: dict[str, Any], priority: int = 0,
               start_timeout_s: float | None = None, webhook_url: str | None = None, base_url: str,
               file_retention_s: int | None = None, runner_hint: str | None = None,
               no_retry: bool = False) -> Job: ...

    def get(self, job_id: str, *, with_input: bool = False) -> Job | None: ...

    def queue_position(self, job: Job) -> int: ...

    def queue_length(self, endpoint_id: str) -> int: ...

    def queue_positions(self, job_ids: Collection[str]) -> dict[str, int]: ...

    def logs(self, job_id: str, after_seq: int = 0) -> list[LogLine]: ...

    def request_cancel(self, job_id: str) -> CancelOutcome | None: ...

    def verify_key(self, key_id: str, secret: str) -> str | None: ...

    def authenticate(self, key_id: str, secret: str) -> Caller | None: ...

    def has_keys(self) -> bool: ...

    def signing_key(self) -> Ed25519PrivateKey: ...

    def live_workers(self, seen_within_s: float) -> list[WorkerRecord]: ...
