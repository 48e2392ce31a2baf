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
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchServer  # noqa: E402

T2V = "fal-ai/fast-animatediff/text-to-video"
PAYLOAD = {"prompt": "bench", "video_size": {"width": 64, "height": 64}, "num_frames": 8, "num_inference_steps": 2, "fps": 8}


def start_server(root: Path, name: str, *, workers: bool) -> BenchServer:
    return BenchServer.start(root / name, weights="tiny", log_dir=root, name=name, workers=workers)


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


async def api_throughput(server: BenchServer, key: str, total: int, concurrency: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Key {key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, limits=limits, timeout=60) as http:
        await measure_rps(50, concurrency, lambda i: http.get("/health"))  # warm connections
        health_rps, _ = await measure_rps(total, concurrency, lambda i: http.get("/health"))
        submit_rps, submitted = await measure_rps(
            total, concurrency, lambda i: http.post(f"/queue/{T2V}", json={**PAYLOAD, "seed": i}))
        status_urls = [s["status_url"] for s in submitted]
        status_rps, _ = await measure_rps(
            total, concurrency, lambda i: http.get(status_urls[i % len(status_urls)]), ok=(200, 202))
    return {"health_rps": health_rps, "submit_rps": submit_rps, "status_rps": status_rps}


def queue_wait(server: BenchServer, key: str, samples: int) -> list[float]:
    """Submit to an idle worker one request at a time; the store says when each was started."""
    from motionserve.config import Settings
    from motionserve.jobs.store import Store

    store = Store(Settings(data_dir=server.data_dir).resolved_database_url)
    waits: list[float] = []
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Key {key}"}, timeout=300) as http:
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
        api = start_server(root, "api", workers=False)
        try:
            figures.update(asyncio.run(api_throughput(api, api.create_key(), args.requests, args.concurrency)))
        finally:
            api.stop()
        full = start_server(root, "full", workers=True)
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
