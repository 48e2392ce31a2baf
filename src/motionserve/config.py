"""Operator settings: one object, read from flags and `MOTIONSERVE_*` environment variables. A leaf."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    database_url: str | None = None  # default: SQLite (WAL) in data_dir
    tls_cert: Path | None = None
    tls_key: Path | None = None
    weights: str = "real"  # "real" | "tiny" | path to a JSON checkpoint map
    devices: tuple[str, ...] | None = None  # None: every CUDA device, else ("cpu",)
    workers_in_process: bool = True  # `serve` runs a worker per device beside the API
    public_url: str | None = None  # base for file URLs when the request's own base is not reachable
    allow_private_urls: bool = False  # let inputs fetch loopback/private addresses
    max_fetch_bytes: int = 200 * MB
    fetch_timeout_s: float = 30.0
    max_upload_bytes: int = 5 * 1024 * MB
    max_frames: int = 128
    file_retention_s: int = 7 * 24 * 3600
    lease_s: float = 30.0
    max_attempts: int = 3
    sync_run_timeout_s: float = 3600.0
    lora_dir: Path | None = None  # where user LoRAs given as local paths may come from; default data_dir/loras
    memory_budget_gb: float | None = None  # GPU memory for warm pipelines; None: the device's total

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'motionserve.db'}"

    @property
    def files_dir(self) -> Path:
        return Path(self.data_dir) / "files"

    @property
    def user_lora_dir(self) -> Path:
        return Path(self.lora_dir) if self.lora_dir else Path(self.data_dir) / "loras"

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then `MOTIONSERVE_<FIELD>` variables, then explicit overrides (e.g. CLI flags)."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f"MOTIONSERVE_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("data_dir", "tls_cert", "tls_key", "lora_dir"):
            if isinstance(values.get(name), str):
                values[name] = Path(values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = str(f.type)
    if "bool" in kind:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "tuple" in kind:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if "Path" in kind:
        return Path(raw)
    return raw
