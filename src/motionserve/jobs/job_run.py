"""One claimed job on one model process, from hand-over to recorded outcome.

`JobRun.execute` reads in order: hand the job to the model process, then watch it (collect its log
lines and previews, heartbeat the lease, relay a cancel request, enforce the limits), then record the
outcome. Every way a run can end is one of the `_end_*` methods at the bottom:

- the handler answered (`Done`): record its result, error or cancellation;
- the model process died: the job FAILS with 503 runner_disconnected naming the exit code/signal. It
  is not retried: such crashes are usually caused by the request itself (too many frames for the
  GPU), and a retry would only crash the next process. (A job whose *supervisor* vanished is retried
  instead, by `Store.reclaim_expired`, up to max_attempts.)
- cancel requested: the handler stops at its next step; if it has not within `cancel_grace_s`, the
  process is killed (the only way to free a GPU stuck in a kernel) and the job is cancelled;
- it ran past `job_timeout_s`: the process is killed and the job fails with 504;
- the worker is stopping: the handler may finish within the drain timeout, else the job goes back
  to the queue for another worker;
- the lease was lost (the store gave the job to someone else): the handler is stopped and its
  outcome discarded.

A handler may return before its output file is stored (`OutputPending`: the model process encodes and
stores it on a thread while it runs the next job). The run then ends for the model, not for the job:
the supervisor keeps it among its `FinishingRuns`, which go on heartbeating the lease and watching for
cancellation and the time limit until the job's `Done` arrives, so the job completes only once its
file is stored. Cancelling it, or its time limit, ends it at once (there is no handler left to stop,
and the model process is busy with another job: it is not killed); its late `Done` is then ignored.
If the model process dies or is stopped first, the job fails like any job of a dead model process.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from motionserve.database import log_failure
from motionserve.jobs.child import ChildGone, ModelProcess
from motionserve.jobs.events import ChildEvent, Done, Log, OutputPending, Preview
from motionserve.jobs.models import Job, error_dict
from motionserve.jobs.protocols import WorkerStore

log = logging.getLogger(__name__)

LOG_FLUSH_S = 0.5
LOG_BATCH = 200
MAX_UNFLUSHED_LOGS = 10 * LOG_BATCH
CANCEL_POLL_S = 0.5
RECEIVE_S = 0.1


@dataclass(frozen=True)
class RunLimits:
    lease_s: float
    cancel_grace_s: float
    drain_timeout_s: float
    job_timeout_s: float  # 0: no limit


@dataclass(frozen=True)
class RunOutcome:
    """How the run ended, for the supervisor: whether its model process survived, and what is warm."""

    keep_child: bool
    warm: tuple[str, ...] | None = None  # endpoint ids warm in the model process, when it said
    output_pending: bool = False  # the handler returned; the job ends when its output is stored


class JobRun:
    def __init__(
        self,
        job: Job,
        child: ModelProcess,
        store: WorkerStore,
        worker_id: str,
        limits: RunLimits,
        stop: threading.Event,
        on_finished: Callable[[Job, dict[str, Any], float], None] = lambda job, outcome, run_time_s: None,
        on_heartbeat: Callable[[], None] = lambda: None,
        finishing: FinishingRuns | None = None,
    ) -> None:
        self.job, self.child, self.store, self.worker_id = job, child, store, worker_id
        # Earlier jobs of this model process whose outputs are still being stored: their events come
        # through the same pipe, and their leases need heartbeats while this job runs.
        self.finishing = finishing if finishing is not None else FinishingRuns()
        self.output_pending = False
        self.limits, self.stop = limits, stop
        self.on_finished = on_finished
        self.on_heartbeat = on_heartbeat  # the supervisor refreshes its registry row: it is alive, and busy
        self.pending_logs: list[tuple[str, str, float]] = []
        self.lease_lost = False
        self.started = time.monotonic()
        self.cancel_sent_at: float | None = None
        self.stop_seen_at: float | None = None
        self.next_flush = self.started + LOG_FLUSH_S
        self.next_heartbeat = self.started + limits.lease_s / 3
        self.next_cancel_poll = self.started + CANCEL_POLL_S

    def execute(self) -> RunOutcome:
        try:
            self.child.run(self.job)
        except ChildGone as exc:
            # It died before the job reached it: not the request's fault, so it goes back to the queue.
            log.error("request %s: %s before the job started; requeueing it", self.job.id, exc)
            self._store_call("release", lambda: self.store.release(self.job.id, self.worker_id))
            return RunOutcome(keep_child=False)
        try:
            return self._watch()
        except ChildGone as exc:
            return self._end_child_died(str(exc))

    # -- watching the model process --------------------------------------------------------

    def _watch(self) -> RunOutcome:
        while True:
            event = self.child.receive(RECEIVE_S)
            if event is None and not self.child.is_alive():
                raise ChildGone(self.child.exit_description())
            if event is not None and getattr(event, "job_id", None) != self.job.id:
                self.finishing.handle(event)
                event = None
            ended = self.handle(event) if event is not None else None
            now = time.monotonic()
            self.finishing.tick(now)
            if ended is None:
                ended = self.tick(now)
            if ended is not None:
                return ended

    def handle(self, event: ChildEvent) -> RunOutcome | None:
        """Take one event of this job; an outcome when it ends the run (or the handler's part of it)."""
        if isinstance(event, Log):
            self.pending_logs.append((event.level, event.message, event.timestamp))
            if len(self.pending_logs) >= LOG_BATCH:
                self._flush_logs()
        elif isinstance(event, Preview):
            self._record_preview(event)
        elif isinstance(event, OutputPending) and not self.output_pending:
            self.output_pending = True
            return RunOutcome(keep_child=True, warm=event.warm, output_pending=True)
        elif isinstance(event, Done):
            return self._end_done(event)
        return None

    def tick(self, now: float) -> RunOutcome | None:
        """Periodic duties; an outcome when one of them ends the run."""
        if now >= self.next_flush:
            self._flush_logs()
            self.next_flush = now + LOG_FLUSH_S
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.limits.lease_s / 3
            self._heartbeat()
        elif now >= self.next_cancel_poll and self.cancel_sent_at is None:
            # Reads are cheap (no write lock): learn of a cancel faster than heartbeats would.
            self.next_cancel_poll = now + CANCEL_POLL_S
            current = self._store_call("get", lambda: self.store.get(self.job.id))
            if current is not _FAILED and current is not None and current.cancel_requested:
                self._ask_handler_to_stop("cancellation requested")
        if self.stop.is_set() and self.stop_seen_at is None:
            self.stop_seen_at = now
        if self.stop_seen_at is not None and now - self.stop_seen_at > self.limits.drain_timeout_s:
            return self._end_drained()
        if self.cancel_sent_at is not None and self.output_pending:
            return self._end_cancelled_while_storing()
        if self.cancel_sent_at is not None and now - self.cancel_sent_at > self.limits.cancel_grace_s:
            return self._end_cancel_ignored()
        if self.limits.job_timeout_s and now - self.started > self.limits.job_timeout_s:
            return self._end_timed_out()
        return None

    def _heartbeat(self) -> None:
        beat = self._store_call("heartbeat", lambda: self.store.heartbeat(self.job.id, self.worker_id, self.limits.lease_s))
        if beat is None:
            self.lease_lost = True
            self._ask_handler_to_stop("the lease was lost")
        elif beat is not _FAILED and beat.cancel_requested:
            self._ask_handler_to_stop("cancellation requested")
        self.on_heartbeat()

    def _ask_handler_to_stop(self, reason: str) -> None:
        if self.cancel_sent_at is None:
            log.info("request %s: %s; stopping the handler", self.job.id, reason)
            if not self.output_pending:  # else the event would stop the next job's handler
                self.child.cancel_event.set()
            self.cancel_sent_at = time.monotonic()

    def _record_preview(self, preview: Preview) -> None:
        # The model process already keeps previews to two a second; a failed write only loses this one.
        if not self.lease_lost:
            shown = {"url": preview.url, "step": preview.step}
            self._store_call("set_preview", lambda: self.store.set_preview(self.job.id, self.worker_id, shown))

    def _flush_logs(self) -> None:
        if self.pending_logs and not self.lease_lost:
            lines = list(self.pending_logs)
            if self._store_call("append_logs", lambda: self.store.append_logs(self.job.id, lines)) is _FAILED:
                # Kept for the next flush: a database restart must not cut a hole in the request's
                # logs. Bounded: an outage that outlasts this many lines loses the oldest.
                del self.pending_logs[:-MAX_UNFLUSHED_LOGS]
                return
        self.pending_logs.clear()

    # -- the ways a run ends ------------------------------------------------------------------

    def _end_done(self, done: Done) -> RunOutcome:
        self._flush_logs()
        self._finish(result=done.result, error=done.error, cancelled=done.cancelled, inference_time=done.inference_time)
        return RunOutcome(keep_child=True, warm=done.warm)

    def _end_child_died(self, reason: str) -> RunOutcome:
        log.error("request %s: %s", self.job.id, reason)
        self._flush_logs()
        self._finish(error=error_dict(503, reason, "runner_disconnected"))
        return RunOutcome(keep_child=False)

    def _end_drained(self) -> RunOutcome:
        self._flush_logs()
        if not self.lease_lost:
            self._store_call("release", lambda: self.store.release(self.job.id, self.worker_id))
        log.info("request %s: worker stopping; returned it to the queue", self.job.id)
        return RunOutcome(keep_child=False)

    def _end_cancelled_while_storing(self) -> RunOutcome:
        # The model process is already on another job: its stored file, if any, expires unreferenced.
        self._flush_logs()
        self._finish(cancelled=True)
        return RunOutcome(keep_child=True)

    def _end_cancel_ignored(self) -> RunOutcome:
        log.warning("request %s: handler ignored cancellation for %.0f s; killing the model process",
                    self.job.id, self.limits.cancel_grace_s)
        self._flush_logs()
        self._finish(cancelled=True)
        return RunOutcome(keep_child=False)

    def _end_timed_out(self) -> RunOutcome:
        limit = self.limits.job_timeout_s
        # Once the handler has returned, the model process is on the next job: an encoder stuck for good
        # stalls that one's hand-over, which its own time limit then ends.
        log.warning("request %s: ran longer than %.0f s%s", self.job.id, limit,
                    " while its output was stored" if self.output_pending else "; killing the model process")
        self._flush_logs()
        detail = f"Request ran longer than this server's limit of {limit:g} s"
        self._finish(error=error_dict(504, detail, "request_timeout"))
        return RunOutcome(keep_child=self.output_pending)

    # -- store calls that must not end the supervisor -------------------------------------

    def _finish(self, **outcome: Any) -> None:
        """Record the outcome, retrying through store hiccups: losing a finished result is costly."""
        if self.lease_lost:
            return
        for attempt in range(6):
            try:
                recorded = self.store.finish(self.job.id, self.worker_id, **outcome)
            except Exception:
                log.exception("request %s: could not record the outcome (attempt %d)", self.job.id, attempt + 1)
                time.sleep(min(0.5 * 2**attempt, 8.0))
                continue
            if not recorded:
                log.warning("request %s: lease lost before its outcome could be recorded", self.job.id)
                return
            try:
                self.on_finished(self.job, outcome, time.monotonic() - self.started)
            except Exception:  # metrics are a report on the work, never a reason to fail it
                log.exception("request %s: reporting the outcome failed", self.job.id)
            return

    def _store_call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception:
            log_failure(log, "request %s: store %s failed; continuing", self.job.id, what)
            return _FAILED


_FAILED: Any = object()  # marker: the store call raised (distinct from a None result)


class FinishingRuns:
    """The runs of one model process whose handler returned while their output is still being stored.

    The model process bounds them (jobs/outputs.py: one being encoded, one waiting). Whoever reads the
    model process's pipe hands their events to `handle` and calls `tick` often: the running job's
    `JobRun`, or the supervisor, idle, through `pump`."""

    def __init__(self) -> None:
        self._runs: dict[str, JobRun] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run: JobRun) -> None:
        run.on_heartbeat = lambda: None  # the worker's registry row shows the job that runs now
        self._runs[run.job.id] = run

    def handle(self, event: ChildEvent) -> None:
        run = self._runs.get(getattr(event, "job_id", ""))
        if run is not None and run.handle(event) is not None:
            del self._runs[run.job.id]

    def tick(self, now: float) -> None:
        for job_id, run in list(self._runs.items()):
            if run.tick(now) is not None:
                del self._runs[job_id]

    def pump(self, child: ModelProcess, timeout_s: float, wake: threading.Event | None = None) -> None:
        """Read the model process's events for up to `timeout_s`, until none is left or `wake` is set.
        Raises ChildGone if the model process died."""
        deadline = time.monotonic() + timeout_s
        while self._runs and not (wake is not None and wake.is_set()) and time.monotonic() < deadline:
            event = child.receive(RECEIVE_S)
            if event is None and not child.is_alive():
                raise ChildGone(child.exit_description())
            if event is not None:
                self.handle(event)
            self.tick(time.monotonic())

    def end_all(self, reason: str) -> None:
        """The model process is gone, and their outputs with it."""
        for run in self._runs.values():
            run._end_child_died(reason)
        self._runs.clear()
