"""Schema migrations: every path to head (empty, made by the release before migrations, already at
head) on SQLite and PostgreSQL, many processes migrating one database at once, and the CLI.

`test_empty_database_reaches_the_schema_of_database_py` is the guard for whoever edits
`motionserve.database`: it fails until a migration makes the same change.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    text,
)

from motionserve import migrations
from motionserve.cli import main
from motionserve.config import Settings
from motionserve.database import make_engine, metadata
from motionserve.jobs.store import Store

# The schema as the release before migrations made it (`motionserve/jobs/schema.py` at 01557f0),
# copied so that the test does not depend on the revision it checks.
OLD = MetaData()
Table(
    "jobs", OLD,
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
Table(
    "job_logs", OLD,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("timestamp", Double, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    UniqueConstraint("job_id", "seq", name="uq_job_logs_job_seq"),
)
Table(
    "webhooks", OLD,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Double, nullable=False),
    Column("last_error", Text),
    Column("created_at", Double, nullable=False),
    Column("delivered_at", Double),
    Index("ix_webhooks_due", "state", "next_attempt_at"),
)
Table(
    "api_keys", OLD,
    Column("key_id", String(64), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("label", Text, nullable=False, default=""),
    Column("salt", LargeBinary, nullable=False),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)
Table(
    "signing_keys", OLD,
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("private_key", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
)

JOB_ID = "00000000-0000-0000-0000-000000000001"

# Each racer imports first, says it is ready, and migrates only once all are ready.
RACER = """
import os, sys, time
from motionserve.migrations import upgrade
url, ready, go = sys.argv[1:]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
upgrade(url)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'motionserve.db'}"
    return request.getfixturevalue("postgres_url")


def schema_diffs(url: str, target: MetaData = metadata) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), target)
    finally:
        engine.dispose()


def make_old_database(url: str) -> None:
    """What the release before migrations left: its tables, no alembic_version, a queued job with a
    log line and a pending webhook, the first-start admin key and a user key."""
    engine = make_engine(url)
    try:
        OLD.create_all(engine)
        t = OLD.tables
        with engine.begin() as conn:
            conn.execute(insert(t["jobs"]).values(
                id=JOB_ID, owner="alice", endpoint_id="test-owner/echo", input={"prompt": "hi"}, state="queued",
                priority=0, created_at=1.0, attempts=0, cancel_requested=False, base_url="http://x"))
            conn.execute(insert(t["job_logs"]).values(job_id=JOB_ID, seq=1, timestamp=1.0, level="info", message="m"))
            conn.execute(insert(t["webhooks"]).values(
                job_id=JOB_ID, owner="alice", url="http://hook", body=b"{}", state="pending", attempts=0,
                next_attempt_at=1.0, created_at=1.0))
            for key_id, owner, label in [("k-admin", "admin", "created on first start"), ("k-user", "alice", ""),
                                         ("k-other", "admin", "made by hand")]:
                conn.execute(insert(t["api_keys"]).values(
                    key_id=key_id, owner=owner, label=label, salt=b"s", secret_hash=b"h", created_at=1.0,
                    revoked=False))
    finally:
        engine.dispose()


def row_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                    for name, table in OLD.tables.items()}
    finally:
        engine.dispose()


def assert_old_rows_kept_and_usable(url: str) -> None:
    assert row_counts(url) == {"jobs": 1, "job_logs": 1, "webhooks": 1, "api_keys": 3, "signing_keys": 0}
    store = Store(url)
    try:
        roles = {k.key_id: k.admin for k in store.list_keys()}
        assert roles == {"k-admin": True, "k-user": False, "k-other": False}
        job = store.claim("w1", 60.0)
        assert job is not None and job.id == JOB_ID and not job.no_retry and job.runner_hint is None
        assert [line.message for line in store.logs(JOB_ID)] == ["m"]
    finally:
        store.close()


def race(n: int, url: str, tmp_path: Path) -> None:
    """`n` processes call upgrade(url) at the same moment; every one must succeed."""
    signals = tmp_path / f"race-{time.monotonic_ns()}"
    signals.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, str(signals / f"ready-{i}"), str(signals / "go")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    try:
        deadline = time.monotonic() + 60
        while len(list(signals.glob("ready-*"))) < n:
            assert all(p.poll() is None for p in procs), "a racer died before the start"
            assert time.monotonic() < deadline, "racers did not start"
            time.sleep(0.01)
        (signals / "go").touch()
        errors = [p.communicate(timeout=60)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failures = [err for p, err in zip(procs, errors) if p.returncode != 0]
    assert not failures, f"{len(failures)} of {n} failed; the first: {failures[0]}"


# -- paths to head --------------------------------------------------------------------------


def test_empty_database_reaches_the_schema_of_database_py(url: str) -> None:
    assert migrations.current(url) is None
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()
    assert schema_diffs(url) == [], "motionserve.database and the migrations disagree: add the change to a revision"
    migrations.upgrade(url)  # at head: nothing to do
    assert migrations.current(url) == migrations.head()


def test_revision_0001_is_the_schema_of_the_release_before_migrations(url: str) -> None:
    migrations.upgrade(url)
    migrations.downgrade(url, "0001")
    assert migrations.current(url) == "0001"
    assert schema_diffs(url, OLD) == []
    migrations.downgrade(url, "base")
    assert schema_diffs(url, MetaData()) == []


def test_database_of_the_release_before_migrations_is_upgraded_keeping_its_rows(url: str) -> None:
    make_old_database(url)
    assert migrations.current(url) == migrations.LEGACY_REVISION
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()
    assert schema_diffs(url) == []
    assert_old_rows_kept_and_usable(url)
    # Going back recreates tables on SQLite: that must not cascade into the rows that refer to them.
    migrations.downgrade(url, "0001")
    assert schema_diffs(url, OLD) == []
    assert row_counts(url) == {"jobs": 1, "job_logs": 1, "webhooks": 1, "api_keys": 3, "signing_keys": 0}


def test_a_revision_from_a_newer_release_is_refused(url: str) -> None:
    migrations.upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(migrations.SchemaOutOfDate, match="9999, which this version of motionserve does not know"):
        migrations.upgrade(url)


# -- many processes at once -----------------------------------------------------------------


def test_eight_processes_migrate_an_empty_postgresql_database_together(postgres_url: str, tmp_path: Path) -> None:
    race(8, postgres_url, tmp_path)
    assert migrations.current(postgres_url) == migrations.head()
    assert schema_diffs(postgres_url) == []


def test_eight_processes_migrate_an_old_postgresql_database_together(postgres_url: str, tmp_path: Path) -> None:
    make_old_database(postgres_url)
    race(8, postgres_url, tmp_path)
    assert migrations.current(postgres_url) == migrations.head()
    assert schema_diffs(postgres_url) == []
    assert_old_rows_kept_and_usable(postgres_url)


@pytest.mark.parametrize("old", [False, True], ids=["empty", "old"])
def test_four_processes_migrate_one_sqlite_database_together(old: bool, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'motionserve.db'}"
    if old:
        make_old_database(url)
    race(4, url, tmp_path)
    assert migrations.current(url) == migrations.head()
    assert schema_diffs(url) == []
    if old:
        assert_old_rows_kept_and_usable(url)


# -- the command line and the server's start -----------------------------------------------


def test_db_upgrade_and_current_commands(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = migrations.head()
    make_old_database(url)
    assert main(["db", "current", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"0001 (head is {head})\n"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"database schema: 0001 -> {head} (head)\n"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"database schema: already at {head} (head)\n"
    assert main(["db", "current", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"{head} (head)\n"


def test_db_commands_use_the_data_dir_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTIONSERVE_DATABASE_URL", raising=False)
    assert main(["db", "current", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"none (empty database) (head is {migrations.head()})\n"
    assert main(["db", "upgrade", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"database schema: none -> {migrations.head()} (head)\n"
    assert (tmp_path / "motionserve.db").exists()


def test_without_auto_migrate_the_server_refuses_an_old_schema_in_one_line(tmp_path: Path) -> None:
    from motionserve.api.server import open_store

    settings = Settings(data_dir=tmp_path, auto_migrate=False)
    make_old_database(settings.resolved_database_url)
    with pytest.raises(SystemExit) as exited:
        open_store(settings)
    assert str(exited.value) == (f"motionserve: database schema is at 0001, this version needs {migrations.head()}: "
                                 "run `motionserve db upgrade`")
    migrations.upgrade(settings.resolved_database_url)
    open_store(settings).close()


def test_the_server_migrates_on_start_by_default(tmp_path: Path) -> None:
    from motionserve.api.server import open_store

    settings = Settings(data_dir=tmp_path)
    make_old_database(settings.resolved_database_url)
    open_store(settings).close()
    assert migrations.current(settings.resolved_database_url) == migrations.head()
    assert_old_rows_kept_and_usable(settings.resolved_database_url)


def test_racers_see_the_installed_package(tmp_path: Path) -> None:
    """The subprocesses import motionserve from wherever it is installed: its revisions must be there."""
    out = subprocess.run([sys.executable, "-c", "import motionserve.migrations as m; print(m.head())"],
                         capture_output=True, text=True, check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert out.stdout.strip() == migrations.head()
