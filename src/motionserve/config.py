"""Operator settings: one object, read from flags and `MOTIONSERVE_*` environment variables. A leaf.

Parsed by pydantic-settings: `MOTIONSERVE_<FIELD>` for every field, lists as comma-separated text.
Values given to the constructor (CLI flags) win over the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOTIONSERVE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    database_url: str | None = None  # default: SQLite (WAL) in data_dir
    # Where files live: None (local files in data_dir/files) or s3://bucket[/prefix] (endpoint and
    # credentials from the standard AWS_* variables).
    storage_url: str | None = None
    # How /files/... answers for S3: "redirect" to a short-lived presigned URL, or "proxy" the bytes
    # through the API node (when clients cannot reach the bucket).
    file_delivery: Literal["redirect", "proxy"] = "redirect"
    presigned_url_ttl_s: int = 3600
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # "auto": a local CA and server certificate in data_dir/tls, made on first start (motionserve.tls).
    tls: Literal["off", "auto"] = "off"
    tls_names: Annotated[tuple[str, ...] | None, NoDecode] = None  # names/addresses for "auto"; None: tls.default_names()
    weights: str = "real"  # "real" | "tiny" | path to a JSON checkpoint map
    devices: Annotated[tuple[str, ...] | None, NoDecode] = None  # None: every CUDA device, else ("cpu",)
    workers_in_process: bool = True  # `serve` runs a worker per device beside the API
    public_url: str | None = None  # base for file URLs when the request's own base is not reachable
    allow_private_urls: bool = False  # let inputs fetch loopback/private addresses
    max_fetch_bytes: int = 200 * MB
    fetch_timeout_s: float = 30.0
    max_upload_bytes: int = 5 * 1024 * MB
    max_frames: int = 128
    file_retention_s: int = 7 * 24 * 3600
    job_retention_s: int = 7 * 24 * 3600  # finished jobs, their logs and webhook rows are deleted after this
    lease_s: float = 30.0
    max_attempts: int = 3
    job_timeout_s: float = 3600.0  # longest a job may run on a worker; 0 for no limit
    # A queued job older than this is claimed first, whatever pipelines a worker has warm.
    warm_claim_max_wait_s: float = 30.0
    drain_timeout_s: float = 10.0  # a stopping worker lets its job finish this long, then requeues it
    sync_run_timeout_s: float = 3600.0
    max_queue_length: int = 0  # queued requests per endpoint beyond which a submit is a 429; 0: no cap
    # Per key (its owner: keys of one owner share them), as fal has them. Jobs beyond the running
    # limit wait in the queue, never refused; submits beyond the rate are a 429. 0: no limit.
    max_running_per_key: int = Field(0, ge=0)
    submit_rate_per_min: int = Field(0, ge=0)
    lora_dir: Path | None = None  # where user LoRAs given as local paths may come from; default data_dir/loras
    memory_budget_gb: float | None = None  # GPU memory for warm pipelines; None: the device's total
    # Pipelines each worker loads before it reports ready and claims its first job (fal's keep_alive):
    # short names (t2v, v2v, turbo, svd-lcm) or endpoint ids, checked by `endpoints.registry.preload_endpoints`.
    preload: Annotated[tuple[str, ...], NoDecode] = ()
    auto_migrate: bool = True  # upgrade the database schema on start
    metrics_port: int | None = None  # `motionserve worker`: serve /metrics on this port
    # Live previews of running jobs (status `preview: {url, step}`): a cheap latent->RGB image every
    # this many denoising steps (more often for short schedules), at most two a second.
    previews: bool = True
    preview_every_steps: int = Field(5, ge=1)
    # AnimateDiff clips longer than the motion modules' 32 frames are denoised in sliding windows of
    # `context_length` frames, neighbours sharing `context_overlap` frames (AnimateDiff-Evolved's
    # defaults). More overlap: smoother seams between windows, more motion-module work.
    context_length: int = Field(16, ge=2, le=32)
    context_overlap: int = Field(4, ge=0)
    # Speed-ups applied once as a pipeline loads (inference.speedups; figures in bench/README.md "Speed-up
    # options"): fused attention projections and channels-last convolutions in the UNet and VAE;
    # torch.compile of the UNet and VAE decoder, one compile per latent shape, kept on disk in
    # compile_cache_dir (default data_dir/compile-cache) for restarts. On by default: channels-last only
    # (1.16x less CPU on the bench weights; the layout GPU convolutions prefer). Fusing showed no CPU gain
    # and adds a copy of the projections; compiling gains 1.45x but costs minutes per new shape.
    fuse_qkv: bool = False
    channels_last: bool = True
    torch_compile: bool = False
    compile_cache_dir: Path | None = None

    @field_validator("devices", "tls_names", mode="before")
    @classmethod
    def _split_devices(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip()) or None
        return value

    @field_validator("preload", mode="before")
    @classmethod
    def _split_preload(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @model_validator(mode="after")
    def _overlap_below_length(self) -> "Settings":
        if self.context_overlap >= self.context_length:
            raise ValueError(f"context_overlap ({self.context_overlap}) must be below context_length ({self.context_length})")
        return self

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
    def tls_dir(self) -> Path:
        return Path(self.data_dir) / "tls"

    @property
    def compile_cache_path(self) -> Path:
        return Path(self.compile_cache_dir) if self.compile_cache_dir else Path(self.data_dir) / "compile-cache"

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Defaults, then `MOTIONSERVE_<FIELD>` variables, then explicit overrides (e.g. CLI flags)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})
