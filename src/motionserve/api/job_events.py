"""Job changes for the event loop: status streams and `/run` waiters wait here instead of polling.

The process's one `ChangeWatcher` (a thread, jobs/changes.py) learns of every change; `JobEvents`
hands each to the loop, which wakes the subscriptions of that job. A queued job's position moves
when any job enters or leaves the queue, so subscriptions of queued jobs also wake on those.
While the watcher is not running (it starts with the app), waits fall back to a short timer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

from motionserve.jobs.changes import RESYNC, Change, ChangeWatcher
from motionserve.jobs.store import ChangeKind

UNWATCHED_WAIT_S = 0.2  # no watcher running: behave like the old poll
WATCHED_FALLBACK_S = 5.0  # a watcher runs: a slow timer only in case a notification was lost


class Subscription:
    def __init__(self, job_id: str, watcher: ChangeWatcher) -> None:
        self.job_id = job_id
        self.watch_queue = False  # also wake when the queue moves (this job is queued)
        self._event = asyncio.Event()
        self._watcher = watcher

    def wake(self) -> None:
        self._event.set()

    @property
    def fallback_s(self) -> float:
        """The longest a waiter should go without reading the store itself."""
        return WATCHED_FALLBACK_S if self._watcher.running.is_set() else UNWATCHED_WAIT_S

    async def wait(self, timeout_s: float) -> bool:
        """Until this job (or, with `watch_queue`, the queue) changed, or `timeout_s` (at most
        `fallback_s`); True if woken."""
        try:
            await asyncio.wait_for(self._event.wait(), min(timeout_s, self.fallback_s))
            woken = True
        except TimeoutError:
            woken = False
        self._event.clear()
        return woken


class JobEvents:
    def __init__(self, watcher: ChangeWatcher) -> None:
        self.watcher = watcher
        self._by_job: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start receiving the watcher's changes on `loop` (the app's)."""
        self._loop = loop
        self._unsubscribe = self.watcher.subscribe(self._from_watcher)

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._unsubscribe = self._loop = None

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        subscription = Subscription(job_id, self.watcher)
        self._by_job[job_id].add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._by_job.get(job_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._by_job[job_id]

    def _from_watcher(self, change: Change) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._dispatch, change)

    def _dispatch(self, change: Change) -> None:
        queue_moved = change.kind in (ChangeKind.QUEUED, ChangeKind.STATE, RESYNC)
        for job_id, subscribers in self._by_job.items():
            for subscription in subscribers:
                if job_id == change.job_id or change.kind == RESYNC or (queue_moved and subscription.watch_queue):
                    subscription.wake()
