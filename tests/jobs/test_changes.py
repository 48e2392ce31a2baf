"""The change watcher: one per process, on SQLite (one poll) and PostgreSQL (LISTEN/NOTIFY)."""

from __future__ import annotations

import queue
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from motionserve.jobs.changes import RESYNC, Change, ChangeWatcher
from motionserve.jobs.store import ChangeKind, Store

BASE = "http://127.0.0.1:8000"


@contextmanager
def _watching(db_url: str) -> Iterator[tuple[Store, ChangeWatcher, "queue.Queue[Change]"]]:
    """A store, its change watcher running in a thread, and what the watcher publishes."""
    store = Store(db_url)  # the database's own clock: the watcher compares change times
    store.create_all()
    watcher = ChangeWatcher(store)
    seen: queue.Queue[Change] = queue.Queue()
    watcher.subscribe(seen.put)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        assert _next(seen, lambda c: c.kind == RESYNC)  # it says when it starts listening
        yield store, watcher, seen
    finally:
        stop.set()
        thread.join(10)
        store.close()


@pytest.fixture
def watched(db_url: str) -> Iterator[tuple[Store, "queue.Queue[Change]"]]:
    with _watching(db_url) as (store, _, seen):
        yield store, seen


def _next(seen: "queue.Queue[Change]", wanted, timeout: float = 5.0) -> Change:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            change = seen.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if wanted(change):
            return change
    raise AssertionError("no such change arrived")


def test_every_kind_of_change_reaches_subscribers(watched: tuple[Store, "queue.Queue[Change]"]) -> None:
    store, seen = watched
    job = store.submit(owner="a", endpoint_id="e", input={}, base_url=BASE)
    _next(seen, lambda c: c == Change(ChangeKind.QUEUED, job.id))
    assert store.claim("w", 30) is not None
    _next(seen, lambda c: c == Change(ChangeKind.STATE, job.id))
    store.append_logs(job.id, [("INFO", "step 1/2")])
    _next(seen, lambda c: c == Change(ChangeKind.LOGS, job.id))
    assert store.release(job.id, "w")  # back in the queue: idle workers must hear of it
    _next(seen, lambda c: c == Change(ChangeKind.QUEUED, job.id))
    store.request_cancel(job.id)
    _next(seen, lambda c: c == Change(ChangeKind.STATE, job.id))


def test_a_change_is_published_once(watched: tuple[Store, "queue.Queue[Change]"]) -> None:
    store, seen = watched
    job = store.submit(owner="a", endpoint_id="e", input={}, base_url=BASE)
    _next(seen, lambda c: c.job_id == job.id)
    time.sleep(1.5)  # the SQLite poll looks back a second: it must not repeat what it sent
    repeats = []
    while not seen.empty():
        repeats.append(seen.get())
    assert [c for c in repeats if c.job_id == job.id] == []


def test_a_submit_made_in_this_process_is_heard_at_once_and_once(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # SQLite, one host: the API's submit tells the in-process workers itself instead of leaving them to
    # the next poll (up to POLL_INTERVAL_S later), and the poll does not repeat it.
    with _watching(f"sqlite:///{tmp_path / 'jobs.db'}") as (store, watcher, seen):
        job = store.submit(owner="a", endpoint_id="e", input={}, base_url=BASE)
        watcher.made_here(Change(ChangeKind.QUEUED, job.id))
        assert seen.get_nowait() == Change(ChangeKind.QUEUED, job.id)  # before any poll could have run
        time.sleep(1.5)  # the poll has seen the new row, and looks back a second
        repeats = [seen.get() for _ in range(seen.qsize())]
        assert [c for c in repeats if c.job_id == job.id] == []

        # A job claimed before the poll saw it queued: the poll never matches that QUEUED, and the
        # watcher must not keep it for ever (one per request on a busy server).
        claimed = store.submit(owner="a", endpoint_id="e", input={}, base_url=BASE)
        watcher.made_here(Change(ChangeKind.QUEUED, claimed.id))
        assert [store.claim("w", 30) is not None for _ in range(2)] == [True, True]  # `job`, then this one
        monkeypatch.setattr("motionserve.jobs.changes.MADE_HERE_KEPT_S", 0.0)
        _next(seen, lambda c: c == Change(ChangeKind.STATE, claimed.id))
        time.sleep(0.5)  # another poll or two
        assert watcher._made_here == {}
