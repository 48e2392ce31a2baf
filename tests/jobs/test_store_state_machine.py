"""Property test of the job state machine: any interleaving of API and worker actions keeps the rules.

Random sequences of submit / claim / heartbeat / finish / release / cancel / clock moves / lease
reclaim must never produce a transition outside ALLOWED_TRANSITIONS, never change a terminal job,
and never let two workers hold (heartbeat, finish) the same job.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from motionserve.jobs.models import ALLOWED_TRANSITIONS, CancelOutcome, Job, JobState
from motionserve.jobs.store import Store

WORKERS = st.sampled_from(["w1", "w2", "w3"])
LEASE_S = 30.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class JobStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.clock = _Clock()
        self.store = Store(f"sqlite:///{Path(self._tmp.name) / 'sm.db'}", clock=self.clock)
        self.store.create_all()
        self.ids: list[str] = []
        self.seen: dict[str, Job] = {}  # last observed version of every job

    def teardown(self) -> None:
        self.store.close()
        self._tmp.cleanup()

    def _pick(self, data: st.DataObject) -> str | None:
        return data.draw(st.sampled_from(self.ids)) if self.ids else None

    # -- actions ----------------------------------------------------------------------------

    @rule(priority=st.sampled_from([0, 1]), deadline=st.one_of(st.none(), st.floats(1, 100)))
    def submit(self, priority: int, deadline: float | None) -> None:
        job = self.store.submit(
            owner="o", endpoint_id="e", input={}, priority=priority, base_url="http://x",
            start_timeout_s=deadline, webhook_url="http://hook",
        )
        self.ids.append(job.id)
        self.seen[job.id] = job

    @rule(worker=WORKERS)
    def claim(self, worker: str) -> None:
        job = self.store.claim(worker, LEASE_S)
        if job is not None:
            before = self.seen[job.id]
            assert before.state is JobState.QUEUED, f"claimed a job that was {before.state}"
            assert job.worker_id == worker and job.attempts == before.attempts + 1

    @rule(worker=WORKERS, data=st.data())
    def heartbeat(self, worker: str, data: st.DataObject) -> None:
        job_id = self._pick(data)
        if job_id is None:
            return
        before = self.seen[job_id]
        beat = self.store.heartbeat(job_id, worker, LEASE_S)
        holds = before.state is JobState.RUNNING and before.worker_id == worker
        assert (beat is not None) == holds

    @rule(worker=WORKERS, outcome=st.sampled_from(["result", "error", "cancelled"]), data=st.data())
    def finish(self, worker: str, outcome: str, data: st.DataObject) -> None:
        job_id = self._pick(data)
        if job_id is None:
            return
        before = self.seen[job_id]
        kwargs = {"result": {"r": 1}} if outcome == "result" else (
            {"error": {"status_code": 500, "detail": "x", "error_type": "internal_error"}}
            if outcome == "error" else {"cancelled": True})
        done = self.store.finish(job_id, worker, **kwargs)  # type: ignore[arg-type]
        assert done == (before.state is JobState.RUNNING and before.worker_id == worker)

    @rule(worker=WORKERS, data=st.data())
    def release(self, worker: str, data: st.DataObject) -> None:
        job_id = self._pick(data)
        if job_id is None:
            return
        before = self.seen[job_id]
        assert self.store.release(job_id, worker) == (before.state is JobState.RUNNING and before.worker_id == worker)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self._pick(data)
        if job_id is None:
            return
        before = self.seen[job_id]
        outcome = self.store.request_cancel(job_id)
        expected = {
            JobState.QUEUED: CancelOutcome.CANCELLED,
            JobState.RUNNING: CancelOutcome.REQUESTED,
        }.get(before.state, CancelOutcome.ALREADY_COMPLETED)
        assert outcome is expected

    @rule(seconds=st.floats(0, 45))
    def tick(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(max_attempts=st.integers(1, 3))
    def reclaim(self, max_attempts: int) -> None:
        self.store.reclaim_expired(max_attempts)

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def transitions_are_legal(self) -> None:
        for job_id in self.ids:
            now = self.store.get(job_id)
            assert now is not None
            before = self.seen[job_id]
            if before.state.is_terminal:
                assert now == before, "a terminal job changed"
            elif now.state is not before.state:
                assert now.state in ALLOWED_TRANSITIONS[before.state], f"{before.state} -> {now.state}"
            if now.state is JobState.RUNNING:
                assert now.worker_id is not None and now.lease_expires_at is not None
            if now.state is JobState.QUEUED:
                assert now.worker_id is None and not now.cancel_requested
            if now.state.is_terminal:
                assert now.finished_at is not None and now.lease_expires_at is None
                assert (now.result is not None) == (now.state is JobState.SUCCEEDED)
                # Exactly one webhook row per finished job with a webhook, created with the change.
                assert len(self.store.webhook_deliveries(job_id)) == 1
            self.seen[job_id] = now


JobStateMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestJobStateMachine = JobStateMachine.TestCase
