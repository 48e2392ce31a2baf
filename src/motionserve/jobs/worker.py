"""The worker supervisor: claims jobs for one device and keeps a model process to run them.

It never runs model code itself, so it survives whatever the model process does. Its loop: make
sure a model process is ready (with `Settings.preload`'s pipelines loaded: until then the registry
says `starting` and nothing is claimed), say in the worker registry that it is alive, claim the job it
would rather run (see `ClaimPreference`), and hand it to a `JobRun` (jobs/job_run.py), which watches
it to the end. A fresh model process is started after every kill or crash; one that cannot preload
(`PreloadError`) ends the supervisor instead. Idle, it sleeps until the
change watcher says a job was queued (LISTEN/NOTIFY on PostgreSQL), with a slow timer as fallback.
Jobs whose handler returned while their output file is still being stored (`FinishingRuns`) are
watched meanwhile: by the next job's `JobRun`, or, idle, by the supervisor itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any, Iterable

from motionserve import __version__
from motionserve.config import Settings
from motionserve.database import log_failure
from motionserve.jobs.changes import RESYNC, Change, ChangeWatcher
from motionserve.jobs.child import ChildGone, ModelProcess, PreloadError
from motionserve.jobs.job_run import FinishingRuns, JobRun, RunLimits
from motionserve.jobs.models import ClaimPreference, Job, WorkerRecord
from motionserve.jobs.protocols import WorkerStore
from motionserve.jobs.runner import DEFAULT_REGISTRY
from motionserve.jobs.store import ChangeKind

log = logging.getLogger(__name__)

READY_WAIT_S = 0.2
STARTUP_BACKOFF_S = (1.0, 5.0, 15.0, 60.0)
IDLE_POLL_S = 0.2  # without a change watcher
IDLE_FALLBACK_S = 2.0  # with one: in case a notification was missed
RECENT_HINTS = 8


class WorkerSupervisor:
    def __init__(
        self,
        settings: Settings,
        store: WorkerStore,
        device: str = "cpu",
        worker_id: str | None = None,
        *,
        changes: ChangeWatcher | None = None,
        endpoint_ids: Iterable[str] | None = None,
        registry_module: str = DEFAULT_REGISTRY,
        cancel_grace_s: float = 10.0,
        shutdown_grace_s: float | None = None,
    ) -> None:
        """`registry_module` names the module the model process takes endpoints from (it must offer
        `get(endpoint_id)` and `create_model_manager(settings, device)`); tests point it at a fake.
        `shutdown_grace_s` overrides `settings.drain_timeout_s`."""
        self.settings = settings
        self.store = store
        self.device = device
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{device}:{uuid.uuid4().hex[:8]}"
        self.endpoint_ids = list(endpoint_ids) if endpoint_ids is not None else None
        self.registry_module = registry_module
        self.limits = RunLimits(
            lease_s=settings.lease_s,
            cancel_grace_s=cancel_grace_s,
            drain_timeout_s=settings.drain_timeout_s if shutdown_grace_s is None else shutdown_grace_s,
            job_timeout_s=settings.job_timeout_s,
        )
        self.presence = WorkerPresence(store, self.worker_id, device, every_s=max(1.0, settings.lease_s / 3))
        self._child: ModelProcess | None = None
        self._startup_failures = 0
        self._next_start_at = 0.0
        self._child_started_at = 0.0
        self._warm: frozenset[str] = frozenset()
        self._recent_hints: deque[str] = deque(maxlen=RECENT_HINTS)
        self._finishing = FinishingRuns()
        self._wake = threading.Event()
        self._idle_wait_s = IDLE_POLL_S
        if changes is not None:
            changes.subscribe(self._on_change)
            self._idle_wait_s = IDLE_FALLBACK_S

    def _on_change(self, change: Change) -> None:
        if change.kind in (ChangeKind.QUEUED, RESYNC):
            self._wake.set()

    # -- main loop --------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s serving device %s", self.worker_id, self.device)
        try:
            while not stop.is_set():
                job = self._next_job(stop)
                if job is None:
                    continue
                try:
                    self._run(job, stop)
                except Exception:  # a bug here must not end the worker; the lease will expire
                    log.exception("worker %s: unexpected error while supervising %s", self.worker_id, job.id)
                    self._discard_child()
        finally:
            if self._child is not None:
                # Outputs still being stored: their jobs complete, or go back to the queue after the drain timeout.
                self._watch_finishing(self.limits.drain_timeout_s + 1.0, wake=None)
            if self._child is not None:
                self._child.stop()
                self._child = None
            self.presence.stopped()
            log.info("worker %s stopped", self.worker_id)

    def _next_job(self, stop: threading.Event) -> Job | None:
        """A claimed job, or None after waiting a while (model process not ready, empty queue, store down)."""
        try:
            if not self._child_ready():
                self.presence.beat("starting")
                stop.wait(READY_WAIT_S)
                return None
            self.presence.beat("idle", warm=self._warm)
            self._wake.clear()
            job = self.store.claim(self.worker_id, self.limits.lease_s, self.endpoint_ids, self._preference(),
                                   max_running_per_owner=self.settings.max_running_per_key)
        except PreloadError:
            raise  # the worker cannot be what it was configured to be: see `_child_ready`
        except Exception:
            log_failure(log, "worker %s: store unavailable; retrying", self.worker_id)
            stop.wait(1.0)
            return None
        if job is None and self._finishing:
            self._watch_finishing(self._idle_wait_s, wake=self._wake)
        elif job is None:
            self._wake.wait(self._idle_wait_s)
        return job

    def _watch_finishing(self, timeout_s: float, wake: threading.Event | None) -> None:
        """Idle: take the model process's events for the jobs whose outputs it is storing."""
        assert self._child is not None
        try:
            self._finishing.pump(self._child, timeout_s, wake)
        except ChildGone:
            self._discard_child()

    def _preference(self) -> ClaimPreference:
        return ClaimPreference(self._warm, frozenset(self._recent_hints), self.settings.warm_claim_max_wait_s)

    def _run(self, job: Job, stop: threading.Event) -> None:
        assert self._child is not None
        self.presence.beat("busy", current_job=job.id, warm=self._warm, force=True)
        if job.runner_hint:
            self._recent_hints.append(job.runner_hint)
        def still_busy() -> None:  # with each lease heartbeat: a long job must not make us look vanished
            self.presence.beat("busy", current_job=job.id, warm=self._warm)

        run = JobRun(job, self._child, self.store, self.worker_id, self.limits, stop, _record_metrics,
                     on_heartbeat=still_busy, finishing=self._finishing)
        outcome = run.execute()
        if outcome.output_pending:
            self._finishing.add(run)
        if outcome.warm is not None:
            self._warm = frozenset(outcome.warm)
        if not outcome.keep_child:
            self._discard_child()
        self.presence.beat("idle", warm=self._warm, force=True)

    # -- the model process ------------------------------------------------------------------

    def _child_ready(self) -> bool:
        """Start the model process if needed and say whether it can take a job now."""
        if self._child is not None and self._child.ready and not self._child.is_alive():
            log.warning("model process for %s died while idle (%s); restarting", self.device, self._child.exit_description())
            self._discard_child()
        if self._child is None:
            if time.monotonic() < self._next_start_at:
                return False
            self._child = ModelProcess(self.settings, self.device, self.registry_module)
            self._child_started_at = time.monotonic()
        was_ready = self._child.ready
        try:
            ready = self._child.poll_ready(READY_WAIT_S)
        except PreloadError as exc:
            # Missing weights or an unknown name do not fix themselves: no retry loop that looks like a
            # slow start. The worker ends (`motionserve worker` exits non-zero), saying why in one line.
            log.error("worker %s: cannot preload %s on %s: %s", self.worker_id, ",".join(self.settings.preload), self.device, exc)
            self._discard_child()
            raise
        except ChildGone as exc:
            delay = STARTUP_BACKOFF_S[min(self._startup_failures, len(STARTUP_BACKOFF_S) - 1)]
            self._startup_failures += 1
            log.error("model process for %s failed to start (%s); retrying in %.0f s\n%s",
                      self.device, exc, delay, self._child.startup_error or "")
            self._discard_child()
            self._next_start_at = time.monotonic() + delay
            return False
        if ready and not was_ready:
            self._startup_failures = 0
            self._warm = frozenset(self._child.warm_at_start or ())
            log.info("model process for %s ready in %.1f s (warm: %s)", self.device,
                     time.monotonic() - self._child_started_at, ", ".join(sorted(self._warm)) or "none")
        return ready

    def is_ready(self) -> bool:
        """Its model process is up with its preloads loaded: it claims jobs (a readiness probe asks this)."""
        child = self._child
        return child is not None and child.ready

    def _discard_child(self) -> None:
        if self._child is not None:
            alive = self._child.is_alive()
            self._child.kill()
            # The outputs it was storing are lost with it.
            self._finishing.end_all(self._child.exit_description() if not alive else
                                    "model process was stopped before the output was stored")
            self._child = None
        self._warm = frozenset()


class WorkerPresence:
    """This worker's row in the store's registry, refreshed at most every `every_s` unless it changed."""

    def __init__(self, store: WorkerStore, worker_id: str, device: str, every_s: float) -> None:
        self._store, self._every_s = store, every_s
        self._record = WorkerRecord(
            id=worker_id, host=socket.gethostname(), pid=os.getpid(), device=device, version=__version__,
            state="starting", warm=(), current_job=None,
        )
        self._next_at = 0.0

    def beat(self, state: str, *, current_job: str | None = None, warm: Iterable[str] = (), force: bool = False) -> None:
        record = WorkerRecord(**{**self._record.__dict__, "state": state, "current_job": current_job, "warm": tuple(sorted(warm))})
        now = time.monotonic()
        if record == self._record and now < self._next_at and not force:
            return
        try:
            self._store.worker_seen(record)
        except Exception:  # the registry is informational: never let it stop the work
            log.warning("worker %s: could not update the worker registry", record.id, exc_info=True)
            return
        self._record, self._next_at = record, now + self._every_s

    def stopped(self) -> None:
        try:
            self._store.worker_stopped(self._record.id)
        except Exception:
            log.warning("worker %s: could not mark itself stopped in the registry", self._record.id, exc_info=True)


def _record_metrics(job: Job, outcome: dict[str, Any], run_time_s: float) -> None:
    from motionserve.metrics import record_job_finished

    error = outcome.get("error") or {}
    state = "cancelled" if outcome.get("cancelled") else ("failed" if outcome.get("error") else "succeeded")
    queue_wait = (job.started_at - job.created_at) if job.started_at is not None else None
    record_job_finished(job.endpoint_id, queue_wait_s=queue_wait, run_time_s=run_time_s,
                        outcome=state, error_type=error.get("error_type"))
