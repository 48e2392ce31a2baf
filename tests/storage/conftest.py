"""File store fixtures: the same tests on the local backend and on S3 (moto's real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from motionserve.config import Settings
from motionserve.storage import FileStore, open_file_store
from tests.file_stores import NodeFactory, aws_env, create_tables


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return create_tables(f"sqlite:///{tmp_path / 'files.db'}")


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The moto server, with the standard AWS variables pointing at it."""
    aws_env(s3_server, monkeypatch)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def storage_url(request: pytest.FixtureRequest) -> str | None:
    """None (the local backend), or a fresh bucket with a key prefix on the S3 server."""
    if request.param == "local":
        return None
    return f"s3://{request.getfixturevalue('s3_env').create_bucket()}/some/prefix"


@pytest.fixture
def make_node(tmp_path: Path, database_url: str, storage_url: str | None) -> Iterator[NodeFactory]:
    """`make_node(name="node1", **settings)`: the file store one node opens, on its own data dir."""
    opened: list[FileStore] = []

    def make(name: str = "node1", **overrides: Any) -> FileStore:
        settings = Settings(data_dir=tmp_path / name, database_url=database_url, storage_url=storage_url, **overrides)
        files = open_file_store(settings)
        opened.append(files)
        return files

    yield make
    for files in opened:
        files.close()


@pytest.fixture
def files(make_node: NodeFactory) -> FileStore:
    return make_node()
