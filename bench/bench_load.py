"""Load and soak: many concurrent clients against one real node, on SQLite and on PostgreSQL.

One `motionserve serve` (its in-process worker on tiny weights, one model process) per backend, on
127.0.0.1. `--clients` asyncio clients (httpx, one connection pool each, all in this one process) loop
for `--duration` seconds over a weighted mix of what fal clients do:

- `submit`: POST /queue/{text-to-video} (64x64, 4 frames, 2 steps: a short job), only while fewer than
  `--max-pending` submitted jobs are unfinished, so the queue stays bounded and drains in bounded time;
- `status`: GET .../status (with `?logs=1` every other time) of a pending or finished job;
- `stream`: GET .../status/stream (SSE) of a pending job, read until COMPLETED (or `--stream-max-s`,
  then closed as a client going away would), or of a finished one (one event, then the server ends it);
- `upload`: the fal storage flow of the JS client: POST /rest/storage/upload/initiate, PUT the bytes to
  `upload_url`, then GET `file_url` and compare the bytes;
- `result`: GET the response URL of a COMPLETED job and download its MP4 (`video.url`).

Each client waits `--think-s` (0.5-1.5x at random) between actions. After the load phase the
remaining jobs get `--drain-s` to finish; every accepted submit must end COMPLETED with a result whose
MP4 downloads (`jobs.lost` counts those that do not). Errors are counted by route and kind: any 5xx,
transport error (timeouts included), unexpected status or wrong body. The API process's RSS (VmRSS of
the server process itself; the model process is its child and not counted) at the start, after
`--warmup-s` of load and at the end: growth after the warm-up is the leak figure.

Not a test: figures depend on the machine. Loopback only; PostgreSQL gets a fresh database per run,
dropped after. Bounded: load `--duration`, drain `--drain-s`, every request `--request-timeout-s`.
The LAST line printed is one JSON object.

    python bench/bench_load.py [--duration 300] [--clients 64] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import BenchServer, cpu_seconds, rounded  # noqa: E402
from bench_scale import BACKENDS, DEFAULT_ADMIN_URL, database, open_store  # noqa: E402
from tests.e2e.server import ManagedProcess, base_env, free_port  # noqa: E402

T2V = "fal-ai/fast-animatediff/text-to-video"
JOB = {"prompt": "a lighthouse in a storm", "video_size": {"width": 64, "height": 64}, "num_frames": 4,
       "num_inference_steps": 2, "fps": 8}
MIX = {"status": 40, "stream": 10, "submit": 20, "upload": 10, "result": 20}
UPLOAD_BYTES = 32 * 1024
TARGETS = {"errors": 0, "jobs_lost": 0, "rss_growth_after_warmup_mb": 50}


# ---- the node ----------------------------------------------------------------------------------------


@contextmanager
def node(backend: str, root: Path, admin_url: str) -> Iterator[tuple[BenchServer, str, Any]]:
    """`motionserve serve` with its worker, on its own database; the server, an API key and a `Store` on
    the same database (to read why a job failed). The model process gets one thread, so one core is
    left for the API and the clients."""
    data_dir = root / f"node-{backend}"
    with database(backend, data_dir, admin_url) as url:
        _, store = open_store(data_dir, url)
        key_id, secret = store.create_key("bench", "bench_load")
        port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir), "--weights", "tiny",
                "--devices", "cpu", *(["--database-url", url] if url else [])]
        env = base_env({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        server = BenchServer(data_dir, port, ManagedProcess(f"load-{backend}", args, root / f"load-{backend}.log", env).start())
        try:
            server._wait_healthy()
            yield server, f"{key_id}:{secret}", store
        finally:
            server.stop()
            store.close()


def rss_mb(pid: int) -> float | None:
    """VmRSS of one process (not its children) in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ---- what the clients share ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Requests, errors and latencies by route, and every job accepted."""

    requests: Counter = field(default_factory=Counter)
    errors: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    error_samples: list[str] = field(default_factory=list)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # accepted, not yet seen COMPLETED
    done: dict[str, dict[str, str]] = field(default_factory=dict)  # seen COMPLETED, result not yet checked
    completed: dict[str, dict[str, str]] = field(default_factory=dict)  # result and MP4 fetched
    failed: dict[str, str] = field(default_factory=dict)  # COMPLETED with an error, or a bad result
    submitting: int = 0  # submits in flight, counted against --max-pending
    stream_hangups: int = 0  # streams the client closed before COMPLETED (not an error)

    def error(self, route: str, kind: str, detail: str = "") -> None:
        self.errors[route][kind] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{route} {kind} {detail}"[:300])

    def saw_status(self, job_id: str, body: dict[str, Any]) -> None:
        if body.get("status") != "COMPLETED" or job_id not in self.pending:
            return
        urls = self.pending.pop(job_id)
        if body.get("error"):
            self.failed[job_id] = f"{body.get('error_type')}: {body.get('error')}"
        else:
            self.done[job_id] = urls

    def any_job(self, rng: random.Random) -> dict[str, str] | None:
        pool = self.pending or self.done or self.completed
        return pool[rng.choice(list(pool))] if pool else None


class Client:
    """One simulated user: its own connection pool, looping over the weighted mix."""

    def __init__(self, base_url: str, key: str, tally: Tally, args: argparse.Namespace, seed: int) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Key {key}"},
                                      timeout=args.request_timeout_s, limits=httpx.Limits(max_connections=4))
        self.tally, self.args, self.rng = tally, args, random.Random(seed)
        self.polls = 0
        self.until = math.inf

    async def run(self, until: float) -> None:
        self.until = until
        try:
            while time.monotonic() < until:
                await self.act(self.pick())
                await asyncio.sleep(self.args.think_s * self.rng.uniform(0.5, 1.5))
        finally:
            await self.http.aclose()

    def pick(self) -> str:
        t = self.tally
        weights = dict(MIX)
        if len(t.pending) + t.submitting >= self.args.max_pending:
            weights.pop("submit")
        if not (t.pending or t.done or t.completed):
            for needs_a_job in ("status", "stream", "result"):
                weights.pop(needs_a_job)
        return self.rng.choices(list(weights), list(weights.values()))[0]

    async def act(self, action: str) -> None:
        try:
            await getattr(self, action)()
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            self.tally.error(action, f"transport:{type(exc).__name__}", str(exc))
        except (ValueError, KeyError, TypeError) as exc:  # a 200 whose body is not what fal clients read
            self.tally.error(action, "bad_body", repr(exc))

    async def call(self, route: str, method: str, url: str, ok: tuple[int, ...] = (200,), **kw: Any) -> httpx.Response | None:
        """One timed request; None (and an error counted) unless its status is one of `ok`."""
        started = time.perf_counter()
        try:
            r = await self.http.request(method, url, **kw)
        except httpx.TransportError as exc:
            self.tally.requests[route] += 1
            self.tally.error(route, f"transport:{type(exc).__name__}", str(exc))
            return None
        self.tally.requests[route] += 1
        self.tally.latencies[route].append(time.perf_counter() - started)
        if r.status_code not in ok:
            self.tally.error(route, "5xx" if r.status_code >= 500 else f"unexpected:{r.status_code}", r.text[:200])
            return None
        return r

    async def submit(self) -> None:
        self.tally.submitting += 1
        try:
            r = await self.call("submit", "POST", f"/queue/{T2V}", json={**JOB, "seed": self.rng.randrange(2**31)})
        finally:
            self.tally.submitting -= 1
        if r is not None:
            body = r.json()
            self.tally.pending[body["request_id"]] = {k: body[k] for k in ("request_id", "status_url", "response_url")}

    async def status(self) -> None:
        job = self.tally.any_job(self.rng)
        if job is None:
            return
        self.polls += 1
        logs = {"logs": "1"} if self.polls % 2 else {}
        r = await self.call("status", "GET", job["status_url"], ok=(200, 202), params=logs)
        if r is not None:
            self.tally.saw_status(job["request_id"], r.json())

    async def stream(self) -> None:
        job = self.tally.any_job(self.rng)
        if job is None:
            return
        started = time.perf_counter()
        self.tally.requests["stream"] += 1
        # Hang up after --stream-max-s, or soon after the load phase ends, as an impatient client would.
        limit_s = max(1.0, min(self.args.stream_max_s, self.until - time.monotonic() + 1.0))
        try:
            async with asyncio.timeout(limit_s):
                await self.follow(job, started)
        except TimeoutError:
            self.tally.stream_hangups += 1

    async def follow(self, job: dict[str, str], started: float) -> None:
        async with self.http.stream("GET", f"{job['status_url']}/stream") as r:
            if r.status_code != 200:
                await r.aread()
                self.tally.error("stream", "5xx" if r.status_code >= 500 else f"unexpected:{r.status_code}", r.text[:200])
                return
            events = 0
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                events += 1
                if events == 1:
                    self.tally.latencies["stream_first_event"].append(time.perf_counter() - started)
                body = json.loads(line[5:])
                self.tally.saw_status(job["request_id"], body)
                if body.get("status") == "COMPLETED":
                    break  # the server ends the stream after it anyway
            if events == 0:
                self.tally.error("stream", "ended_without_event")

    async def upload(self) -> None:
        data = os.urandom(UPLOAD_BYTES)
        r = await self.call("upload_initiate", "POST", "/rest/storage/upload/initiate", params={"storage_type": "fal-cdn-v3"},
                            json={"file_name": "load.bin", "content_type": "application/octet-stream"})
        if r is None:
            return
        target = r.json()
        put = await self.call("upload_put", "PUT", target["upload_url"], content=data,
                              headers={"Content-Type": "application/octet-stream"})
        if put is None:
            return
        back = await self.call("file_get", "GET", target["file_url"])
        if back is not None and back.content != data:
            self.tally.error("file_get", "wrong_bytes", f"{len(back.content)} bytes back of {len(data)}")

    async def result(self) -> None:
        t = self.tally
        if t.done:
            job_id = self.rng.choice(list(t.done))
            job = t.done.pop(job_id)
        elif t.completed:
            job = t.completed[self.rng.choice(list(t.completed))]
        else:
            return await self.status()
        if await self.fetch_result(job):
            t.completed[job["request_id"]] = job
        elif job["request_id"] not in t.completed:
            t.failed[job["request_id"]] = "result or video fetch failed"

    async def fetch_result(self, job: dict[str, str]) -> bool:
        r = await self.call("result", "GET", job["response_url"])
        if r is None:
            return False
        url = (r.json().get("video") or {}).get("url")
        if not url:
            self.tally.error("result", "no_video", r.text[:200])
            return False
        video = await self.call("video", "GET", url)
        if video is None:
            return False
        if video.content[4:8] != b"ftyp":
            self.tally.error("video", "not_mp4", repr(video.content[:16]))
            return False
        return True


# ---- one run ----------------------------------------------------------------------------------------------


async def load(server: BenchServer, key: str, args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    pid = server.process.pid
    rss: dict[str, Any] = {"start": rss_mb(pid)}
    samples: list[tuple[float, float | None]] = []
    server_cpu0, client_cpu0 = cpu_seconds([pid]), _own_cpu_s()
    model_pid = server.model_pid()
    started = time.monotonic()
    until = started + args.duration

    async def sample_rss() -> None:
        warmup_at = started + min(args.warmup_s, args.duration)
        while True:
            now = time.monotonic()
            samples.append((now - started, rss_mb(pid)))
            if "after_warmup" not in rss and now >= warmup_at:
                rss["after_warmup"] = rss_mb(pid)
            await asyncio.sleep(min(5.0, max(0.0, warmup_at - now)) or 5.0)

    sampler = asyncio.create_task(sample_rss())
    clients = [Client(server.base_url, key, tally, args, seed=args.seed * 1000 + i) for i in range(args.clients)]
    # Spread the clients' first actions over one think time, as users arriving.
    async def start_late(client: Client, delay: float) -> None:
        await asyncio.sleep(delay)
        await client.run(until)

    await asyncio.gather(*(start_late(c, args.think_s * i / args.clients) for i, c in enumerate(clients)))
    load_s = time.monotonic() - started
    server_cpu_load, client_cpu_load = cpu_seconds([pid]) - server_cpu0, _own_cpu_s() - client_cpu0
    model_pid = model_pid or server.model_pid()
    drain_s = await drain(server.base_url, key, tally, args)
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    rss["end"] = rss_mb(pid)
    rss["peak_during_load"] = max((r for _, r in samples if r is not None), default=None)
    if rss.get("after_warmup") is not None and rss["end"] is not None:
        rss["growth_after_warmup"] = rss["end"] - rss["after_warmup"]
    rss["samples"] = [[round(t), round(r, 1)] for t, r in samples[:: max(1, len(samples) // 20)] if r is not None]

    lost = {**{j: "not COMPLETED" for j in tally.pending}, **{j: "result not fetched" for j in tally.done}, **tally.failed}
    submitted = tally.requests["submit"] - sum(tally.errors["submit"].values())
    return {
        "load_s": load_s,
        "requests": dict(tally.requests),
        "requests_per_s": sum(tally.requests.values()) / load_s,
        "errors": {route: dict(kinds) for route, kinds in tally.errors.items() if kinds},
        "errors_total": sum(sum(kinds.values()) for kinds in tally.errors.values()),
        "error_samples": tally.error_samples,
        "stream_hangups": tally.stream_hangups,
        "latency_ms": {route: percentiles(values) for route, values in sorted(tally.latencies.items())},
        "jobs": {"submitted": submitted, "completed": len(tally.completed), "lost": len(lost),
                 "lost_samples": dict(list(lost.items())[:10]), "drain_s": drain_s,
                 "per_s": len(tally.completed) / (load_s + drain_s)},
        "rss_mb": rss,
        "cpu": {"client_s": client_cpu_load, "client_pct_of_core": 100 * client_cpu_load / load_s,
                "api_s": server_cpu_load, "api_pct_of_core": 100 * server_cpu_load / load_s,
                "model_process_s": cpu_seconds([model_pid]) if model_pid else None},
    }


async def drain(base_url: str, key: str, tally: Tally, args: argparse.Namespace) -> float:
    """After the load: poll the unfinished jobs until COMPLETED (at most `--drain-s`), then fetch every
    result not yet fetched. Errors here count as everywhere else."""
    started = time.monotonic()
    client = Client(base_url, key, tally, args, seed=-1)
    try:
        while tally.pending and time.monotonic() - started < args.drain_s:
            for job in list(tally.pending.values()):
                r = await client.call("status", "GET", job["status_url"], ok=(200, 202))
                if r is not None:
                    tally.saw_status(job["request_id"], r.json())
            await asyncio.sleep(0.5)
        for job_id in list(tally.done):
            job = tally.done.pop(job_id)
            if await client.fetch_result(job):
                tally.completed[job_id] = job
            else:
                tally.failed[job_id] = "result or video fetch failed"
    finally:
        await client.http.aclose()
    return time.monotonic() - started


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": ordered[-1] * 1000}


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_backend(backend: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    with node(backend, root, args.postgres_admin_url) as (server, key, store):
        warm_up_model(server, key)
        load_before = os.getloadavg()[0]
        figures = asyncio.run(load(server, key, args))
        figures["loadavg_1m"] = [load_before, os.getloadavg()[0]]
        for job_id in figures["jobs"]["lost_samples"]:  # the store says why, where the status only says "failed"
            job = store.get(job_id)
            errors = [line.message[-1500:] for line in store.logs(job_id, 0) if line.level == "ERROR"]
            figures["jobs"]["lost_samples"][job_id] = {"bench": figures["jobs"]["lost_samples"][job_id],
                                                       "state": job and job.state.value, "error": job and job.error,
                                                       "error_logs": errors}
    return figures


def warm_up_model(server: BenchServer, key: str) -> None:
    """One job before the clock starts: the model process loads its pipelines on first use."""
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Key {key}"}, timeout=60) as http:
        r = http.post(f"/queue/{T2V}", json=JOB)
        r.raise_for_status()
        deadline = time.monotonic() + 600
        while (status := http.get(r.json()["status_url"], params={"logs": "1"}).json())["status"] != "COMPLETED":
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up job did not complete in 600 s")
            time.sleep(0.2)
        if status.get("error"):
            errors = [line["message"] for line in status.get("logs") or [] if line.get("level") == "ERROR"]
            raise RuntimeError(f"the warm-up job failed: {status.get('error')}\n" + "\n".join(errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load per backend")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--warmup-s", type=float, default=60.0, help="RSS is read again this long into the load")
    parser.add_argument("--think-s", type=float, default=0.5, help="mean pause of a client between actions")
    parser.add_argument("--max-pending", type=int, default=16, help="no submits while this many jobs are unfinished")
    parser.add_argument("--stream-max-s", type=float, default=30.0, help="a status stream is closed after this long")
    parser.add_argument("--drain-s", type=float, default=180.0, help="after the load, how long unfinished jobs get")
    parser.add_argument("--request-timeout-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-log", action="store_true", help="copy each server's log to ./load-{backend}.log")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backends {sorted(unknown)}")

    out: dict[str, Any] = {"duration_s": args.duration, "clients": args.clients, "think_s": args.think_s,
                           "max_pending": args.max_pending, "warmup_s": args.warmup_s, "mix": MIX, "job": JOB,
                           "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="motionserve-load-") as tmp:
        for backend in backends:
            figures = run_backend(backend, Path(tmp), args)
            if args.keep_log:
                shutil.copy(Path(tmp) / f"load-{backend}.log", Path(f"load-{backend}.log"))
            out[backend] = figures
            lat = figures["latency_ms"]
            print(f"{backend:>10}: {sum(figures['requests'].values())} requests ({figures['requests_per_s']:.0f}/s), "
                  f"errors {figures['errors_total']}, jobs {figures['jobs']['completed']}/{figures['jobs']['submitted']} "
                  f"lost {figures['jobs']['lost']}, status p50/p99 {lat.get('status', {}).get('p50', 0):.0f}/"
                  f"{lat.get('status', {}).get('p99', 0):.0f} ms, RSS {figures['rss_mb']}", flush=True)
    out["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps(rounded(out, 2)))


if __name__ == "__main__":
    main()
