"""Real `motionserve` processes for end-to-end tests: start, wait until healthy, keys, stop, crash.

Every process runs in its own session (process group) so that a simulated crash (`kill -9`) takes its
model child processes down with it, as a power cut or OOM kill of the container would.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import httpx

from .tls import TlsFiles

# Processes started by this test session, newest last; conftest prints their logs when a test fails.
LIVE: list["ManagedProcess"] = []

_worker_serial = itertools.count()
STARTUP_TIMEOUT_S = float(os.environ.get("MOTIONSERVE_E2E_STARTUP_TIMEOUT_S", "120"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, max_chars: int = 12000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return text[-max_chars:]


@dataclass
class ManagedProcess:
    """One `python -m motionserve ...` process with its output in a log file."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    _log_file: object = field(default=None, repr=False)
    _done: bool = field(default=False, repr=False)

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "motionserve", *self.args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        LIVE.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """Simulate a crash: SIGKILL the whole process group (server or worker plus model children)."""
        if self.proc is None or self._done:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._close_log()

    def stop(self, grace_s: float = 20.0) -> None:
        """Graceful SIGTERM, then SIGKILL of the group for anything left (children included)."""
        if self.proc is None or self._done:
            return  # once reaped, the group id may belong to someone else: never signal it again
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._close_log()

    def _close_log(self) -> None:
        self._done = True
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        if self in LIVE:
            LIVE.remove(self)
            FINISHED.append(self)

    def log(self) -> str:
        return log_tail(self.log_path)


# Processes already stopped during the current test: their logs are still worth printing on failure.
FINISHED: list[ManagedProcess] = []


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Never reach for a hub: tiny weights are built locally, and real ones must come from the cache.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The tests' own settings must not leak in from the developer's shell.
    for key in [k for k in env if k.startswith("MOTIONSERVE_") and not k.startswith("MOTIONSERVE_E2E_")]:
        del env[key]
    env.update(extra or {})
    return env


@dataclass
class Server:
    """A `motionserve serve` over TLS on 127.0.0.1, with its data directory and CA."""

    data_dir: Path
    tls: TlsFiles
    port: int
    process: ManagedProcess
    database_url: str | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def http(self, key: str | None = None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Key {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, verify=str(self.tls.ca_cert), headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def wait_healthy(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"server exited with {self.process.proc.returncode}:\n{self.process.log()}")  # type: ignore[union-attr]
            try:
                r = httpx.get(f"{self.base_url}/health", verify=str(self.tls.ca_cert), timeout=5)
                if r.status_code == 200:
                    return
                last_error = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.25)
        raise RuntimeError(f"server not healthy after {timeout_s}s ({last_error}):\n{self.process.log()}")

    def create_key(self, label: str = "e2e", *, admin: bool = False) -> str:
        """`motionserve keys create [--admin]`; the last stdout line is `KEY_ID:SECRET`."""
        args = [sys.executable, "-m", "motionserve", "keys", "create", "--data-dir", str(self.data_dir), "--label", label]
        if admin:
            args.append("--admin")
        if self.database_url:
            args += ["--database-url", self.database_url]
        out = subprocess.run(args, capture_output=True, text=True, env=base_env(), timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"keys create failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if not lines or ":" not in lines[-1]:
            raise RuntimeError(f"keys create printed no KEY_ID:SECRET line:\n{out.stdout}\n{out.stderr}")
        return lines[-1]

    def stop(self) -> None:
        self.process.stop()

    def kill9(self) -> None:
        self.process.kill9()

    def restart(self) -> None:
        """Start a new process on the same port and data directory."""
        self.process = ManagedProcess(self.process.name, self.process.args, self.process.log_path, self.process.env).start()
        self.wait_healthy()


def serve_args(
    data_dir: Path,
    tls: TlsFiles,
    port: int,
    *,
    allow_private_urls: bool = True,
    workers: bool = True,
    database_url: str | None = None,
    weights: str = "tiny",
    extra: Iterable[str] = (),
) -> list[str]:
    args = [
        "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), "--weights", weights,
        "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
    ]
    if allow_private_urls:
        args.append("--allow-private-urls")
    if not workers:
        args.append("--no-workers")
    if database_url:
        args += ["--database-url", database_url]
    return [*args, *extra]


def link_models_cache(data_dir: Path, models_cache: Path | None) -> None:
    """Point `<data_dir>/models` at a cache shared by every server of the test session.

    Tiny weights are built on first use; sharing the folder builds them once per session.
    """
    if models_cache is None:
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    models_cache.mkdir(parents=True, exist_ok=True)
    link = data_dir / "models"
    if not link.exists():
        link.symlink_to(models_cache, target_is_directory=True)


def start_server(
    data_dir: Path,
    tls: TlsFiles,
    *,
    log_dir: Path,
    name: str = "server",
    allow_private_urls: bool = True,
    workers: bool = True,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    models_cache: Path | None = None,
    weights: str = "tiny",
    extra: Iterable[str] = (),
) -> Server:
    link_models_cache(data_dir, models_cache)
    port = free_port()
    args = serve_args(
        data_dir, tls, port, allow_private_urls=allow_private_urls, workers=workers, database_url=database_url,
        weights=weights, extra=extra,
    )
    process = ManagedProcess(name, args, log_dir / f"{name}-{port}.log", base_env(env)).start()
    server = Server(data_dir, tls, port, process, database_url)
    try:
        server.wait_healthy()
    except Exception:
        process.stop()
        raise
    return server


def start_worker(
    data_dir: Path,
    *,
    log_dir: Path,
    name: str,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    models_cache: Path | None = None,
    weights: str = "tiny",
    extra: Iterable[str] = (),
) -> ManagedProcess:
    """`motionserve worker` against the same store as a `serve --no-workers`."""
    link_models_cache(data_dir, models_cache)
    args = ["worker", "--data-dir", str(data_dir), "--weights", weights, *extra]
    if database_url:
        args += ["--database-url", database_url]
    return ManagedProcess(name, args, log_dir / f"{name}-{next(_worker_serial)}.log", base_env(env)).start()
