"""Plumbing for the endpoint benchmark: a real `motionserve serve` over plain HTTP, the fal queue spoken
with httpx, memory high-water marks of processes, and facts about the machine.

Server processes are started with the end-to-end harness's `ManagedProcess` (tests/e2e/server.py): its own
process group, output in a log file, SIGTERM then SIGKILL of the group on stop. Plain HTTP rather than TLS:
the benchmark measures the service, and TLS on loopback would only add noise.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for `tests.e2e.server` (the harness is not an installed package)

from tests.e2e.server import ManagedProcess, base_env, free_port  # noqa: E402

STARTUP_TIMEOUT_S = 180.0


# ---- the server -------------------------------------------------------------------------------------


@dataclass
class BenchServer:
    """A `motionserve serve` on 127.0.0.1, with its in-process worker on one device unless `workers=False`."""

    data_dir: Path
    port: int
    process: ManagedProcess

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls, data_dir: Path, *, weights: str, log_dir: Path, name: str, device: str | None = None, workers: bool = True,
        env: dict[str, str] | None = None,
    ) -> "BenchServer":
        """`device=None` leaves the choice to the server (every GPU, else the CPU). `env`: settings
        (`MOTIONSERVE_*` variables) for this server only."""
        port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), "--weights", weights]
        if device is not None:
            args += ["--devices", device]
        if not workers:
            args.append("--no-workers")
        process = ManagedProcess(name, args, log_dir / f"{name}.log", base_env(env)).start()
        server = cls(data_dir, port, process)
        try:
            server._wait_healthy()
        except BaseException:  # an interrupt too: never leave a server behind
            process.stop()
            raise
        return server

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"server exited early; log {self.process.log_path}:\n{self.process.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S:.0f}s; log {self.process.log_path}")

    def create_key(self) -> str:
        """`motionserve keys create`; its last line is `KEY_ID:SECRET`."""
        out = subprocess.run(
            [sys.executable, "-m", "motionserve", "keys", "create", "--data-dir", str(self.data_dir), "--label", "bench"],
            capture_output=True, text=True, env=base_env(), timeout=120,
        )
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode != 0 or not lines or ":" not in lines[-1]:
            raise RuntimeError(f"keys create failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return lines[-1]

    def model_pid(self) -> int | None:
        """The model process: the multiprocessing *spawn* child of the server (not its resource tracker)."""
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                return child.pid
        return None

    def stop(self) -> None:
        self.process.stop()


# ---- the fal queue over httpx -----------------------------------------------------------------------


@dataclass
class E2EResult:
    seconds: float  # submit -> MP4 bytes in hand
    request_id: str
    output: dict[str, Any]
    video: bytes
    inference_time: float | None  # the handler's own time, from the status `metrics`


class QueueClient:
    """Submit, poll status every `poll_s` (fal_client's default is 0.1 s), fetch the result and its MP4."""

    def __init__(self, base_url: str, key: str, poll_s: float = 0.1, timeout_s: float = 1800) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Key {key}"}, timeout=120)
        self.poll_s = poll_s
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.http.close()

    def upload(self, data: bytes, *, content_type: str, file_name: str) -> str:
        """The JS client's upload: initiate, then PUT the bytes; returns the file's URL on this server."""
        r = self.http.post("/rest/storage/upload/initiate", params={"storage_type": "fal-cdn-v3"},
                           json={"file_name": file_name, "content_type": content_type})
        r.raise_for_status()
        target = r.json()
        put = self.http.put(target["upload_url"], content=data, headers={"Content-Type": content_type})
        put.raise_for_status()
        return str(target["file_url"])

    def run(self, endpoint_id: str, payload: dict[str, Any]) -> E2EResult:
        return self.wait(endpoint_id, self.submit(endpoint_id, payload))

    def submit(self, endpoint_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to the queue; the reply (request_id, status_url, response_url) plus `started` (perf_counter)."""
        started = time.perf_counter()
        r = self.http.post(f"/queue/{endpoint_id}", json=payload)
        if r.status_code != 200:
            raise RuntimeError(f"submit to {endpoint_id} -> {r.status_code} {r.text[:500]}")
        return {**r.json(), "started": started}

    def wait(self, endpoint_id: str, submitted: dict[str, Any]) -> E2EResult:
        """Poll until COMPLETED, then GET the result and its MP4; seconds count from the submit."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            status = self.http.get(submitted["status_url"]).json()
            if status.get("status") == "COMPLETED":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{submitted['request_id']} not completed in {self.timeout_s:.0f}s: {status}")
            time.sleep(self.poll_s)
        if status.get("error"):
            raise RuntimeError(f"{endpoint_id} request failed: {status.get('error')} ({status.get('error_type')})")
        result = self.http.get(submitted["response_url"])
        if result.status_code != 200:
            raise RuntimeError(f"result of {endpoint_id} -> {result.status_code} {result.text[:500]}")
        output = result.json()
        video = self.http.get(output["video"]["url"])
        video.raise_for_status()
        elapsed = time.perf_counter() - submitted["started"]
        metrics = status.get("metrics") or {}
        return E2EResult(elapsed, submitted["request_id"], output, video.content, metrics.get("inference_time"))


# ---- memory ----------------------------------------------------------------------------------------


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's RSS high-water mark (Linux: `5` to /proc/PID/clear_refs). False if not possible."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int) -> float | None:
    """The RSS high-water mark (VmHWM) of a process in MiB, or None where /proc does not tell."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes (all their threads)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class GpuMemorySampler:
    """The most GPU memory `nvidia-smi` saw a process use (its CUDA context plus what PyTorch reserved).

    The only view of another process's GPU memory; PyTorch's `max_memory_allocated` is in-process only.
    """

    def __init__(self, pid: int | None, interval_s: float = 0.1) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "GpuMemorySampler":
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = _nvidia_smi_used_mb(self.pid)
            if used is not None:
                self.peak_mb = max(self.peak_mb or 0.0, used)
            self._stop.wait(self.interval_s)


def _nvidia_smi_used_mb(pid: int | None) -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return float(parts[1])
    return None


# ---- figures ---------------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def rounded(value: Any, digits: int = 4) -> Any:
    """JSON-friendly copy with floats rounded."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def machine_info(device: str) -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "diffusers": diffusers.__version__,
        "device": device,
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
