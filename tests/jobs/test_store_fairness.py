"""Limits per owner in the store (SQLite + PostgreSQL): fair order between owners at equal priority,
the running limit under concurrent claimers, and the submit rate."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest

from motionserve.jobs.models import ClaimPreference, Job, JobState, Priority, SubmitRate, SubmitRateExceeded
from motionserve.jobs.store import Store

T2V = "fal-ai/fast-animatediff/text-to-video"


def submit(store: Store, owner: str, **kw: Any) -> Job:
    return store.submit(owner=owner, endpoint_id=kw.pop("endpoint_id", T2V), input={"prompt": "p"},
                        base_url="http://127.0.0.1:8000", **kw)


def run_all(store: Store, **claim_kw: Any) -> list[str]:
    """Owners of the jobs in the order one worker runs them (claim, finish, next)."""
    order = []
    while (job := store.claim("w", 30, **claim_kw)) is not None:
        order.append(job.owner)
        assert store.finish(job.id, "w", result={})
    return order


def in_queue_order(store: Store, jobs: list[Job]) -> list[str]:
    """Ids of the still-queued `jobs`, ordered by the queue positions clients are shown."""
    positions = store.queue_positions([j.id for j in jobs])
    assert all(store.queue_position(j) == positions[j.id] for j in jobs if j.id in positions)
    return sorted(positions, key=positions.__getitem__)


@pytest.mark.parametrize("running_first", [False, True], ids=["idle", "one-running"])
def test_one_job_of_a_newcomer_starts_within_two_slots_of_a_heavy_owners_backlog(store: Store, running_first: bool) -> None:
    heavy = [submit(store, "alice") for _ in range(20)]
    if running_first:
        assert store.claim("w", 30).id == heavy[0].id  # type: ignore[union-attr]
    newcomer = submit(store, "bob")
    assert store.queue_position(newcomer) == 1  # shown to the client: one job ahead, not 19
    slots = []
    while (job := store.claim("w", 30)) is not None:
        slots.append(job.id)
    assert slots.index(newcomer.id) <= 1  # in the next two job slots
    assert sorted(slots) == sorted([h.id for h in heavy[running_first:]] + [newcomer.id])


def test_the_newcomer_goes_ahead_under_a_workers_warm_preference_too(store: Store) -> None:
    for _ in range(10):
        submit(store, "alice")
    newcomer = submit(store, "bob")
    prefer = ClaimPreference(warm_endpoints=frozenset({T2V}), max_wait_s=30)
    first_two = [store.claim("w", 30, prefer=prefer).id for _ in range(2)]  # type: ignore[union-attr]
    assert newcomer.id in first_two


def test_three_owners_backlogs_interleave_and_positions_follow_claims(store: Store) -> None:
    queued = [submit(store, owner) for owner in ["alice"] * 6 + ["bob"] * 4 + ["carol"] * 2]
    expected = ["alice", "bob", "carol"] * 2 + ["alice", "bob"] * 2 + ["alice"] * 2
    assert [next(j.owner for j in queued if j.id == i) for i in in_queue_order(store, queued)] == expected
    assert run_all(store) == expected


def test_a_backlog_submitted_while_others_run_is_spread_out_too(store: Store) -> None:
    for _ in range(4):
        submit(store, "alice")
    first = store.claim("w", 30)
    assert first is not None and store.finish(first.id, "w", result={})
    later = [submit(store, "bob") for _ in range(3)]  # bob arrives with a backlog of his own
    assert [j.owner for j in map(store.get, in_queue_order(store, later + [submit(store, "carol")]))] == ["bob", "carol", "bob", "bob"]
    assert run_all(store) == ["alice", "bob", "carol", "alice", "bob", "alice", "bob"]


def test_priority_still_wins_over_fairness(store: Store) -> None:
    for _ in range(5):
        submit(store, "alice")
    submit(store, "bob", priority=Priority.LOW)
    submit(store, "bob")
    submit(store, "carol", priority=Priority.LOW)
    assert run_all(store) == ["alice", "bob", "alice", "alice", "alice", "alice", "bob", "carol"]


def test_a_requeued_job_keeps_its_fair_place(store: Store) -> None:
    a1 = submit(store, "alice")
    for _ in range(3):
        submit(store, "alice")
    submit(store, "bob")
    assert store.claim("w", 30).id == a1.id  # type: ignore[union-attr]
    assert store.release(a1.id, "w")  # its worker stopped: back at the head, not behind bob
    assert store.queue_position(store.get(a1.id)) == 0  # type: ignore[arg-type]
    assert run_all(store) == ["alice", "bob", "alice", "alice", "alice"]


def concurrently(db_url: str, count: int, action: Callable[[Store, int], None]) -> None:
    """`action(store, i)` on `count` threads at once, each with its own Store (as separate nodes have)."""
    stores = [Store(db_url) for _ in range(count)]
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait(30)
            action(stores[i], i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for s in stores:
            s.close()
    assert not errors, errors


def test_concurrent_submits_of_one_owner_on_two_nodes_are_still_spread_out(store: Store, db_url: str) -> None:
    concurrently(db_url, 4, lambda node, _: [submit(node, "alice") for _ in range(5)])
    newcomer = submit(store, "bob")
    assert store.queue_position(newcomer) <= 1
    assert [store.claim("w", 30).id for _ in range(2)].count(newcomer.id) == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("prefer", [None, ClaimPreference(warm_endpoints=frozenset({T2V}))], ids=["plain", "warm-preference"])
def test_running_limit_holds_under_concurrent_claimers_and_the_rest_run_later(store: Store, db_url: str,
                                                                              prefer: ClaimPreference | None) -> None:
    owners = ["alice"] * 8 + ["bob"] * 3 + ["carol"]
    ids = {submit(store, owner).id for owner in owners}
    finished: list[str] = []
    lock = threading.Lock()
    for _ in range(20):  # rounds: 6 claimers race for the queue, then everything running finishes
        claimed: list[Job] = []

        def claimer(node: Store, i: int) -> None:
            while (job := node.claim(f"w{i}", 30, prefer=prefer, max_running_per_owner=2)) is not None:
                with lock:
                    claimed.append(job)

        concurrently(db_url, 6, claimer)
        running = [j.owner for j in claimed]
        assert all(running.count(o) <= 2 for o in set(running)), running
        if not claimed:
            break
        assert {"alice", "bob"} & set(running)  # waiting jobs of owners at the limit are not refused...
        for job in claimed:
            assert store.finish(job.id, job.worker_id, result={})  # type: ignore[arg-type]
            finished.append(job.id)
    assert sorted(finished) == sorted(ids)  # ...they run later, every one of them


def test_running_limit_passes_over_a_full_owner_to_the_next(store: Store) -> None:
    for _ in range(3):
        submit(store, "alice")
    bob = submit(store, "bob", priority=Priority.LOW)
    claims = [store.claim("w", 30, max_running_per_owner=1) for _ in range(3)]
    assert [c.owner if c else None for c in claims] == ["alice", "bob", None]
    assert claims[1].id == bob.id  # type: ignore[union-attr]
    assert store.get(claims[0].id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.claim("w", 30) is not None  # no limit asked: alice's next runs


def test_submit_rate_counts_the_owners_last_window(store: Store, clock) -> None:  # type: ignore[no-untyped-def]
    rate = SubmitRate(3, window_s=60)
    for _ in range(3):
        submit(store, "alice", submit_rate=rate)
        clock.advance(10)
    with pytest.raises(SubmitRateExceeded) as refused:
        submit(store, "alice", submit_rate=rate)
    assert refused.value.retry_after_s == pytest.approx(30)  # the first leaves the window 60 s after it came
    submit(store, "bob", submit_rate=rate)  # another owner's count is its own
    clock.advance(31)
    submit(store, "alice", submit_rate=rate)
    with pytest.raises(SubmitRateExceeded):
        submit(store, "alice", submit_rate=rate)


def test_submit_rate_holds_across_nodes_submitting_at_once(store: Store, db_url: str) -> None:
    rate = SubmitRate(5, window_s=3600)
    accepted: list[str] = []

    def burst(node: Store, _: int) -> None:
        for _ in range(4):
            try:
                accepted.append(submit(node, "alice", submit_rate=rate).id)
            except SubmitRateExceeded:
                pass

    concurrently(db_url, 4, burst)
    assert len(accepted) == 5


def test_a_workers_preference_picks_among_the_head_of_the_queue_only(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorting the whole queue by each worker's taste in every claim does not scale (bench/README.md,
    claim cost): the preference reorders the first PREFERENCE_WINDOW jobs in queue order."""
    import motionserve.jobs.store as store_module

    monkeypatch.setattr(store_module, "PREFERENCE_WINDOW", 2)
    svd = "fal-ai/fast-svd-lcm"
    cold = [submit(store, "alice"), submit(store, "alice")]
    warm = submit(store, "alice", endpoint_id=svd)
    prefer = ClaimPreference(warm_endpoints=frozenset({svd}), max_wait_s=30)
    assert store.claim("w", 30, prefer=prefer).id == cold[0].id  # type: ignore[union-attr]  # warm is third: not yet
    assert store.claim("w", 30, prefer=prefer).id == warm.id  # type: ignore[union-attr]  # now in the window: first
    assert store.claim("w", 30, prefer=prefer, max_running_per_owner=5).id == cold[1].id  # type: ignore[union-attr]


def test_a_job_the_preference_takes_early_does_not_push_newcomers_back(store: Store) -> None:
    svd = "fal-ai/fast-svd-lcm"
    for _ in range(10):
        submit(store, "alice")
    skipped_ahead = submit(store, "alice", endpoint_id=svd)  # alice's 11th: its turn is ten rounds away
    prefer = ClaimPreference(warm_endpoints=frozenset({svd}), max_wait_s=30)
    assert store.claim("w-svd", 30, prefer=prefer).id == skipped_ahead.id  # type: ignore[union-attr]
    newcomer = submit(store, "bob")  # lands at the front, not behind the ten alice's job skipped
    assert store.queue_position(newcomer) <= 2
    assert store.queue_position(submit(store, "carol")) <= 3
