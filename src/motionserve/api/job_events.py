"""Job changes for the event loop: status streams and `/run` waiters wait here instead of polling.

The process's one `ChangeWatcher` (a thread, jobs/changes.py) learns of every change; `JobEvents`
hands each to the loop and wakes the subscriptions of that job, which then read it. A queued job's
position moves whenever any job enters or leaves the queue: rather than every stream of a queued job
reading its position again, `JobEvents` reads the positions of all of them in one query (at most one
in flight, bursts coalesced) and wakes only the streams whose position changed. While the watcher is
not running (it starts with the app), waits fall back to a short timer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

import anyio

from motionserve.jobs.changes import RESYNC, Change, ChangeWatcher
from motionserve.jobs.protocols import JobStore
from motionserve.jobs.store import ChangeKind
from motionserve.metrics import JOB_WAITERS

UNWATCHED_WAIT_S = 0.2  # no watcher running: behave like the old poll
WATCHED_FALLBACK_S = 15.0  # a watcher runs: a slow timer only in case a notification was lost
POSITIONS_COALESCE_S = 0.1  # queue moves within this long cost one position query


class Subscription:
    def __init__(self, job_id: str, watcher: ChangeWatcher) -> None:
        self.job_id = job_id
        self.watch_queue = False  # this job is queued: keep `position` up to date
        self.position: int | None = None  # its queue position, as last read (by its stream or by JobEvents)
        self.needs_read = False  # the job itself changed: its stream must read it again
        self._event = asyncio.Event()
        self._watcher = watcher

    def wake(self, *, needs_read: bool) -> None:
        self.needs_read = self.needs_read or needs_read
        self._event.set()

    @property
    def fallback_s(self) -> float:
        """The longest a waiter should go without reading the store itself."""
        return WATCHED_FALLBACK_S if self._watcher.running.is_set() else UNWATCHED_WAIT_S

    async def wait(self, timeout_s: float) -> bool:
        """Until this job changed (`needs_read`) or its queue position did (`position`), or
        `timeout_s` (at most `fallback_s`); True if woken."""
        try:
            await asyncio.wait_for(self._event.wait(), min(timeout_s, self.fallback_s))
            woken = True
        except TimeoutError:
            woken = False
        self._event.clear()
        return woken

    def take_needs_read(self) -> bool:
        needs_read, self.needs_read = self.needs_read, False
        return needs_read


class JobEvents:
    def __init__(self, watcher: ChangeWatcher, store: JobStore) -> None:
        self.watcher = watcher
        self._store = store
        self._by_job: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._positions_due = False
        self._positions_task: asyncio.Task[None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start receiving the watcher's changes on `loop` (the app's)."""
        self._loop = loop
        self._unsubscribe = self.watcher.subscribe(self._from_watcher)

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._positions_task is not None:
            self._positions_task.cancel()
        self._unsubscribe = self._loop = self._positions_task = None

    @contextmanager
    def subscribe(self, job_id: str) -> Iterator[Subscription]:
        subscription = Subscription(job_id, self.watcher)
        self._by_job[job_id].add(subscription)
        JOB_WAITERS.inc()
        try:
            yield subscription
        finally:
            JOB_WAITERS.dec()
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
        if change.kind == RESYNC:
            for subscribers in self._by_job.values():
                for subscription in subscribers:
                    subscription.wake(needs_read=True)
            return
        for subscription in self._by_job.get(change.job_id, ()):
            subscription.wake(needs_read=True)
        if change.kind in (ChangeKind.QUEUED, ChangeKind.STATE):
            self._refresh_positions_soon()

    # -- queue positions, for all streams at once ------------------------------------------------

    def _queued_subscriptions(self) -> list[Subscription]:
        return [s for subscribers in self._by_job.values() for s in subscribers if s.watch_queue]

    def _refresh_positions_soon(self) -> None:
        self._positions_due = True
        if self._positions_task is None or self._positions_task.done():
            self._positions_task = asyncio.get_running_loop().create_task(self._refresh_positions())

    async def _refresh_positions(self) -> None:
        while self._positions_due:
            self._positions_due = False
            await asyncio.sleep(POSITIONS_COALESCE_S)
            watching = self._queued_subscriptions()
            if not watching:
                continue
            try:
                positions = await anyio.to_thread.run_sync(self._store.queue_positions, {s.job_id for s in watching})
            except Exception:  # the store is away: let the streams look for themselves
                positions = None
            for subscription in watching:
                position = None if positions is None else positions.get(subscription.job_id)
                if position is None:
                    subscription.wake(needs_read=True)  # it left the queue (or we cannot tell)
                elif position != subscription.position:
                    subscription.position = position
                    subscription.wake(needs_read=False)
