"""The database schema's versions: Alembic revisions shipped in this package, run without an alembic.ini.

`motionserve.database` is always the newest schema; `versions/` holds the steps from nothing (or from
a database an earlier release made with `create_all`, which has no alembic_version table and is the
schema of revision 0001) up to it. `upgrade(url)` is safe to call from any number of processes at
once, e.g. every replica of a deployment starting together: each takes a lock first (a PostgreSQL
advisory lock, or a lock file beside the SQLite database) and looks at the version again inside it.
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Iterator

# Alembic logs at INFO which plugins (as it is imported) and which dialect (on every connection)
# it set up: noise at our default log level. We log each migration ourselves.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402  (after quieting its logger)
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from alembic.util import CommandError  # noqa: E402
from sqlalchemy import Connection, Engine, inspect, text  # noqa: E402

from motionserve.database import WRITE_OPTION, make_engine  # noqa: E402

log = logging.getLogger("motionserve.migrations")

SCRIPT_DIR = Path(__file__).parent
# The revision whose schema releases before migrations created (recognised by a `jobs` table
# without an alembic_version table).
LEGACY_REVISION = "0001"
# pg_advisory_lock key ("motiondb"): advisory locks are per database, so one key serializes the
# migrations of one database and no others.
PG_LOCK_KEY = 0x6D6F74696F6E6462


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema this version of motionserve needs (nor can it get there)."""


def head() -> str:
    """The newest revision: the one `motionserve.database` describes."""
    revision = _script().get_current_head()
    assert revision is not None, "no migrations in " + str(SCRIPT_DIR)
    return revision


def current(url: str) -> str | None:
    """The revision the database is at: its alembic_version, LEGACY_REVISION for a database an
    earlier release made (not stamped yet), None for an empty one."""
    with _engine(url) as engine, engine.connect() as conn:
        return _revision(conn)


def upgrade(url: str) -> None:
    """Bring the database to head: an empty one, one an earlier release made, or one at an older
    revision. At head already: nothing happens, and no lock is taken."""
    target = head()
    with _engine(url) as engine:
        with engine.connect() as conn:
            if _revision(conn) == target:
                return
        with _migrating(engine) as conn:
            # Again under the lock: another process may just have migrated.
            revision = _stamp_known(conn)
            if revision != target:
                log.info("Migrating the database schema from %s to %s", revision or "nothing", target)
                command.upgrade(_config(conn), target)


def downgrade(url: str, revision: str) -> None:
    """Take the database back to `revision` ("base": no tables), e.g. before going back to an older
    release. Rows in dropped tables and columns are lost."""
    with _engine(url) as engine, _migrating(engine) as conn:
        log.info("Migrating the database schema from %s back to %s", _stamp_known(conn), revision)
        command.downgrade(_config(conn), revision)


def require_head(url: str) -> None:
    """Raise SchemaOutOfDate, with a message for the operator, unless the database is at head."""
    target = head()
    revision = current(url)
    _check_known(revision)
    if revision != target:
        at = revision or "nothing (empty database)"
        raise SchemaOutOfDate(f"database schema is at {at}, this version needs {target}: run `motionserve db upgrade`")


# -- internals --------------------------------------------------------------------------------


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(None))


def _config(conn: Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_DIR).replace("%", "%%"))
    config.attributes["connection"] = conn  # env.py runs on this connection
    return config


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _stamped(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _revision(conn: Connection) -> str | None:
    stamped = _stamped(conn)
    if stamped is None and inspect(conn).has_table("jobs"):
        return LEGACY_REVISION
    return stamped


def _stamp_known(conn: Connection) -> str | None:
    """The database's revision, checked to be one of ours; a database an earlier release made is
    stamped at LEGACY_REVISION first, so that Alembic knows where it starts."""
    revision = _revision(conn)
    _check_known(revision)
    if revision == LEGACY_REVISION and _stamped(conn) is None:
        command.stamp(_config(conn), LEGACY_REVISION)
    return revision


def _check_known(revision: str | None) -> None:
    if revision is None:
        return
    try:
        _script().get_revision(revision)
    except CommandError:
        raise SchemaOutOfDate(
            f"database schema is at {revision}, which this version of motionserve does not know "
            f"(a newer release migrated it; its newest known revision is {head()})"
        ) from None


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection holding the migration lock, inside the one transaction the migration runs in
    (committed when the block ends without an error)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, _pg_lock(conn), conn.begin():
            yield conn
        return
    database = engine.url.database
    assert database, "make_engine refuses SQLite without a database file"
    with _file_lock(Path(database + ".migrate.lock")), engine.connect() as conn:
        # Recreating a table (batch mode) drops the old one, and with foreign keys on that deletes,
        # or cascades into, the rows that refer to it. The pragma only works outside a transaction.
        conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        conn = conn.execution_options(**{WRITE_OPTION: True})  # BEGIN IMMEDIATE: writers wait for us
        with conn.begin():
            yield conn
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left rows whose foreign keys point nowhere: {broken[:5]}")


@contextmanager
def _pg_lock(conn: Connection) -> Iterator[None]:
    """A session-level advisory lock: it outlives the transactions inside it."""
    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
    conn.commit()
    try:
        yield
    finally:
        if not conn.invalidated:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
            conn.commit()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on a file beside the SQLite database; waits as long as another migrates."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
