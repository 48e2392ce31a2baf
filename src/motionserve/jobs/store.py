"""The durable job store: the only thing the API process and the workers share.

Every status change goes through `Store._transition`, which updates the row guarded by the state
(and, for workers, the lease holder) it expects, and in the same transaction does what goes with
the change: the webhook delivery row when the job becomes terminal. A change whose guard no longer
holds simply does not happen, so racing actors (a cancel and a claim, two workers, a reclaimer
and a slow heartbeat) can never produce an illegal transition or resurrect a finished job.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence

from sqlalchemy import Connection, Double, Engine, Integer, String, and_, any_, bindparam, case, cast, delete, extract, func, insert, literal, or_, select, update
from sqlalchemy.sql import ColumnElement

from motionserve import database as schema
from motionserve.database import db_now, job_logs, jobs, webhooks
from motionserve.jobs.models import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    CancelOutcome,
    ClaimPreference,
    Job,
    JobState,
    LogLine,
    SubmitRate,
    SubmitRateExceeded,
    error_dict,
)
from motionserve.jobs.store_keys import KeysMixin
from motionserve.jobs.store_webhooks import WebhookQueueMixin
from motionserve.jobs.store_workers import WorkerRegistryMixin
from motionserve.jobs.webhook_payload import webhook_body
from motionserve.migrations import upgrade

CANCELLED_ERROR = error_dict(499, "Request was cancelled", "client_cancelled")
# fal marks a start timeout the client asked for as type "user" (X-Fal-Request-Timeout-Type).
START_TIMEOUT_ERROR = error_dict(504, "Request timed out", "request_timeout", timeout_type="user")
# PostgreSQL NOTIFY channel: "<kind> <job id>", kind one of the ChangeKind values below.
NOTIFY_CHANNEL = "motionserve_jobs"
# Two-key PostgreSQL advisory locks (namespace, hashtext(owner)): one owner's submits take turns (so
# two API nodes never give two of its jobs the same fair_seq, nor let its submit rate overshoot), and
# so do claims of one owner's jobs while a per-owner running limit is on.
SUBMIT_LOCKS, CLAIM_LOCKS = 0x6D730001, 0x6D730002
# Status reads never load the stored input: it can be a 64 MB data URI.
_STATUS_COLUMNS = [c for c in jobs.c if c.name != "input"]


class ChangeKind:
    """What a change notification says happened to a job."""

    QUEUED = "queued"  # it entered the queue (submitted, or put back): wake idle workers
    STATE = "state"  # any other status change, or a cancel request
    LOGS = "logs"  # new log lines


NOTIFY_CHANGE_KINDS = frozenset({ChangeKind.QUEUED, ChangeKind.STATE, ChangeKind.LOGS})


@dataclass(frozen=True)
class RecentChanges:
    """What a polling change watcher learned since its last look (SQLite has no NOTIFY)."""

    changed: list[tuple[str, str, float]]  # (job id, state, changed_at) of jobs whose row changed
    with_logs: list[str]  # job ids with new log lines
    changed_at: float  # pass back as `since` next time
    log_id: int  # pass back as `since_log_id` next time


class Store(KeysMixin, WebhookQueueMixin, WorkerRegistryMixin):
    """Jobs, logs, pending webhooks, API keys, the webhook signing key and the worker registry, in
    SQLite or PostgreSQL.

    Leases, deadlines and worker liveness are timed by the database's clock, so the hosts of a fleet
    need not agree on the time. `clock` (epoch seconds) replaces it in tests, to expire leases and
    deadlines without sleeping.
    """

    def __init__(self, url: str, *, clock: Callable[[], float] | None = None) -> None:
        self.url = schema.normalize_url(url)
        self._engine = schema.make_engine(self.url)
        self._is_postgres = self._engine.dialect.name == "postgresql"
        self._test_clock = clock
        self._clock: Callable[[], float] = clock or time.time  # for timestamps nobody compares across hosts
        self._signing_key_cache: Any = None
        # Built once: constructing the fair_seq subqueries costs more Python than running them.
        self._insert_job = insert(jobs).values(fair_seq=_fair_seq(self._is_postgres))

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def is_postgres(self) -> bool:
        return self._is_postgres

    def _now(self, conn: Connection) -> float:
        return self._test_clock() if self._test_clock is not None else db_now(conn)

    def _now_sql(self) -> ColumnElement[float]:
        """The same clock as `_now`, evaluated inside the statement that uses it: no round trip of
        its own on PostgreSQL (`statement_timestamp()`: one value for the whole statement)."""
        if self._is_postgres and self._test_clock is None:
            return cast(extract("epoch", func.statement_timestamp()), Double)
        return literal(self._clock(), Double)

    def _notify(self, conn: Connection, kind: str, job_id: str) -> None:
        """Tell every LISTENing node (PostgreSQL) about a change; delivered when the transaction commits."""
        if self._is_postgres:
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, f"{kind} {job_id}")))

    def create_all(self) -> None:
        """Bring the database to the newest schema: the same migrations a server runs on start."""
        upgrade(self.url)

    def close(self) -> None:
        self._engine.dispose()

    # -- transactions -----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn = conn.execution_options(**{schema.WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            with conn.begin():
                yield conn

    def _locking(self, stmt: Any, *, skip_locked: bool = False) -> Any:
        """Row locks on PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes all writers."""
        return stmt.with_for_update(skip_locked=skip_locked) if self._is_postgres else stmt

    # -- the one place a job's status changes -------------------------------------------------

    def _transition(
        self,
        conn: Connection,
        job_id: str,
        expected: JobState | Collection[JobState],
        new: JobState,
        *,
        values: dict[str, Any] | None = None,
        guards: Sequence[ColumnElement[bool]] = (),
        with_input: bool = False,
    ) -> Job | None:
        """Move `job_id` from one of `expected` to `new`: the job as it now is, or None (nothing
        changed) if it was not there. Its `input` only `with_input`.

        One statement, `UPDATE ... RETURNING`, timed by the database clock inside it (workers claim
        and finish many jobs a second: every round trip counts). On PostgreSQL the NOTIFY rides in
        the RETURNING list, so it is sent exactly when the row changed.
        """
        expected_set = {expected} if isinstance(expected, JobState) else set(expected)
        illegal = [e for e in expected_set if new not in ALLOWED_TRANSITIONS[e]]
        if illegal:
            raise ValueError(f"illegal job transition {[e.value for e in illegal]} -> {new.value}")
        now = self._now_sql()
        changes: dict[str, Any] = {"state": new.value, "changed_at": now, **(values or {})}
        if new.is_terminal:
            changes.setdefault("finished_at", now)
            changes["lease_expires_at"] = None
        returning: list[Any] = list(jobs.c) if with_input else list(_STATUS_COLUMNS)
        if self._is_postgres:
            kind = ChangeKind.QUEUED if new is JobState.QUEUED else ChangeKind.STATE
            returning.append(func.pg_notify(NOTIFY_CHANNEL, f"{kind} {job_id}").label("notified"))
        stmt = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.state.in_([e.value for e in expected_set]), *guards)
            .values(**changes)
            .returning(*returning)
        )
        row = conn.execute(stmt).first()
        if row is None:
            return None
        job = row_to_job(row)
        if new.is_terminal and job.webhook_url:
            self._enqueue_webhook(conn, job, webhook_body(job))
        return job

    # -- API side ---------------------------------------------------------------------------

    def submit(
        self,
        *,
        owner: str,
        endpoint_id: str,
        input: dict[str, Any],
        priority: int = 0,
        start_timeout_s: float | None = None,
        webhook_url: str | None = None,
        base_url: str,
        file_retention_s: int | None = None,
        runner_hint: str | None = None,
        no_retry: bool = False,
        submit_rate: SubmitRate | None = None,
    ) -> Job:
        """Queue a job. `start_timeout_s`: fail it (504) if no worker started it within that time.
        `submit_rate`: raise `SubmitRateExceeded` instead if the owner already sent that many."""
        job_id = str(uuid.uuid4())
        with self._write() as conn:
            if self._is_postgres:
                conn.execute(_SUBMIT_LOCK, {"owner": owner})
            now = self._now(conn)
            if submit_rate is not None:
                self._check_submit_rate(conn, owner, submit_rate, now)
            conn.execute(
                self._insert_job,
                dict(
                    id=job_id,
                    owner=owner,
                    endpoint_id=endpoint_id,
                    input=input,
                    state=JobState.QUEUED.value,
                    priority=priority,
                    created_at=now,
                    changed_at=now,
                    start_deadline=now + start_timeout_s if start_timeout_s is not None else None,
                    attempts=0,
                    cancel_requested=False,
                    webhook_url=webhook_url,
                    base_url=base_url,
                    file_retention_s=file_retention_s,
                    runner_hint=runner_hint,
                    no_retry=no_retry,
                    fair_owner=owner,
                    fair_priority=priority,
                ),
            )
            self._notify(conn, ChangeKind.QUEUED, job_id)
            job = self._get(conn, job_id, with_input=False)
        assert job is not None
        return job

    def _check_submit_rate(self, conn: Connection, owner: str, rate: SubmitRate, now: float) -> None:
        """Raise `SubmitRateExceeded` if `owner`'s `rate.count`-th newest job is younger than the window.
        Reads at most `rate.count` entries of ix_jobs_owner, whatever the owner's history; every node
        counts the same rows, under the owner's submit lock on PostgreSQL."""
        oldest_in_window = conn.execute(
            select(jobs.c.created_at).where(jobs.c.owner == owner).order_by(jobs.c.seq.desc()).offset(rate.count - 1).limit(1)
        ).scalar()
        if oldest_in_window is not None and oldest_in_window > now - rate.window_s:
            raise SubmitRateExceeded(rate, oldest_in_window + rate.window_s - now)

    def get(self, job_id: str, *, with_input: bool = False) -> Job | None:
        """The job; its `input` only when asked for (status reads never need it)."""
        with self._read() as conn:
            return self._get(conn, job_id, with_input=with_input)

    def _exists(self, *conditions: ColumnElement[bool]) -> bool:
        """A lock-free read (WAL readers never wait for writers) to skip pointless write transactions."""
        with self._read() as conn:
            return conn.execute(select(jobs.c.seq).where(*conditions).limit(1)).first() is not None

    def _get(self, conn: Connection, job_id: str, *, with_input: bool = True) -> Job | None:
        columns = list(jobs.c) if with_input else _STATUS_COLUMNS
        row = conn.execute(select(*columns).where(jobs.c.id == job_id)).first()
        return row_to_job(row) if row is not None else None

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before this one (the claim's order: priority, fair_seq, submit
        order; a worker's warm preference aside); 0 if not queued."""
        with self._read() as conn:
            me = conn.execute(
                select(jobs.c.seq, jobs.c.priority, jobs.c.fair_seq, jobs.c.state).where(jobs.c.id == job.id)
            ).first()
            if me is None or me.state != JobState.QUEUED.value:
                return 0
            ahead = or_(
                jobs.c.priority < me.priority,
                and_(jobs.c.priority == me.priority,
                     or_(jobs.c.fair_seq < me.fair_seq, and_(jobs.c.fair_seq == me.fair_seq, jobs.c.seq < me.seq))),
            )
            count = conn.execute(
                select(func.count()).select_from(jobs).where(jobs.c.state == JobState.QUEUED.value, ahead)
            ).scalar_one()
        return int(count)

    def queue_length(self, endpoint_id: str) -> int:
        """How many requests of `endpoint_id` wait in the queue."""
        with self._read() as conn:
            return int(conn.execute(
                select(func.count()).select_from(jobs).where(jobs.c.state == JobState.QUEUED.value, jobs.c.endpoint_id == endpoint_id)
            ).scalar_one())

    def queue_positions(self, job_ids: Collection[str]) -> dict[str, int]:
        """`queue_position` of many jobs in one query: what one node's status streams need after the
        queue moved. Jobs no longer queued are absent from the answer."""
        if not job_ids:
            return {}
        ranked = (
            select(jobs.c.id, (func.row_number().over(order_by=_QUEUE_ORDER) - 1).label("position"))
            .where(jobs.c.state == JobState.QUEUED.value)
            .subquery()
        )
        with self._read() as conn:
            rows = conn.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(list(job_ids)))).all()
        return {r.id: int(r.position) for r in rows}

    def logs(self, job_id: str, after_seq: int = 0) -> list[LogLine]:
        with self._read() as conn:
            rows = conn.execute(
                select(job_logs.c.seq, job_logs.c.timestamp, job_logs.c.level, job_logs.c.message)
                .where(job_logs.c.job_id == job_id, job_logs.c.seq > after_seq)
                .order_by(job_logs.c.seq)
            ).all()
        return [LogLine(seq=r.seq, timestamp=r.timestamp, level=r.level, message=r.message) for r in rows]

    def list_jobs(self, owner: str, *, limit: int, endpoint_id: str | None = None) -> list[Job]:
        """`owner`'s most recent jobs, newest first, with their input (for the playground's history,
        which re-runs them): at most `limit`, of `endpoint_id` only when given."""
        query = select(*jobs.c).where(jobs.c.owner == owner)
        if endpoint_id is not None:
            query = query.where(jobs.c.endpoint_id == endpoint_id)
        with self._read() as conn:
            rows = conn.execute(query.order_by(jobs.c.seq.desc()).limit(limit)).all()
        return [row_to_job(r) for r in rows]

    def request_cancel(self, job_id: str) -> CancelOutcome | None:
        """Cancel a queued job now, or flag a running one for its worker; None if there is no such job."""
        with self._write() as conn:
            row = conn.execute(self._locking(select(jobs.c.state).where(jobs.c.id == job_id))).first()
            if row is None:
                return None
            state = JobState(row.state)
            if state is JobState.QUEUED:
                cancelled = self._transition(conn, job_id, JobState.QUEUED, JobState.CANCELLED, values={"error": CANCELLED_ERROR})
                if cancelled is not None:
                    return CancelOutcome.CANCELLED
            elif state is JobState.RUNNING:
                flagged = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value)
                    .values(cancel_requested=True, changed_at=self._now(conn))
                ).rowcount
                if flagged:
                    self._notify(conn, ChangeKind.STATE, job_id)
                    return CancelOutcome.REQUESTED
            return CancelOutcome.ALREADY_COMPLETED

    # -- worker side ------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        lease_s: float,
        endpoint_ids: Iterable[str] | None = None,
        prefer: ClaimPreference | None = None,
        max_running_per_owner: int = 0,
    ) -> Job | None:
        """Take the next queued job, if any: by priority, then (with `prefer`) what this worker would
        rather run, then fair order between owners (`_fair_seq`), then submit order. A job found
        there past its start deadline is failed instead and the next one taken, so none starts late;
        `expire_start_deadlines` (every API node's upkeep, every second) fails the rest without a
        scan of the queue in every claim. `max_running_per_owner` (0: none): owners with that many
        jobs running are passed over; their jobs wait."""
        if not self._is_postgres and not self._exists(jobs.c.state == JobState.QUEUED.value):
            return None  # SQLite: do not take the database-wide write lock for nothing
        limit = OwnerLimit(max_running_per_owner) if max_running_per_owner > 0 else None
        with self._write() as conn:
            while True:
                candidate = conn.execute(self._next_queued(endpoint_ids, prefer, limit)).first()
                if candidate is None:
                    return None
                if candidate.late:
                    self._transition(conn, candidate.id, JobState.QUEUED, JobState.FAILED, values={"error": START_TIMEOUT_ERROR})
                    continue
                if limit is not None and self._is_postgres and not self._owner_has_room(conn, candidate.owner, limit):
                    continue
                now = self._now_sql()
                return self._transition(
                    conn,
                    candidate.id,
                    JobState.QUEUED,
                    JobState.RUNNING,
                    values={
                        "worker_id": worker_id,
                        "lease_expires_at": now + lease_s,
                        "attempts": jobs.c.attempts + 1,
                        "started_at": now,
                        "preview": None,  # a previous attempt's preview is not this run's
                        **({"fair_seq": self._head_fair_seq(endpoint_ids, limit)} if prefer is not None else {}),
                    },
                    with_input=True,
                )

    def _head_fair_seq(self, endpoint_ids: Iterable[str] | None, limit: OwnerLimit | None) -> ColumnElement[int]:
        """A job the preference took ahead of its turn runs with the fair_seq of the head of what
        this claimer could take: the virtual time new jobs are placed at (`_fair_seq`: the newest
        running job's) must not jump ahead with it, or a newcomer would land behind the jobs it
        skipped. The head at the job's priority, as in the claim (so a job no free worker serves,
        stuck at the front, does not hold virtual time back either); one index probe."""
        head = jobs.alias("fair_head")
        head_seq = select(func.min(head.c.fair_seq)).where(
            *_claimable(head, endpoint_ids, limit), head.c.priority == jobs.c.priority
        ).scalar_subquery()
        least = func.least if self._is_postgres else func.min  # SQLite's min() of several arguments
        return least(jobs.c.fair_seq, func.coalesce(head_seq, jobs.c.fair_seq))

    def _next_queued(self, endpoint_ids: Iterable[str] | None, prefer: ClaimPreference | None, limit: OwnerLimit | None) -> Any:
        """The id and owner of the queued job `claim` takes next, locked (skipping rows other
        claimers hold), and whether it is past its start deadline."""
        now = self._now_sql()
        query = select(jobs.c.id, jobs.c.owner, (jobs.c.start_deadline < now).label("late"))
        if prefer is None:
            query = query.where(*_claimable(jobs, endpoint_ids, limit)).order_by(*_QUEUE_ORDER)
        else:
            # The preference reorders the head of the queue, not all of it: ordering every queued
            # job by it is a sort of the whole queue in every claim (~70 ms at 12 000 queued), the
            # head an index range whose rows are then looked up by primary key.
            head = jobs.alias("head")
            window = (
                select(head.c.seq).where(*_claimable(head, endpoint_ids, limit))
                .order_by(head.c.priority, head.c.fair_seq, head.c.seq).limit(PREFERENCE_WINDOW)
            )
            if self._is_postgres:
                # `= ANY(ARRAY(...))`: `IN (...)` would be a hash join over the whole table. The state
                # again: PostgreSQL re-checks it on a row a concurrent claim took meanwhile, and skips it.
                in_window = and_(jobs.c.seq == any_(func.array(window.scalar_subquery())), jobs.c.state == JobState.QUEUED.value)
            else:
                in_window = jobs.c.seq.in_(window)  # one writer at a time: the window is still all queued
            query = query.where(in_window).order_by(*_claim_order(prefer, now))
        return self._locking(query.limit(1), skip_locked=True)

    def _owner_has_room(self, conn: Connection, owner: str, limit: OwnerLimit) -> bool:
        """PostgreSQL: whether `owner` may start one more job, checked under its claim lock (claimers
        on other nodes that found the same room commit one at a time, so none overshoots). The
        first lock of a claim is waited for; later ones only tried (holding one while waiting for
        another could deadlock two claimers): a busy owner is passed over this time, and an owner
        found full is too."""
        lock = func.pg_try_advisory_xact_lock if limit.holds_lock else func.pg_advisory_xact_lock
        got = conn.execute(select(lock(CLAIM_LOCKS, func.hashtext(owner)))).scalar()
        if limit.holds_lock and not got:
            limit.passed_over.add(owner)
            return False
        limit.holds_lock = True
        running = conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.owner == owner, jobs.c.state == JobState.RUNNING.value)
        ).scalar_one()
        if running >= limit.max_running:
            limit.passed_over.add(owner)
            return False
        return True

    def expire_start_deadlines(self) -> int:
        """Fail queued jobs whose start deadline passed, even while every worker is busy."""
        if not self._exists(jobs.c.state == JobState.QUEUED.value, jobs.c.start_deadline.is_not(None)):
            return 0  # polled every second: do not take the write lock for nothing
        with self._write() as conn:
            return self._expire_start_deadlines(conn, self._now(conn))

    def _expire_start_deadlines(self, conn: Connection, now: float) -> int:
        query = select(jobs.c.id).where(
            jobs.c.state == JobState.QUEUED.value, jobs.c.start_deadline.is_not(None), jobs.c.start_deadline < now
        )
        expired = 0
        for job_id in conn.execute(self._locking(query, skip_locked=True)).scalars().all():
            failed = self._transition(conn, job_id, JobState.QUEUED, JobState.FAILED, values={"error": START_TIMEOUT_ERROR})
            expired += failed is not None
        return expired

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> Job | None:
        """Extend the lease; None when this worker no longer holds the job. Carries `cancel_requested`."""
        with self._write() as conn:
            renewed = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value, jobs.c.worker_id == worker_id)
                .values(lease_expires_at=self._now(conn) + lease_s)
            ).rowcount
            return self._get(conn, job_id, with_input=False) if renewed else None

    def append_logs(self, job_id: str, lines: Sequence[tuple[Any, ...]]) -> None:
        """Add `(level, message)` or `(level, message, timestamp)` lines, numbered after the last one."""
        if not lines:
            return
        with self._write() as conn:
            # Lock the job row so two appenders on PostgreSQL cannot pick the same next seq.
            if conn.execute(self._locking(select(jobs.c.id).where(jobs.c.id == job_id))).first() is None:
                return
            last = conn.execute(select(func.max(job_logs.c.seq)).where(job_logs.c.job_id == job_id)).scalar() or 0
            now = self._now(conn)
            rows = []
            for offset, line in enumerate(lines, start=1):
                level, message = str(line[0]), str(line[1])
                timestamp = float(line[2]) if len(line) > 2 and line[2] is not None else now
                rows.append({"job_id": job_id, "seq": last + offset, "timestamp": timestamp, "level": level, "message": message})
            conn.execute(insert(job_logs), rows)
            self._notify(conn, ChangeKind.LOGS, job_id)

    def set_preview(self, job_id: str, worker_id: str, preview: dict[str, Any]) -> bool:
        """Show `preview` (`{"url", "step"}`) in the status of a running job this worker holds; False
        if it no longer does. A `state` change, so that status streams send it at once."""
        with self._write() as conn:
            updated = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state == JobState.RUNNING.value, jobs.c.worker_id == worker_id)
                .values(preview=preview, changed_at=self._now_sql())
            ).rowcount
            if updated:
                self._notify(conn, ChangeKind.STATE, job_id)
        return bool(updated)

    def finish(
        self,
        job_id: str,
        worker_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        cancelled: bool = False,
        inference_time: float | None = None,
    ) -> bool:
        """Record the outcome of a running job this worker holds; False if its lease was lost."""
        new: JobState
        values: dict[str, Any]
        if cancelled:
            new, values = JobState.CANCELLED, {"error": error or CANCELLED_ERROR}
        elif error is not None:
            new, values = JobState.FAILED, {"error": error}
        else:
            new, values = JobState.SUCCEEDED, {"result": result if result is not None else {}}
        values["inference_time"] = inference_time
        with self._write() as conn:
            return self._transition(
                conn, job_id, JobState.RUNNING, new, values=values, guards=[jobs.c.worker_id == worker_id]
            ) is not None

    def release(self, job_id: str, worker_id: str) -> bool:
        """Put a job this worker holds back in the queue (worker shutting down); it keeps its place.

        The attempt is not counted: the job did not fail, its worker was asked to stop. A job whose
        owner asked to cancel it is cancelled instead: it must not run again on another worker.
        """
        held = [jobs.c.worker_id == worker_id]
        with self._write() as conn:
            if self._transition(
                conn,
                job_id,
                JobState.RUNNING,
                JobState.CANCELLED,
                values={"error": CANCELLED_ERROR},
                guards=[*held, jobs.c.cancel_requested.is_(True)],
            ) is not None:
                return True
            requeued = self._transition(
                conn,
                job_id,
                JobState.RUNNING,
                JobState.QUEUED,
                values={
                    "worker_id": None,
                    "lease_expires_at": None,
                    "started_at": None,
                    "attempts": case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
                },
                guards=held,
            )
            return requeued is not None

    def reclaim_expired(self, max_attempts: int) -> int:
        """Running jobs whose lease ran out: requeue, or fail after `max_attempts` (or at once when
        the client sent X-Fal-No-Retry); cancel if asked. Any node may call it, any number at once."""
        with self._read() as conn:
            now = self._now(conn)
        if not self._exists(jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now):
            return 0
        changed = 0
        with self._write() as conn:
            now = self._now(conn)
            query = select(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested, jobs.c.no_retry).where(
                jobs.c.state == JobState.RUNNING.value, jobs.c.lease_expires_at < now
            )
            for row in conn.execute(self._locking(query, skip_locked=True)).all():
                still_expired = [jobs.c.lease_expires_at < now]
                if row.cancel_requested:
                    ok = self._transition(
                        conn, row.id, JobState.RUNNING, JobState.CANCELLED,
                        values={"error": CANCELLED_ERROR}, guards=still_expired,
                    )
                elif row.attempts < max_attempts and not row.no_retry:
                    ok = self._transition(
                        conn, row.id, JobState.RUNNING, JobState.QUEUED,
                        values={"worker_id": None, "lease_expires_at": None, "started_at": None},
                        guards=still_expired,
                    )
                else:
                    detail = (
                        "The worker running this request stopped responding (X-Fal-No-Retry: not retried)"
                        if row.no_retry
                        else f"The worker running this request stopped responding {row.attempts} times; giving up"
                    )
                    ok = self._transition(
                        conn, row.id, JobState.RUNNING, JobState.FAILED,
                        values={"error": error_dict(503, detail, "runner_disconnected")}, guards=still_expired,
                    )
                changed += ok is not None
        return changed

    # -- upkeep -----------------------------------------------------------------------------

    def delete_finished(self, older_than_s: float, batch: int = 500) -> int:
        """Delete jobs finished more than `older_than_s` ago, with their logs and webhook rows."""
        deleted = 0
        while True:
            with self._write() as conn:
                cutoff = self._now(conn) - older_than_s
                ids = conn.execute(
                    select(jobs.c.id)
                    .where(jobs.c.state.in_([s.value for s in TERMINAL_STATES]), jobs.c.finished_at < cutoff)
                    .limit(batch)
                ).scalars().all()
                if not ids:
                    return deleted
                conn.execute(delete(job_logs).where(job_logs.c.job_id.in_(ids)))
                conn.execute(delete(webhooks).where(webhooks.c.job_id.in_(ids)))
                conn.execute(delete(jobs).where(jobs.c.id.in_(ids)))
                deleted += len(ids)

    def change_watermark(self) -> tuple[float, int]:
        """Where a change watcher starts: now, and the newest log line's id."""
        with self._read() as conn:
            return self._now(conn), int(conn.execute(select(func.max(job_logs.c.id))).scalar() or 0)

    def recent_changes(self, since: float, since_log_id: int) -> RecentChanges:
        """Jobs changed after `since` and jobs with log lines after `since_log_id`: one query pair
        for a whole node, polled by the SQLite change watcher. `since` is rewound a little: writers'
        timestamps are taken before their commit, so a late commit can carry a slightly older one
        (the watcher drops what it has already seen)."""
        with self._read() as conn:
            changed = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.changed_at).where(jobs.c.changed_at > since - 1.0)
            ).all()
            logs = conn.execute(
                select(job_logs.c.job_id, func.max(job_logs.c.id))
                .where(job_logs.c.id > since_log_id)
                .group_by(job_logs.c.job_id)
            ).all()
        return RecentChanges(
            changed=[(r.id, r.state, r.changed_at) for r in changed],
            with_logs=[r[0] for r in logs],
            changed_at=max([since, *(r.changed_at for r in changed)]),
            log_id=max([since_log_id, *(r[1] for r in logs)]),
        )


@dataclass
class OwnerLimit:
    """One claim's per-owner running limit, and what it learned on the way (PostgreSQL)."""

    max_running: int
    passed_over: set[str] = field(default_factory=set)  # owners found full or busy in this claim
    holds_lock: bool = False  # an owner's claim lock is held (until the claim commits)


_SUBMIT_LOCK = select(func.pg_advisory_xact_lock(SUBMIT_LOCKS, func.hashtext(bindparam("owner", type_=String))))


def _fair_seq(postgres: bool) -> ColumnElement[int]:
    """A new job's virtual start time (start-time fair queuing), evaluated inside its INSERT, for
    the owner and priority bound as `fair_owner`, `fair_priority`.

    Virtual time is where the queue of this priority stands: the newest running job's fair_seq,
    or just before the queue's head when nothing of this priority runs. A job starts one past the
    later of that and its owner's last queued or running job: an owner with nothing waiting lands
    right behind the head, while one owner's backlog is spaced out one slot per round, so every
    other owner's job goes between two of its jobs. Four index probes (ix_jobs_fair_queue,
    ix_jobs_owner_active); the claim itself only reads the order.
    """
    owner, priority = bindparam("fair_owner", type_=String), bindparam("fair_priority", type_=Integer)

    def probe(aggregate: Any, *where: ColumnElement[bool]) -> Any:
        return func.coalesce(select(aggregate(jobs.c.fair_seq)).where(jobs.c.priority == priority, *where).scalar_subquery(), 0)

    queued, running = jobs.c.state == JobState.QUEUED.value, jobs.c.state == JobState.RUNNING.value
    greatest = func.greatest if postgres else func.max  # SQLite's max() of several arguments
    return greatest(
        probe(func.max, running),
        probe(func.min, queued) - 1,
        probe(func.max, jobs.c.owner == owner, queued),
        probe(func.max, jobs.c.owner == owner, running),
    ) + 1


# The queue's order without a worker's preference: what queue positions count in (ix_jobs_fair_queue).
_QUEUE_ORDER = (jobs.c.priority, jobs.c.fair_seq, jobs.c.seq)
# A worker's preference picks among this many jobs at the head of the queue (in queue order).
PREFERENCE_WINDOW = 256


def _claimable(table: Any, endpoint_ids: Iterable[str] | None, limit: OwnerLimit | None) -> list[ColumnElement[bool]]:
    """What makes a row of `table` (jobs, or an alias of it) a job this claim may take."""
    conditions = [table.c.state == JobState.QUEUED.value]
    if endpoint_ids is not None:
        conditions.append(table.c.endpoint_id.in_(list(endpoint_ids)))
    if limit is not None:
        # The running set is small (one row per busy worker): a cheap anti-join.
        running = jobs.alias("running")
        at_limit = (
            select(running.c.owner).where(running.c.state == JobState.RUNNING.value)
            .group_by(running.c.owner).having(func.count() >= limit.max_running)
        )
        conditions.append(table.c.owner.not_in(at_limit))
        if limit.passed_over:
            conditions.append(table.c.owner.not_in(sorted(limit.passed_over)))
    return conditions


def _claim_order(prefer: ClaimPreference | None, now: ColumnElement[float]) -> list[Any]:
    if prefer is None:
        return list(_QUEUE_ORDER)
    waited_too_long = jobs.c.created_at < now - prefer.max_wait_s
    matches = [jobs.c.endpoint_id.in_(sorted(prefer.warm_endpoints)), jobs.c.runner_hint.in_(sorted(prefer.hints))]
    # A job this worker ran the hint of ranks above one whose pipeline is merely warm here. Among
    # jobs that waited too long, the preference no longer counts, only the queue's own order (fair
    # order between owners, then age): else, with a backlog older than `max_wait_s`, a steady stream
    # of this worker's warm jobs would starve an older job of another endpoint.
    preferred = case((waited_too_long, 0), (matches[1], 0), (matches[0], 1), else_=2)
    return [jobs.c.priority, case((waited_too_long, 0), else_=1), preferred, jobs.c.fair_seq, jobs.c.seq]


def row_to_job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        owner=m["owner"],
        endpoint_id=m["endpoint_id"],
        input=m.get("input"),
        state=JobState(m["state"]),
        priority=m["priority"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        start_deadline=m["start_deadline"],
        attempts=m["attempts"],
        worker_id=m["worker_id"],
        lease_expires_at=m["lease_expires_at"],
        cancel_requested=bool(m["cancel_requested"]),
        result=m["result"],
        error=m["error"],
        webhook_url=m["webhook_url"],
        base_url=m["base_url"],
        file_retention_s=m["file_retention_s"],
        inference_time=m["inference_time"],
        runner_hint=m["runner_hint"],
        no_retry=bool(m["no_retry"]),
        preview=m.get("preview"),
    )
