"""The worker registry (mixed into `Store`): every worker supervisor of the fleet, local or remote.

A supervisor registers when it starts, refreshes its row while it lives (state, current job, warm
pipelines) and marks it stopped when it ends. `last_seen` is the database's clock, so any API node
can tell a live worker from a vanished one without trusting the workers' clocks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Callable

from sqlalchemy import Connection, delete, insert, select, update

from motionserve.database import workers
from motionserve.jobs.models import WorkerRecord

if TYPE_CHECKING:
    _Tx = Callable[[], AbstractContextManager[Connection]]

STOPPED = "stopped"


class WorkerRegistryMixin:
    if TYPE_CHECKING:
        _write: _Tx
        _read: _Tx

        def _now(self, conn: Connection) -> float: ...

    def worker_seen(self, record: WorkerRecord) -> None:
        """Create or refresh this worker's row (its `started_at`/`last_seen` are set here)."""
        values = {
            "host": record.host, "pid": record.pid, "device": record.device, "version": record.version,
            "state": record.state, "warm": sorted(record.warm), "current_job": record.current_job,
        }
        with self._write() as conn:
            now = self._now(conn)
            refreshed = conn.execute(
                update(workers).where(workers.c.id == record.id).values(**values, last_seen=now)
            ).rowcount
            if not refreshed:  # first beat, or its row was pruned while it was unreachable
                conn.execute(insert(workers).values(id=record.id, **values, started_at=now, last_seen=now))

    def worker_stopped(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(state=STOPPED, current_job=None, last_seen=self._now(conn))
            )

    def live_workers(self, seen_within_s: float) -> list[WorkerRecord]:
        """Workers that are not stopped and were seen within `seen_within_s` (database clock)."""
        with self._read() as conn:
            cutoff = self._now(conn) - seen_within_s
            rows = conn.execute(
                select(workers)
                .where(workers.c.state != STOPPED, workers.c.last_seen >= cutoff)
                .order_by(workers.c.host, workers.c.device, workers.c.id)
            ).all()
        return [
            WorkerRecord(
                id=r.id, host=r.host, pid=r.pid, device=r.device, version=r.version, state=r.state,
                warm=tuple(r.warm or ()), current_job=r.current_job, started_at=r.started_at, last_seen=r.last_seen,
            )
            for r in rows
        ]

    def prune_workers(self, older_than_s: float) -> int:
        """Forget workers stopped or unseen for `older_than_s`."""
        with self._write() as conn:
            cutoff = self._now(conn) - older_than_s
            return conn.execute(delete(workers).where(workers.c.last_seen < cutoff)).rowcount
