"""Store fixtures: every store test runs on SQLite and on PostgreSQL (skipped only if unreachable)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from motionserve.jobs.store import Store
from tests.services import unavailable

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class FakeClock:
    """Epoch seconds that only move when a test says so (lease and deadline expiry without sleeping)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return _pg_available()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    if not request.getfixturevalue("pg_available"):
        unavailable("PostgreSQL at 127.0.0.1:5432 is not reachable")
    import psycopg

    # A private schema per test: other engineers' tests share the `test` database.
    schema = f"ms_jobs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> Iterator[Store]:
    s = Store(db_url, clock=clock)
    s.create_all()
    yield s
    s.close()
