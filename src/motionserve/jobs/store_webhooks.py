"""The persisted webhook delivery queue (mixed into `Store`).

Rows are created by `Store._transition` when a job with a webhook becomes terminal. Dispatchers in
several processes may poll the same table, so `due_webhooks` claims what it returns by pushing
its next attempt into the future; a dispatcher that dies mid-delivery thus only delays a retry.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import Connection, insert, select, update

from motionserve.jobs.models import Job, PendingWebhook
from motionserve.database import webhooks

MAX_WEBHOOK_ATTEMPTS = 10
IN_FLIGHT_LEASE_S = 120.0  # > the 15 s delivery timeout, so a live dispatcher finishes first


class WebhookQueueMixin:
    if TYPE_CHECKING:
        _write: Callable[[], AbstractContextManager[Connection]]
        _read: Callable[[], AbstractContextManager[Connection]]
        _clock: Callable[[], float]

        def _locking(self, stmt: Any, *, skip_locked: bool = False) -> Any: ...

    def _enqueue_webhook(self, conn: Connection, job: Job, body: bytes) -> None:
        now = self._clock()
        conn.execute(
            insert(webhooks).values(
                job_id=job.id, owner=job.owner, url=job.webhook_url, body=body, state="pending",
                attempts=0, next_attempt_at=now, created_at=now,
            )
        )

    def due_webhooks(self, now: float | None = None, limit: int = 20) -> list[PendingWebhook]:
        """Pending deliveries whose time has come, claimed for this caller for a short while."""
        now = self._clock() if now is None else now
        with self._write() as conn:
            query = (
                select(webhooks)
                .where(webhooks.c.state == "pending", webhooks.c.next_attempt_at <= now)
                .order_by(webhooks.c.next_attempt_at, webhooks.c.id)
                .limit(limit)
            )
            rows = conn.execute(self._locking(query, skip_locked=True)).all()
            if rows:
                conn.execute(
                    update(webhooks)
                    .where(webhooks.c.id.in_([r.id for r in rows]))
                    .values(next_attempt_at=now + IN_FLIGHT_LEASE_S)
                )
        return [
            PendingWebhook(
                id=r.id, job_id=r.job_id, url=r.url, body=bytes(r.body), attempts=r.attempts,
                next_attempt_at=r.next_attempt_at, owner=r.owner,
            )
            for r in rows
        ]

    def record_webhook_attempt(
        self, webhook_id: int, delivered: bool, error: str | None = None, next_attempt_at: float | None = None
    ) -> None:
        """Count an attempt. Without `next_attempt_at`, or after the 10th failure, the delivery is
        given up (state `failed`, kept for inspection with its last error)."""
        with self._write() as conn:
            row = conn.execute(select(webhooks.c.attempts).where(webhooks.c.id == webhook_id)).first()
            if row is None:
                return
            attempts = row.attempts + 1
            values: dict[str, Any] = {"attempts": attempts, "last_error": error}
            if delivered:
                values.update(state="delivered", delivered_at=self._clock(), last_error=None)
            elif next_attempt_at is None or attempts >= MAX_WEBHOOK_ATTEMPTS:
                values.update(state="failed")
            else:
                values.update(state="pending", next_attempt_at=next_attempt_at)
            conn.execute(update(webhooks).where(webhooks.c.id == webhook_id).values(**values))

    def webhook_deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """Delivery records of a job (state, attempts, last_error...), for inspection and tests."""
        with self._read() as conn:
            rows = conn.execute(select(webhooks).where(webhooks.c.job_id == job_id).order_by(webhooks.c.id)).all()
        return [
            {k: (bytes(v) if k == "body" else v) for k, v in r._mapping.items()}
            for r in rows
        ]
