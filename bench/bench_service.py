"""Service benchmark: how fast the API accepts and reports on work, and how long work waits for a worker.

Starts real `motionserve serve` processes on 127.0.0.1 (plain HTTP: this measures the service, not TLS):

1. `--no-workers`: GET /health req/s (the HTTP floor of this machine), then queue submit req/s and
   status req/s with concurrent httpx clients. Nothing runs the submitted jobs, so they only queue.
2. With its in-process worker on tiny weights: the median time a request submitted to an idle worker
   waits before the worker starts it (`started_at - created_at`, read from the store).

Not a test: numbers depend on the machine. Every loop is bounded and only talks to 127.0.0.1.
The LAST line printed is one JSON object with all figures.

    python bench/bench_service.py [--requests 2000] [--concurrency 16] [--wait-samples 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

T2V = "fal-ai/fast-animatediff/text-to-video"
PAYLOAD = {"prompt": "bench", "video_size": {"width": 64, "height": 64}, "num_frames": 8, "num_inference_steps": 2, "fps": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, *, workers: bool, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        args = [sys.executable, "-m", "motionserve", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(data_dir), "--weights", "tiny"]
        if not workers:
            args.append("--no-workers")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIONSERVE_")}
        env.setdefault("HF_HUB_OFFLINE", "1")
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not healthy after {timeout_s}s; see {self.log.name}")

    def create_key(self) -> str:
        out = subprocess.run([sys.executable, "-m", "motionserve", "keys", "create", "--data-dir", str(self.data_dir)],
                             capture_output=True, text=True, check=True, timeout=120)
        return out.stdout.strip().splitlines()[-1]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


async def measure_rps(total: int, concurrency: int, call: Callable[[int], Awaitable[httpx.Response]],
                      ok: tuple[int, ...] = (200,)) -> tuple[float, list[Any]]:
    """Run `call(i)` for i < total with `concurrency` in flight; return (requests/s, responses' JSON)."""
    counter = iter(range(total))
    results: list[Any] = [None] * total
    failures: list[str] = []

    async def lane() -> None:
        for i in counter:
            r = await call(i)
            if r.status_code not in ok:
                failures.append(f"{r.status_code} {r.text[:200]}")
            elif r.headers.get("content-type", "").startswith("application/json"):
                results[i] = r.json()

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[0]}")
    return total / elapsed, results


async def api_throughput(server: ServerProcess, key: str, total: int, concurrency: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Key {key}"}
    async with httpx.AsyncClient(base_url=server.base, headers=headers, limits=limits, timeout=60) as http:
        await measure_rps(50, concurrency, lambda i: http.get("/health"))  # warm connections
        health_rps, _ = await measure_rps(total, concurrency, lambda i: http.get("/health"))
        submit_rps, submitted = await measure_rps(
            total, concurrency, lambda i: http.post(f"/queue/{T2V}", json={**PAYLOAD, "seed": i}))
        status_urls = [s["status_url"] for s in submitted]
        status_rps, _ = await measure_rps(
            total, concurrency, lambda i: http.get(status_urls[i % len(status_urls)]), ok=(200, 202))
    return {"health_rps": health_rps, "submit_rps": submit_rps, "status_rps": status_rps}


def queue_wait(server: ServerProcess, key: str, samples: int) -> list[float]:
    """Submit to an idle worker one request at a time; the store says when each was started."""
    from motionserve.config import Settings
    from motionserve.jobs.store import Store

    store = Store(Settings(data_dir=server.data_dir).resolved_database_url)
    waits: list[float] = []
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Key {key}"}, timeout=300) as http:
        for i in range(samples + 1):  # the first one loads the models: not a queue wait, dropped
            r = http.post(f"/queue/{T2V}", json={**PAYLOAD, "seed": i})
            r.raise_for_status()
            submitted = r.json()
            deadline = time.monotonic() + 300
            while http.get(submitted["status_url"]).json()["status"] != "COMPLETED":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"request {submitted['request_id']} did not complete")
                time.sleep(0.05)
            job = store.get(submitted["request_id"])
            if i > 0 and job is not None and job.started_at is not None:
                waits.append(_seconds(job.started_at) - _seconds(job.created_at))
    return waits


def _seconds(value: Any) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per throughput phase")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--wait-samples", type=int, default=8, help="queued requests timed for the wait figure")
    args = parser.parse_args()

    figures: dict[str, Any] = {"requests": args.requests, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="motionserve-bench-") as tmp:
        root = Path(tmp)
        api = ServerProcess(root / "api", workers=False, log=root / "api.log")
        try:
            figures.update(asyncio.run(api_throughput(api, api.create_key(), args.requests, args.concurrency)))
        finally:
            api.stop()
        full = ServerProcess(root / "full", workers=True, log=root / "full.log")
        try:
            waits = queue_wait(full, full.create_key(), args.wait_samples)
        finally:
            full.stop()
    figures["submit_vs_health"] = figures["submit_rps"] / figures["health_rps"]
    figures["status_vs_health"] = figures["status_rps"] / figures["health_rps"]
    figures["queue_wait_median_s"] = statistics.median(waits) if waits else None
    figures["queue_wait_samples_s"] = [round(w, 4) for w in waits]
    for name in ("health_rps", "submit_rps", "status_rps"):
        print(f"{name:>12}: {figures[name]:8.1f} req/s")
    print(f"  queue wait: median {figures['queue_wait_median_s']} s over {len(waits)} requests")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
