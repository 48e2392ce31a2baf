"""Tables and engine setup for the store: one SQLAlchemy Core schema for SQLite and PostgreSQL.

SQLite is shared by several processes (the API server and `motionserve worker`s), so it runs in
WAL mode with a busy timeout, and write transactions start with `BEGIN IMMEDIATE`: taking the
write lock up front means two claimers serialize instead of both reading the same queued row
and one failing later with "database is locked" on upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url

from motionserve.jobs.models import Job, JobState

WRITE_OPTION = "motionserve_write"  # execution option: this transaction writes
SQLITE_BUSY_TIMEOUT_S = 30.0

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    # `seq` is the submit order; a requeued job keeps it, and so keeps its place in the queue.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(36), nullable=False, unique=True),
    Column("owner", String(200), nullable=False),
    Column("endpoint_id", String(200), nullable=False),
    Column("input", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("created_at", Double, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("start_deadline", Double),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker_id", String(200)),
    Column("lease_expires_at", Double),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("result", JSON),
    Column("error", JSON),
    Column("webhook_url", Text),
    Column("base_url", Text, nullable=False),
    Column("file_retention_s", Integer),
    Column("inference_time", Double),
    Index("ix_jobs_queue", "state", "priority", "seq"),
)

job_logs = Table(
    "job_logs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("timestamp", Double, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    UniqueConstraint("job_id", "seq", name="uq_job_logs_job_seq"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed (given up)
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Double, nullable=False),
    Column("last_error", Text),
    Column("created_at", Double, nullable=False),
    Column("delivered_at", Double),
    Index("ix_webhooks_due", "state", "next_attempt_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("label", Text, nullable=False, default=""),
    Column("salt", LargeBinary, nullable=False),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    # A single row (slot 1): the primary key is what makes concurrent first-time creation safe.
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("private_key", LargeBinary, nullable=False),  # raw 32-byte Ed25519 seed
    Column("created_at", Double, nullable=False),
)


def normalize_url(url: str) -> str:
    """Plain `postgresql://` URLs use psycopg 3 (the driver we depend on), not psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)

    if not parsed.database or parsed.database == ":memory:":
        # Each pooled connection would get its own empty database, and worker processes none.
        raise ValueError("the SQLite store needs a database file (sqlite:///path/to/motionserve.db)")
    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, future=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level so that we, not pysqlite, decide how BEGIN is issued
        # (the recipe from SQLAlchemy's pysqlite documentation).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commits
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def row_to_job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        owner=m["owner"],
        endpoint_id=m["endpoint_id"],
        input=m["input"],
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
    )
