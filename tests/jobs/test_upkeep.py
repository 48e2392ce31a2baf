"""The fleet upkeep an API node runs: deadlines, jobs of vanished workers, retention, files."""

from __future__ import annotations

from motionserve.config import Settings
from motionserve.jobs.models import JobState, WorkerRecord
from motionserve.jobs.store import Store
from motionserve.jobs.upkeep import Chore, Upkeep

BASE = "http://127.0.0.1:8000"


class CountingFiles:
    def __init__(self) -> None:
        self.sweeps = 0

    def delete_expired(self) -> int:
        self.sweeps += 1
        return 0


def _submit(store: Store, **kw: object) -> str:
    return store.submit(owner="a", endpoint_id="e", input={"prompt": "x"}, base_url=BASE, **kw).id  # type: ignore[arg-type]


def test_a_node_requeues_the_job_of_a_vanished_worker_and_expires_deadlines(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(lease_s=30, max_attempts=3)
    files = CountingFiles()
    upkeep = Upkeep.for_node(settings, store, files)
    running = _submit(store)
    assert store.claim("gone-worker", settings.lease_s) is not None
    late = _submit(store, start_timeout_s=5)

    clock.advance(31)  # the worker stopped heartbeating a lease ago; the queued job waited past its deadline
    upkeep.run_due(now=0.0)

    assert store.get(running).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.get(late).error["error_type"] == "request_timeout"  # type: ignore[union-attr,index]
    assert files.sweeps == 1


def test_finished_jobs_their_logs_and_webhooks_go_after_the_retention_period(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    old, recent, queued = _submit(store, webhook_url="https://hook.example/x"), _submit(store), _submit(store)
    for job_id in (old, recent):
        assert store.claim("w", 30) is not None
        store.append_logs(job_id, [("INFO", "step 1/1")])
        assert store.finish(job_id, "w", result={})
        clock.advance(3600)
    assert store.webhook_deliveries(old)

    assert store.delete_finished(older_than_s=3600 + 1) == 1
    assert store.get(old) is None and store.logs(old) == [] and store.webhook_deliveries(old) == []
    assert store.get(recent) is not None and store.logs(recent)
    assert store.get(queued) is not None  # never a job still waiting or running


def test_stopped_and_vanished_workers_leave_the_registry(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    record = WorkerRecord(id="w1", host="gpu-a", pid=1, device="cuda:0", version="0", state="idle", warm=(), current_job=None)
    store.worker_seen(record)
    assert [w.id for w in store.live_workers(seen_within_s=35)] == ["w1"]
    clock.advance(40)
    assert store.live_workers(seen_within_s=35) == []  # unseen for a lease: not live, still listed for pruning
    assert store.prune_workers(older_than_s=30) == 1


def test_a_failing_chore_does_not_stop_the_others() -> None:
    ran: list[str] = []

    def broken() -> int:
        raise OSError("disk gone")

    upkeep = Upkeep([Chore("broken", 1.0, broken), Chore("fine", 1.0, lambda: ran.append("fine") or 0)])
    upkeep.run_due(now=0.0)
    upkeep.run_due(now=0.5)  # not due again yet
    upkeep.run_due(now=1.0)
    assert ran == ["fine", "fine"]
