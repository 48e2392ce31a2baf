"""The store's job lifecycle, queue order, deadlines, leases, logs, keys and webhook rows (SQLite + PostgreSQL)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from motionserve.jobs.models import CancelOutcome, ClaimPreference, JobState, Priority
from motionserve.jobs.store import Store


def submit(store: Store, **kw: Any):  # type: ignore[no-untyped-def]
    args: dict[str, Any] = {"owner": "alice", "endpoint_id": "fal-ai/fast-animatediff/text-to-video",
                            "input": {"prompt": "a cat"}, "base_url": "http://127.0.0.1:8000"}
    args.update(kw)
    return store.submit(**args)


def test_submit_and_get_round_trip(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    job = submit(store, input={"prompt": "a cat", "num_frames": 16}, webhook_url="https://hook.example/x",
                 file_retention_s=60, start_timeout_s=30)
    got = store.get(job.id)
    assert got == job
    assert got.state is JobState.QUEUED and got.attempts == 0 and not got.cancel_requested
    assert got.input is None  # status reads never load the input (it can be a 64 MB data URI)
    assert store.get(job.id, with_input=True).input == {"prompt": "a cat", "num_frames": 16}
    assert got.created_at == clock.now and got.file_retention_s == 60
    assert store.get("00000000-0000-0000-0000-000000000000") is None


def test_queue_order_is_priority_then_submit_order(store: Store) -> None:
    low = submit(store, priority=Priority.LOW)
    first = submit(store)
    second = submit(store)
    assert [store.queue_position(j) for j in (first, second, low)] == [0, 1, 2]
    claimed = [store.claim("w", 30).id for _ in range(3)]  # type: ignore[union-attr]
    assert claimed == [first.id, second.id, low.id]
    assert store.claim("w", 30) is None
    assert store.queue_position(store.get(first.id)) == 0  # type: ignore[arg-type]


def test_queue_positions_of_many_jobs_in_one_query(store: Store) -> None:
    first, second = submit(store), submit(store)
    low = submit(store, priority=Priority.LOW)
    urgent = submit(store)
    assert store.queue_positions([first.id, low.id, urgent.id]) == {first.id: 0, urgent.id: 2, low.id: 3}
    assert store.claim("w", 30).id == first.id  # type: ignore[union-attr]
    assert store.queue_positions([first.id, second.id, low.id]) == {second.id: 0, low.id: 2}  # first left
    assert store.queue_positions([]) == {}
    assert store.queue_positions([low.id]) == {low.id: store.queue_position(low)}


def test_claim_filters_endpoints(store: Store) -> None:
    a = submit(store, endpoint_id="a/x")
    b = submit(store, endpoint_id="b/y")
    assert store.claim("w", 30, endpoint_ids=["b/y"]).id == b.id  # type: ignore[union-attr]
    assert store.claim("w", 30, endpoint_ids=["c/z"]) is None
    assert store.claim("w", 30).id == a.id  # type: ignore[union-attr]


def test_claim_prefers_warm_pipelines_and_runner_hints_but_never_starves(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    svd = "fal-ai/fast-svd-lcm"
    t2v = submit(store, endpoint_id="fal-ai/fast-animatediff/text-to-video")
    clock.advance(1)
    warm = submit(store, endpoint_id=svd)
    hinted = submit(store, endpoint_id=svd, runner_hint="loras:ghibli")
    low = submit(store, endpoint_id=svd, runner_hint="loras:ghibli", priority=Priority.LOW)
    prefer = ClaimPreference(warm_endpoints=frozenset({svd}), hints=frozenset({"loras:ghibli"}), max_wait_s=30)
    # The hint it ran last beats a merely warm pipeline, which beats submit order; priority still first.
    assert store.claim("w1", 30, prefer=prefer).id == hinted.id  # type: ignore[union-attr]
    assert store.claim("w1", 30, prefer=prefer).id == warm.id  # type: ignore[union-attr]
    fresh = submit(store, endpoint_id=svd)
    clock.advance(30)  # t2v has now waited 31 s > max_wait_s: its age wins over this worker's taste
    assert store.claim("w1", 30, prefer=prefer).id == t2v.id  # type: ignore[union-attr]
    assert store.claim("w1", 30, prefer=prefer).id == fresh.id  # type: ignore[union-attr]
    assert store.claim("w1", 30, prefer=prefer).id == low.id  # type: ignore[union-attr]


def test_among_jobs_that_waited_too_long_age_alone_decides(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    # A backlog older than max_wait_s: the warm worker must not keep picking its own endpoint's
    # overdue jobs over an older overdue job of another endpoint (found by bench/bench_scale.py).
    svd = "fal-ai/fast-svd-lcm"
    cold = submit(store, endpoint_id="fal-ai/fast-animatediff/text-to-video")
    clock.advance(1)
    warm = submit(store, endpoint_id=svd, runner_hint="loras:ghibli")
    clock.advance(60)
    prefer = ClaimPreference(warm_endpoints=frozenset({svd}), hints=frozenset({"loras:ghibli"}), max_wait_s=30)
    assert store.claim("w1", 30, prefer=prefer).id == cold.id  # type: ignore[union-attr]
    assert store.claim("w1", 30, prefer=prefer).id == warm.id  # type: ignore[union-attr]
    # max_wait_s=0: every job has waited too long, so the preference never applies (submit order).
    first, second = submit(store), submit(store, endpoint_id=svd)
    clock.advance(1)
    no_preference = ClaimPreference(warm_endpoints=frozenset({svd}), max_wait_s=0)
    assert [store.claim("w1", 30, prefer=no_preference).id for _ in range(2)] == [first.id, second.id]  # type: ignore[union-attr]


def test_no_retry_jobs_fail_instead_of_running_again_when_their_worker_dies(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    once = submit(store, no_retry=True)
    again = submit(store)
    assert store.claim("w", 10) is not None and store.claim("w", 10) is not None
    clock.advance(11)
    assert store.reclaim_expired(max_attempts=3) == 2
    failed, requeued = store.get(once.id), store.get(again.id)
    assert failed.state is JobState.FAILED and failed.error["error_type"] == "runner_disconnected"  # type: ignore[union-attr,index]
    assert "X-Fal-No-Retry" in failed.error["detail"]  # type: ignore[union-attr,index]
    assert requeued.state is JobState.QUEUED  # type: ignore[union-attr]


def test_claim_marks_running_with_lease(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    job = submit(store)
    claimed = store.claim("worker-1", 30)
    assert claimed is not None and claimed.id == job.id
    assert claimed.state is JobState.RUNNING and claimed.worker_id == "worker-1"
    assert claimed.attempts == 1 and claimed.started_at == clock.now
    assert claimed.lease_expires_at == clock.now + 30


def test_start_deadline_expires_queued_job_as_user_timeout(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    late = submit(store, start_timeout_s=5, webhook_url="https://hook.example/x")
    ok = submit(store, start_timeout_s=100)
    clock.advance(10)
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == ok.id
    failed = store.get(late.id)
    assert failed.state is JobState.FAILED  # type: ignore[union-attr]
    assert failed.error == {"status_code": 504, "detail": "Request timed out",  # type: ignore[union-attr]
                            "error_type": "request_timeout", "timeout_type": "user"}
    assert len(store.webhook_deliveries(late.id)) == 1


def test_start_deadline_expires_while_every_worker_is_busy(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    busy = submit(store)
    store.claim("only-worker", 30)  # the one worker is busy: nobody claims, so only expiry can end `late`
    late = submit(store, start_timeout_s=5)
    assert store.expire_start_deadlines() == 0
    clock.advance(10)
    assert store.expire_start_deadlines() == 1
    assert store.get(late.id).state is JobState.FAILED  # type: ignore[union-attr]
    assert store.get(busy.id).state is JobState.RUNNING  # type: ignore[union-attr]


def test_heartbeat_extends_lease_and_reports_cancel(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    job = submit(store)
    store.claim("w1", 30)
    clock.advance(20)
    beat = store.heartbeat(job.id, "w1", 30)
    assert beat is not None and beat.lease_expires_at == clock.now + 30 and not beat.cancel_requested
    assert store.heartbeat(job.id, "someone-else", 30) is None
    assert store.request_cancel(job.id) is CancelOutcome.REQUESTED
    assert store.heartbeat(job.id, "w1", 30).cancel_requested  # type: ignore[union-attr]


def test_cancel_outcomes(store: Store) -> None:
    queued = submit(store)
    assert store.request_cancel(queued.id) is CancelOutcome.CANCELLED
    cancelled = store.get(queued.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at is not None  # type: ignore[union-attr]
    assert cancelled.error["error_type"] == "client_cancelled"  # type: ignore[index, union-attr]
    assert store.claim("w", 30) is None  # a cancelled job is never run
    assert store.request_cancel(queued.id) is CancelOutcome.ALREADY_COMPLETED
    assert store.request_cancel("no-such-job") is None


def test_finish_outcomes_and_lost_lease(store: Store) -> None:
    ok, bad, stop = submit(store), submit(store), submit(store)
    for _ in range(3):
        store.claim("w", 30)
    assert not store.finish(ok.id, "intruder", result={"x": 1})
    assert store.finish(ok.id, "w", result={"video": {"url": "u"}}, inference_time=1.5)
    assert not store.finish(ok.id, "w", result={"again": True})  # terminal never changes
    error = {"status_code": 422, "detail": [{"loc": ["body", "prompt"], "msg": "bad", "type": "value_error"}],
             "error_type": "validation_error"}
    assert store.finish(bad.id, "w", error=error)
    assert store.finish(stop.id, "w", cancelled=True)
    done = store.get(ok.id)
    assert done.state is JobState.SUCCEEDED and done.result == {"video": {"url": "u"}}  # type: ignore[union-attr]
    assert done.inference_time == 1.5 and done.lease_expires_at is None  # type: ignore[union-attr]
    assert store.get(bad.id).error == error  # type: ignore[union-attr]
    assert store.get(stop.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_reclaim_requeues_then_gives_up(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    job = submit(store)
    later = submit(store)
    for attempt in (1, 2):
        claimed = store.claim(f"w{attempt}", 30)
        assert claimed is not None and claimed.id == job.id and claimed.attempts == attempt
        clock.advance(31)
        assert store.reclaim_expired(max_attempts=2) == (1 if attempt == 1 else 1)
        if attempt == 1:
            requeued = store.get(job.id)
            assert requeued.state is JobState.QUEUED and requeued.worker_id is None  # type: ignore[union-attr]
            assert store.queue_position(requeued) == 0  # type: ignore[arg-type]  # keeps its place before `later`
            assert not store.finish(job.id, "w1", result={})  # the old worker lost it
    failed = store.get(job.id)
    assert failed.state is JobState.FAILED  # type: ignore[union-attr]
    assert failed.error == {"status_code": 503, "error_type": "runner_disconnected",  # type: ignore[union-attr]
                            "detail": "The worker running this request stopped responding 2 times; giving up"}
    assert store.get(later.id).state is JobState.QUEUED  # type: ignore[union-attr]


def test_reclaim_leaves_live_leases_and_cancels_cancel_requested(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    live, doomed = submit(store), submit(store)
    store.claim("w", 30)
    store.claim("w", 10)
    store.request_cancel(doomed.id)
    clock.advance(15)
    assert store.reclaim_expired(max_attempts=3) == 1
    assert store.get(live.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.get(doomed.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_release_requeues_without_counting_attempt(store: Store) -> None:
    job = submit(store)
    store.claim("w", 30)
    assert not store.release(job.id, "other")
    assert store.release(job.id, "w")
    back = store.get(job.id)
    assert back.state is JobState.QUEUED and back.attempts == 0 and back.worker_id is None  # type: ignore[union-attr]


def test_release_of_a_job_being_cancelled_cancels_it(store: Store) -> None:
    """A worker shutting down mid-cancel must not hand the job to another worker (found by the state machine)."""
    job = submit(store)
    store.claim("w", 30)
    assert store.request_cancel(job.id) is CancelOutcome.REQUESTED
    assert store.release(job.id, "w")
    gone = store.get(job.id)
    assert gone.state is JobState.CANCELLED and gone.error["status_code"] == 499  # type: ignore[union-attr,index]
    assert store.claim("w2", 30) is None


def test_logs_are_numbered_and_paged(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    job = submit(store)
    store.append_logs(job.id, [("INFO", "step 1/2"), ("INFO", "step 2/2", clock.now - 1)])
    store.append_logs(job.id, [("ERROR", "boom")])
    store.append_logs(job.id, [])
    lines = store.logs(job.id)
    assert [(l.seq, l.level, l.message) for l in lines] == [(1, "INFO", "step 1/2"), (2, "INFO", "step 2/2"), (3, "ERROR", "boom")]
    assert lines[1].timestamp == clock.now - 1 and lines[0].timestamp == clock.now
    assert [l.seq for l in store.logs(job.id, after_seq=2)] == [3]
    store.append_logs("no-such-job", [("INFO", "ignored")])
    assert store.logs("no-such-job") == []


def test_terminal_job_with_webhook_enqueues_fal_payload(store: Store) -> None:
    import json

    ok = submit(store, webhook_url="https://hook.example/ok")
    bad = submit(store, webhook_url="https://hook.example/bad")
    plain = submit(store)
    for _ in range(3):
        store.claim("w", 30)
    store.finish(ok.id, "w", result={"video": {"url": "u"}})
    store.finish(bad.id, "w", error={"status_code": 422, "detail": [{"msg": "m"}], "error_type": "validation_error"})
    store.finish(plain.id, "w", result={})
    assert store.webhook_deliveries(plain.id) == []
    due = {w.job_id: w for w in store.due_webhooks()}
    assert set(due) == {ok.id, bad.id}
    assert json.loads(due[ok.id].body) == {"request_id": ok.id, "gateway_request_id": ok.id, "status": "OK",
                                          "payload": {"video": {"url": "u"}}, "error": None}
    assert json.loads(due[bad.id].body) == {"request_id": bad.id, "gateway_request_id": bad.id, "status": "ERROR",
                                           "error": "Invalid status code: 422", "payload": {"detail": [{"msg": "m"}]}}
    assert due[ok.id].owner == "alice" and due[ok.id].url == "https://hook.example/ok"
    assert store.due_webhooks() == []  # claimed by the first caller while in flight


def test_webhook_attempts_retry_then_give_up(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    job = submit(store, webhook_url="https://hook.example/x")
    store.claim("w", 30)
    store.finish(job.id, "w", result={})
    for attempt in range(1, 11):
        (pending,) = store.due_webhooks()
        assert pending.attempts == attempt - 1
        store.record_webhook_attempt(pending.id, False, f"HTTP 500 #{attempt}", next_attempt_at=clock.now + 5)
        clock.advance(6)
    assert store.due_webhooks() == []
    (record,) = store.webhook_deliveries(job.id)
    assert record["state"] == "failed" and record["attempts"] == 10 and record["last_error"] == "HTTP 500 #10"


def test_webhook_delivered(store: Store) -> None:
    job = submit(store, webhook_url="https://hook.example/x")
    store.claim("w", 30)
    store.finish(job.id, "w", result={})
    (pending,) = store.due_webhooks()
    store.record_webhook_attempt(pending.id, True)
    (record,) = store.webhook_deliveries(job.id)
    assert record["state"] == "delivered" and record["attempts"] == 1


def test_api_keys(store: Store) -> None:
    assert not store.has_keys()
    key_id, secret = store.create_key("alice", label="laptop")
    assert store.has_keys()
    assert store.verify_key(key_id, secret) == "alice"
    assert store.verify_key(key_id, secret + "0") is None
    assert store.verify_key("unknown", secret) is None
    (listed,) = store.list_keys()
    assert (listed.key_id, listed.owner, listed.label, listed.revoked) == (key_id, "alice", "laptop", False)
    assert secret not in repr(store.list_keys())
    assert store.revoke_key(key_id) and not store.revoke_key(key_id)
    assert store.verify_key(key_id, secret) is None
    assert store.list_keys()[0].revoked and store.has_keys()


def test_signing_key_is_shared_by_every_store_instance(store: Store, db_url: str) -> None:
    key = store.signing_key()
    assert isinstance(key, Ed25519PrivateKey)
    other = Store(db_url)
    try:
        assert other.signing_key().public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    finally:
        other.close()


def test_concurrent_claimers_never_share_a_job(store: Store, db_url: str) -> None:
    import threading

    ids = {submit(store).id for _ in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(worker: str) -> None:
        own = Store(db_url)  # its own engine and connections, as a separate worker process has
        try:
            while (job := own.claim(worker, 30)) is not None:
                with lock:
                    claimed.append(job.id)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(claimed) == sorted(ids)  # every job exactly once


def test_only_one_node_creates_the_first_admin_key(store: Store, db_url: str) -> None:
    other_node = Store(db_url)
    first = store.create_first_admin_key()
    assert first is not None and other_node.create_first_admin_key() is None
    assert store.create_first_admin_key() is None
    (key,) = store.list_keys()
    assert key.admin and key.key_id == first[0]
    other_node.close()


def test_list_jobs_is_one_owners_newest_first_with_inputs(store: Store) -> None:
    first = submit(store, input={"prompt": "one"})
    other = submit(store, owner="bob")
    second = submit(store, endpoint_id="fal-ai/fast-svd-lcm", input={"image_url": "https://x/y.png"})
    third = submit(store, input={"prompt": "three"})
    store.request_cancel(third.id)
    listed = store.list_jobs("alice", limit=10)
    assert [j.id for j in listed] == [third.id, second.id, first.id]
    assert listed[0].state is JobState.CANCELLED and listed[2].input == {"prompt": "one"}
    assert [j.id for j in store.list_jobs("alice", limit=2)] == [third.id, second.id]
    assert [j.id for j in store.list_jobs("alice", limit=10, endpoint_id="fal-ai/fast-svd-lcm")] == [second.id]
    assert [j.id for j in store.list_jobs("bob", limit=10)] == [other.id]
    assert store.list_jobs("carol", limit=10) == []
