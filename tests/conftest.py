"""Fixtures shared by every test layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder (Settings.data_dir) for the session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def models_dir(data_dir: Path) -> Path:
    """`Settings(data_dir=data_dir).models_dir`; tiny weights are built under `tiny/`."""
    return data_dir / "models"


@pytest.fixture(scope="session")
def tiny_weights(models_dir: Path) -> Path:
    """The tiny AnimateDiff-family (and SVD) checkpoints, built once per session; holds weights.json."""
    from motionserve.inference.tiny import ensure_tiny_weights

    return ensure_tiny_weights(models_dir / "tiny")


@pytest.fixture(scope="session")
def tiny_models(models_dir: Path, tiny_weights: Path) -> Any:
    """A CPU ModelManager on the tiny weights; pipelines stay warm for the whole session."""
    from motionserve.inference.models import ModelManager

    # User LoRAs given as local paths must live in the LoRA folder: the tiny root holds the test ones.
    return ModelManager("tiny", models_dir, "cpu", lora_dir=tiny_weights)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """moto's S3 server on loopback for the session (tests/services.py); skips, or fails in CI, without it."""
    from tests.services import running_s3_server

    with running_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def postgres_url() -> Any:
    """A fresh, empty PostgreSQL database for one test; skips, or fails in CI, without PostgreSQL."""
    from tests.services import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url
