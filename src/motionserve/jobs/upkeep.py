"""Upkeep every API node does for the fleet: the chores no single worker can be trusted with.

- start deadlines (X-Fal-Request-Timeout) expire on time even while every worker is busy;
- jobs whose worker vanished (lease expired, by the database's clock) go back to the queue, even
  when no worker is idle to notice;
- finished jobs, their logs and webhook rows, expired files and long-gone workers are deleted after
  their retention period.
Every chore is safe to run on any number of nodes at once (guarded transitions, SKIP LOCKED).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from motionserve.config import Settings
from motionserve.database import log_failure

log = logging.getLogger(__name__)

WORKER_ROWS_KEPT_S = 24 * 3600.0  # a stopped or vanished worker stays visible to admins this long
SLOW_CHORE_S = 600.0


class UpkeepStore(Protocol):
    def expire_start_deadlines(self) -> int: ...

    def reclaim_expired(self, max_attempts: int) -> int: ...

    def delete_finished(self, older_than_s: float) -> int: ...

    def prune_workers(self, older_than_s: float) -> int: ...


class ExpiringFiles(Protocol):
    def delete_expired(self) -> int: ...


@dataclass
class Chore:
    name: str
    every_s: float
    run: Callable[[], int]
    next_at: float = 0.0


class Upkeep:
    def __init__(self, chores: list[Chore]) -> None:
        self.chores = chores

    @classmethod
    def for_node(cls, settings: Settings, store: UpkeepStore, files: ExpiringFiles) -> "Upkeep":
        return cls([
            Chore("expire start deadlines", 1.0, store.expire_start_deadlines),
            Chore("requeue jobs of vanished workers", max(1.0, settings.lease_s / 3),
                  lambda: store.reclaim_expired(settings.max_attempts)),
            Chore("delete finished jobs past retention", SLOW_CHORE_S,
                  lambda: store.delete_finished(settings.job_retention_s)),
            Chore("delete expired files", SLOW_CHORE_S, files.delete_expired),
            Chore("forget long-gone workers", SLOW_CHORE_S, lambda: store.prune_workers(WORKER_ROWS_KEPT_S)),
        ])

    def run_due(self, now: float) -> None:
        for chore in self.chores:
            if now < chore.next_at:
                continue
            chore.next_at = now + chore.every_s
            try:
                done = chore.run()
            except Exception:  # a store or disk hiccup must not end the thread
                log_failure(log, "upkeep: %s failed; retrying later", chore.name)
                continue
            if done:
                log.info("upkeep: %s: %d", chore.name, done)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_due(time.monotonic())
            stop.wait(max(0.05, min(c.next_at for c in self.chores) - time.monotonic()))
