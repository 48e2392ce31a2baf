"""The database: every table and the engine setup, one SQLAlchemy Core schema for SQLite and PostgreSQL.

A leaf below `jobs` and `storage`: the job store and the file catalog both keep their rows here, so
that any API node or worker reaches all shared state through one database. The schema's versions
are Alembic migrations (`motionserve.migrations`); this module is always the newest version.

SQLite is shared by several processes (the API server and `motionserve worker`s), so it runs in
WAL mode with a busy timeout, and write transactions start with `BEGIN IMMEDIATE`: taking the
write lock up front means two claimers serialize instead of both reading the same queued row
and one failing later with "database is locked" on upgrade.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
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
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_OPTION = "motionserve_write"  # execution option: this transaction writes
SQLITE_BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10  # PostgreSQL

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
    # When the row last changed (database clock): change watchers that poll (SQLite) read it.
    Column("changed_at", Double),
    Column("runner_hint", String(200)),  # X-Fal-Runner-Hint: prefer the worker that last ran it
    Column("no_retry", Boolean, nullable=False, default=False),  # X-Fal-No-Retry
    Column("preview", JSON),  # {"url", "step"}: the latest live preview while it runs
    # Fair queuing between owners: the job's virtual start time, set at submit (`Store.submit`).
    # The queue runs by (priority, fair_seq, seq); a requeued job keeps it, as it keeps `seq`.
    Column("fair_seq", BigInteger, nullable=False, default=0, server_default="0"),
    Index("ix_jobs_fair_queue", "state", "priority", "fair_seq", "seq"),
    Index("ix_jobs_owner_active", "owner", "state", "priority", "fair_seq"),  # an owner's last queued/running job
    Index("ix_jobs_changed", "changed_at"),
    Index("ix_jobs_finished", "finished_at"),
    Index("ix_jobs_owner", "owner", "seq"),  # a key's history (GET /requests), newest first
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
    Column("role", String(16), nullable=False, default="user", server_default="user"),  # admin | user
)

signing_keys = Table(
    "signing_keys",
    metadata,
    # A single row (slot 1): the primary key is what makes concurrent first-time creation safe.
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("private_key", LargeBinary, nullable=False),  # raw 32-byte Ed25519 seed
    Column("created_at", Double, nullable=False),
)


# Server-wide secrets every API node must agree on (e.g. the upload-token HMAC key), by name.
server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
)

# Stored files (uploads and outputs): the metadata, whichever backend holds the bytes.
files = Table(
    "files",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("file_name", String(200), nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("kind", String(16), nullable=False, default="upload"),  # upload | output
    Index("ix_files_expires", "expires_at"),
)

# Uploads in progress; the final token is reserved at the start, so the file URL is known early.
uploads = Table(
    "uploads",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("token", String(64), nullable=False, unique=True),
    Column("file_name", String(200), nullable=False),
    Column("content_type", String(200), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("backend_upload_id", Text),  # the S3 multipart UploadId; None for the local backend
)

# Every worker supervisor, local or remote: what /health and GET /workers show.
workers = Table(
    "workers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("device", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # starting | idle | busy | draining | stopped
    Column("warm", JSON),  # endpoint ids whose pipelines are loaded
    Column("current_job", String(36)),
    Column("started_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),  # database clock
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
        # pre-ping: a pooled connection dropped by a restart or pg_terminate_backend is replaced
        # at checkout, not handed to a request. connect_timeout: an unreachable host (not a refused
        # port) fails a request in seconds, as a 503, instead of holding it for the TCP timeout.
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, future=True)

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
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        _use_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commits
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def db_now(conn: Connection) -> float:
    """The database's clock in epoch seconds. Leases and worker liveness are timed by it, so hosts
    with skewed clocks agree. SQLite lives on one host: its clock is that host's."""
    if conn.dialect.name == "postgresql":
        return float(conn.exec_driver_sql("SELECT extract(epoch from clock_timestamp())::float8").scalar_one())
    return time.time()


def _use_wal(cur: Any) -> None:
    """Switch the database file to WAL (a lasting property of the file, so usually already done).
    The switch needs a moment alone with the file and SQLite does not wait on its busy handler for
    it: several processes opening a new database at once retry here instead of failing to start."""
    for _ in range(50):
        try:
            if cur.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        time.sleep(0.1)
    raise RuntimeError("could not switch the SQLite database to WAL: another process keeps it locked")


def unreachable(exc: BaseException) -> bool:
    """The database cannot be reached (down, restarting, the connection dropped, the pool exhausted),
    as opposed to a statement it refused."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def retry_while_unreachable(call: Callable[[], T], *, for_s: float, what: str) -> T:
    """`call()`, called again with backoff while it fails only because the database is unreachable,
    for up to `for_s` seconds; after that, or on any other error, the error is raised."""
    deadline = time.monotonic() + for_s
    delay = 0.5
    while True:
        try:
            return call()
        except sa_exc.SQLAlchemyError as exc:
            if not unreachable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unreachable (%s); retrying in %.1f s", what, str(exc).splitlines()[0], delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def log_failure(logger: logging.Logger, message: str, *args: Any) -> None:
    """Log the exception being handled: in one line when the database is only unreachable (an outage
    would otherwise fill the log with the same traceback several times a second), else in full."""
    exc = sys.exc_info()[1]
    if exc is not None and unreachable(exc):
        logger.warning(message + ": database unreachable (%s)", *args, str(exc).splitlines()[0])
    else:
        logger.exception(message, *args)
