"""Cold start: seconds from `motionserve worker` start to "ready" and to its first finished request,
with the endpoint's pipelines preloaded (`MOTIONSERVE_PRELOAD`) and without (loaded on first use).

One API server (`serve --no-workers`) per endpoint. Each run starts a fresh `motionserve worker` (one
device, `--metrics-port`) and times, from just before the process is spawned:

- `ready_s`: its `/ready` answers 200 (polled every 0.05 s): the model process is up and, with
  preload, the pipelines are loaded. This is when a readiness probe lets traffic count on it.
- `first_done_s`: the first request, submitted the moment the worker is ready (as an autoscaler or a
  rolling update would send work), is COMPLETED and its MP4 downloaded (status polled every 0.1 s).
- `first_request_s` = `first_done_s` - `ready_s`: what that first client waited. With preload it is a
  warm request; without, it includes loading the pipelines (its log then says so: `cold_log`).
- `warm_request_s`: a second request on the same worker, for comparison.

The modes alternate (`--repeats` runs each) so both see the same machine and page cache; the very first
run of a session also pays for reading the checkpoint files from disk. Medians go in `cold_start_s`:

    python bench/bench_cold_start.py --endpoint t2v[,turbo,...] [--size tiny|small|full] [--repeats N]
                                     [--steps N] [--device cpu|cuda] [--threads N]

Human-readable lines first; the LAST line is one JSON object with every figure. Not a test: see
bench/README.md ("Cold start").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _weights  # noqa: E402
from _cases import CASES, Case, chosen_endpoints, with_steps  # noqa: E402
from _common import BenchServer, QueueClient, machine_info, median, rounded  # noqa: E402

from tests.e2e.server import ManagedProcess, base_env, free_port  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "motionserve-bench"
READY_POLL_S = 0.05
STARTUP_TIMEOUT_S = 1800.0
MODES = {"preload": True, "lazy": False}


def wait_ready(worker: ManagedProcess, port: int, started: float) -> float:
    """Seconds from `started` until the worker's /ready answers 200."""
    import httpx

    deadline = started + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=5) as http:
        while time.perf_counter() < deadline:
            if not worker.alive():
                raise RuntimeError(f"worker exited before it was ready; log {worker.log_path}:\n{worker.log()[-3000:]}")
            try:
                if http.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(READY_POLL_S)
    raise RuntimeError(f"worker not ready after {STARTUP_TIMEOUT_S:.0f}s; log {worker.log_path}")


def one_run(case: Case, payload: dict[str, Any], preload: bool, server: BenchServer, client: QueueClient,
            args: argparse.Namespace, weights: _weights.Weights, log_dir: Path, n: int) -> dict[str, Any]:
    from motionserve.jobs.runner import COLD_START_LOG

    port = free_port()
    env = {"MOTIONSERVE_PRELOAD": case.key} if preload else {}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    worker = ManagedProcess(
        f"worker-{case.key}-{'preload' if preload else 'lazy'}-{n}",
        ["worker", "--data-dir", str(server.data_dir), "--weights", weights.server_arg, "--devices", args.device,
         "--metrics-port", str(port)],
        log_dir / f"worker-{n}.log", base_env(env),
    )
    started = time.perf_counter()
    worker.start()
    try:
        ready_s = wait_ready(worker, port, started)
        submitted = client.submit(case.endpoint_id, payload)
        first = client.wait(case.endpoint_id, submitted)
        first_done_s = time.perf_counter() - started
        status = client.http.get(submitted["status_url"], params={"logs": 1}).json()
        cold_log = COLD_START_LOG in [line["message"] for line in status.get("logs") or []]
        warm = client.run(case.endpoint_id, payload)
    finally:
        worker.stop()
    return {"ready_s": ready_s, "first_done_s": first_done_s, "first_request_s": first_done_s - ready_s,
            "first_handler_s": first.inference_time, "warm_request_s": warm.seconds, "cold_log": cold_log}


def bench_endpoint(case: Case, args: argparse.Namespace, weights: _weights.Weights, workdir: Path) -> dict[str, Any]:
    request = with_steps(case.request(None), args.steps)
    server = BenchServer.start(workdir / "data", weights=weights.server_arg, log_dir=workdir / "logs",
                               name=f"api-{case.key}", workers=False)
    client = QueueClient(server.base_url, server.create_key())
    try:
        payload = dict(request.payload)
        for field, (data, content_type, file_name) in request.media.items():
            payload[field] = client.upload(data, content_type=content_type, file_name=file_name)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        numbers = itertools.count()
        for _ in range(args.repeats):
            for mode, preload in MODES.items():
                run = one_run(case, payload, preload, server, client, args, weights, workdir / "logs", next(numbers))
                runs[mode].append(run)
                print(f"[{case.key}] {mode:>7}: ready {run['ready_s']:.2f} s, first request done {run['first_done_s']:.2f} s "
                      f"(that request {run['first_request_s']:.2f} s, handler {run['first_handler_s'] or 0:.2f} s, "
                      f"cold log {run['cold_log']}), a warm request {run['warm_request_s']:.2f} s", flush=True)
    finally:
        client.close()
        server.stop()
    figures = {mode: {key: median(r[key] for r in rs) for key in ("ready_s", "first_done_s", "first_request_s",
                                                                     "first_handler_s", "warm_request_s")}
               for mode, rs in runs.items()}
    return {"cold_start_s": figures, "runs": runs, "frames": request.frames,
            "steps": request.payload.get("num_inference_steps", request.payload.get("steps"))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--endpoint", default="t2v", help=f"{', '.join(CASES)}, a comma-separated list, or all")
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (preload, lazy), alternating")
    parser.add_argument("--steps", type=int, help="override the request's step count (quick checks)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads of the model process (1: steady figures on a shared machine)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where built weights are kept")
    args = parser.parse_args(argv)
    args.endpoints = chosen_endpoints(parser, args.endpoint)
    if args.device == "cuda":
        args.device = "cuda:0"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info(args.device)
    weights = _weights.prepare_for(args)
    results: dict[str, Any] = {}
    for key in args.endpoints:
        with tempfile.TemporaryDirectory(prefix="motionserve-cold-") as tmp:
            results[key] = bench_endpoint(CASES[key], args, weights, Path(tmp))
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    machine["wall_s"] = round(time.perf_counter() - started, 1)
    summary = {"cold_start_s": {k: r["cold_start_s"] for k, r in results.items()}, "endpoints": results,
               "machine": machine, "size": args.size, "repeats": args.repeats, "steps": args.steps or "default",
               "threads": args.threads or "default"}
    print(json.dumps(rounded(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
