"""The worker supervisor: claims jobs for one device and watches the model process that runs them.

Per job: hand it to the model process, heartbeat the lease, relay cancellation, batch log lines
into the store, and record the outcome. The supervisor itself never runs model code, so it
survives whatever the model process does:

- cancel requested: the handler stops at its next step; if it has not within `cancel_grace_s`,
  the process is killed (the only way to free a GPU stuck in a kernel) and the job is cancelled.
- the process dies (OOM kill, segfault): the job FAILS with 503 runner_disconnected naming the
  exit code/signal; it is not retried, because such crashes are usually caused by the request
  itself (too many frames for the GPU) and a retry would only crash the next process. (A job
  whose *supervisor* vanished is retried instead, by `Store.reclaim_expired`, up to max_attempts.)
- the lease is lost (the store gave the job to someone else): the handler is stopped and its
  outcome discarded.
A fresh model process is started after every kill or crash. Store errors are logged and retried.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from motionserve.config import Settings
from motionserve.jobs.child import ChildGone, ModelProcess
from motionserve.jobs.events import Done, Log
from motionserve.jobs.models import Job, error_dict
from motionserve.jobs.runner import DEFAULT_REGISTRY
from motionserve.jobs.store import Store

log = logging.getLogger(__name__)

LOG_FLUSH_S = 0.5
LOG_BATCH = 200
CANCEL_POLL_S = 0.5
READY_WAIT_S = 0.2
STARTUP_BACKOFF_S = (1.0, 5.0, 15.0, 60.0)


class WorkerSupervisor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        device: Any = "cpu",
        worker_id: str | None = None,
        *,
        file_store: Any = None,
        endpoint_ids: Iterable[str] | None = None,
        registry_module: str = DEFAULT_REGISTRY,
        cancel_grace_s: float = 10.0,
        shutdown_grace_s: float = 5.0,
        idle_poll_s: float = 0.2,
    ) -> None:
        """`registry_module` names the module the model process takes endpoints from (it must offer
        `get(endpoint_id)` and `create_model_manager(settings, device)`); tests point it at a fake.
        """
        if not isinstance(device, str):
            # docs/architecture.md orders the arguments (settings, store, file_store, device).
            file_store, device, worker_id = device, worker_id or "cpu", None
        self.settings = settings
        self.store = store
        self.device = device
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{device}:{uuid.uuid4().hex[:8]}"
        self.endpoint_ids = list(endpoint_ids) if endpoint_ids is not None else None
        self.registry_module = registry_module
        self.cancel_grace_s = cancel_grace_s
        self.shutdown_grace_s = shutdown_grace_s
        self.idle_poll_s = idle_poll_s
        self.lease_s = settings.lease_s
        self._child: ModelProcess | None = None
        self._startup_failures = 0
        self._next_start_at = 0.0
        self._next_reclaim_at = 0.0

    # -- main loop --------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s serving device %s", self.worker_id, self.device)
        try:
            while not stop.is_set():
                try:
                    if not self._child_ready():
                        stop.wait(READY_WAIT_S)
                        continue
                    self._reclaim_if_due()
                    job = self.store.claim(self.worker_id, self.lease_s, self.endpoint_ids)
                except Exception:
                    log.exception("worker %s: store unavailable; retrying", self.worker_id)
                    stop.wait(1.0)
                    continue
                if job is None:
                    stop.wait(self.idle_poll_s)
                    continue
                try:
                    self._run(job, stop)
                except Exception:  # a bug here must not end the worker; the lease will expire
                    log.exception("worker %s: unexpected error while supervising %s", self.worker_id, job.id)
                    self._discard_child()
        finally:
            if self._child is not None:
                self._child.stop()
                self._child = None
            log.info("worker %s stopped", self.worker_id)

    def _reclaim_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_reclaim_at:
            self._next_reclaim_at = now + max(1.0, self.lease_s / 3)
            reclaimed = self.store.reclaim_expired(self.settings.max_attempts)
            if reclaimed:
                log.warning("reclaimed %d job(s) whose worker stopped heartbeating", reclaimed)

    def _child_ready(self) -> bool:
        """Start the model process if needed and say whether it can take a job now."""
        if self._child is not None and self._child.ready and not self._child.is_alive():
            log.warning("model process for %s died while idle (%s); restarting", self.device, self._child.exit_description())
            self._discard_child()
        if self._child is None:
            if time.monotonic() < self._next_start_at:
                return False
            self._child = ModelProcess(self.settings, self.device, self.registry_module)
        try:
            ready = self._child.poll_ready(READY_WAIT_S)
        except ChildGone as exc:
            delay = STARTUP_BACKOFF_S[min(self._startup_failures, len(STARTUP_BACKOFF_S) - 1)]
            self._startup_failures += 1
            log.error("model process for %s failed to start (%s); retrying in %.0f s\n%s",
                      self.device, exc, delay, self._child.startup_error or "")
            self._discard_child()
            self._next_start_at = time.monotonic() + delay
            return False
        if ready:
            self._startup_failures = 0
        return ready

    def _discard_child(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None

    # -- one job ----------------------------------------------------------------------------

    def _run(self, job: Job, stop: threading.Event) -> None:
        assert self._child is not None
        child = self._child
        pending: list[tuple[str, str, float]] = []
        now = time.monotonic()
        next_flush, next_heartbeat, next_cancel_poll = now + LOG_FLUSH_S, now + self.lease_s / 3, now + CANCEL_POLL_S
        cancel_sent_at: float | None = None
        stop_seen_at: float | None = None
        lease_lost = False

        def flush() -> None:
            if pending and not lease_lost:
                self._store_call("append_logs", lambda: self.store.append_logs(job.id, list(pending)))
            pending.clear()

        def stop_child(reason: str) -> None:
            nonlocal cancel_sent_at
            if cancel_sent_at is None:
                log.info("request %s: %s; stopping the handler", job.id, reason)
                child.cancel_event.set()
                cancel_sent_at = time.monotonic()

        try:
            child.run(job)
        except ChildGone as exc:
            # It died before the job reached it: not the request's fault, so it goes back to the queue.
            log.error("request %s: %s before the job started; requeueing it", job.id, exc)
            self._discard_child()
            self._store_call("release", lambda: self.store.release(job.id, self.worker_id))
            return
        try:
            while True:
                event = child.receive(0.1)
                if isinstance(event, Log) and event.job_id == job.id:
                    pending.append((event.level, event.message, event.timestamp))
                    if len(pending) >= LOG_BATCH:
                        flush()
                elif isinstance(event, Done) and event.job_id == job.id:
                    flush()
                    if not lease_lost:
                        self._finish(job, result=event.result, error=event.error, cancelled=event.cancelled,
                                     inference_time=event.inference_time)
                    return
                elif event is None and not child.is_alive():
                    raise ChildGone(child.exit_description())

                now = time.monotonic()
                if now >= next_flush:
                    flush()
                    next_flush = now + LOG_FLUSH_S
                if now >= next_heartbeat:
                    next_heartbeat = now + self.lease_s / 3
                    beat = self._store_call("heartbeat", lambda: self.store.heartbeat(job.id, self.worker_id, self.lease_s))
                    if beat is None:
                        lease_lost = True
                        stop_child("the lease was lost")
                    elif beat is not _FAILED and beat.cancel_requested:
                        stop_child("cancellation requested")
                elif now >= next_cancel_poll and cancel_sent_at is None:
                    # Reads are cheap (no write lock): learn of a cancel faster than heartbeats would.
                    next_cancel_poll = now + CANCEL_POLL_S
                    current = self._store_call("get", lambda: self.store.get(job.id))
                    if current is not _FAILED and current is not None and current.cancel_requested:
                        stop_child("cancellation requested")
                if stop.is_set() and stop_seen_at is None:
                    stop_seen_at = now
                if stop_seen_at is not None and now - stop_seen_at > self.shutdown_grace_s:
                    flush()
                    self._discard_child()
                    if not lease_lost:
                        self._store_call("release", lambda: self.store.release(job.id, self.worker_id))
                    log.info("request %s: worker shutting down; returned it to the queue", job.id)
                    return
                if cancel_sent_at is not None and now - cancel_sent_at > self.cancel_grace_s:
                    log.warning("request %s: handler ignored cancellation for %.0f s; killing the model process",
                                job.id, self.cancel_grace_s)
                    flush()
                    self._discard_child()
                    if not lease_lost:
                        self._finish(job, cancelled=True)
                    return
        except ChildGone as exc:
            reason = str(exc)
            log.error("request %s: %s", job.id, reason)
            flush()
            self._discard_child()
            if not lease_lost:
                self._finish(job, error=error_dict(503, reason, "runner_disconnected"))

    # -- store calls that must not kill the supervisor --------------------------------------

    def _finish(self, job: Job, **outcome: Any) -> None:
        """Record the outcome, retrying through store hiccups: losing a finished result is costly."""
        for attempt in range(6):
            try:
                if not self.store.finish(job.id, self.worker_id, **outcome):
                    log.warning("request %s: lease lost before its outcome could be recorded", job.id)
                return
            except Exception:
                log.exception("request %s: could not record the outcome (attempt %d)", job.id, attempt + 1)
                time.sleep(min(0.5 * 2**attempt, 8.0))

    def _store_call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception:
            log.exception("worker %s: store %s failed; continuing", self.worker_id, what)
            return _FAILED


_FAILED: Any = object()  # marker: the store call raised (distinct from a None result)
