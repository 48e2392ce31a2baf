"""Fleet benchmark: how fast work starts, how the API holds up, and how far one PostgreSQL store goes.

Five figures, each on what a fleet runs (SQLite beside it where the figure has a single-host form):

1. `start_latency_s`: a FREE, idle worker's start latency: `started_at - created_at` of a job (both
   stamped by the database clock), submitted one at a time with idle gaps. The worker is the real
   `WorkerSupervisor` with its own `ChangeWatcher` thread in this process, as `motionserve worker` runs
   them, and a real model process on tests/jobs/jobs_fake_registry.py (`test/echo`: no model, no
   steps): LISTEN/NOTIFY on PostgreSQL, the watcher's 0.2 s poll on SQLite.
2. `rps`: GET /health, submit and status requests/s against one `motionserve serve --no-workers`
   (16 concurrent httpx clients, as bench_service.py), per backend.
3. `streams`: the median latency of GET /health, probed one at a time from another process, idle and
   then while 200 SSE status streams wait on queued jobs, with the queue moving (a job submitted and a
   job ahead of the streamed ones cancelled, `--queue-moves-per-s` times a second (default 2): every
   stream has news each time).
4. `warm_claiming`: pipeline loads of two workers running a mixed queue of the four endpoints, with the
   default claim preference and with `warm_claim_max_wait_s=0` (MOTIONSERVE_WARM_CLAIM_MAX_WAIT_S=0:
   age always wins). Model processes on bench/_warm_registry.py: one pipeline group held at a time.
5. `fleet_claims_per_s`: claim -> finish cycles per second of many concurrent claimers, each its own
   `Store`, spread over a few processes, against one PostgreSQL database pre-filled with queued jobs,
   with every job's claims counted in the database afterwards (`claimed_twice` must be 0).
6. `claim_cost`: what one claim costs with a deep queue (`--fair-jobs` 12 000 queued, 3/4 of them one
   owner's, the rest spread over 40 owners): PostgreSQL's execution time of the claim's SELECT
   (EXPLAIN ANALYZE) and one claimer's claim -> finish cycle, plain, with a per-owner running limit
   and with a worker's warm preference; a submit's time with that queue; and fairness: the slot in
   which one job of a newcomer starts behind another owner's 20.

Not a test: figures depend on the machine and what else runs on it. Loopback only; each PostgreSQL
figure gets a fresh database, dropped afterwards. The LAST line printed is one JSON object.

    python bench/bench_scale.py [--only start,rps,streams,warm,fleet,claims] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (BENCH, REPO, REPO / "tests" / "jobs"):  # _common & co, tests.e2e, jobs_fake_registry
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _common import BenchServer, cpu_seconds, rounded  # noqa: E402
from bench_service import PAYLOAD, T2V, measure_rps  # noqa: E402
from tests.e2e.server import ManagedProcess, base_env, free_port  # noqa: E402

SECTIONS = ("start", "rps", "streams", "warm", "fleet", "claims")
BACKENDS = ("sqlite", "postgresql")
DEFAULT_ADMIN_URL = os.environ.get("MOTIONSERVE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TARGETS = {"start_latency_s_postgresql": 0.05, "streams_ratio": 2.0, "fleet_jobs_per_s": 500, "claimed_twice": 0}
WAIT_S = 120.0  # bounds every wait for a job; only a hung run reaches it
PROBE_MAX_S = 20.0  # a /health latency probe stops after this long, however slow the server is


# ---- databases ---------------------------------------------------------------------------------------


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for the duration (as tests/services.py makes them); its URL."""
    from sqlalchemy import create_engine, text

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{admin_url.rpartition('/')[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database(backend: str, data_dir: Path, admin_url: str) -> Iterator[str | None]:
    """The database URL a section uses: None for SQLite (the default file in `data_dir`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        yield None
    else:
        with postgres_database(admin_url) as url:
            yield url


def open_store(data_dir: Path, url: str | None, **settings: Any) -> tuple[Any, Any]:
    """Settings and a migrated Store, as a worker process opens them."""
    from motionserve.config import Settings
    from motionserve.jobs.store import Store

    config = Settings(data_dir=data_dir, database_url=url, **settings)
    store = Store(config.resolved_database_url)
    store.create_all()
    return config, store


def wait_finished(store: Any, job_ids: list[str], poll_s: float = 0.02) -> list[Any]:
    """Poll until every job is terminal; the jobs. (Only this process polls: the workers wait on
    their change watcher.)"""
    deadline = time.monotonic() + WAIT_S
    pending = set(job_ids)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs did not finish within {WAIT_S:.0f}s")
        pending = {i for i in pending if not store.get(i).is_terminal}
        if pending:
            time.sleep(poll_s)
    return [store.get(i) for i in job_ids]


@contextmanager
def workers(config: Any, store: Any, registry: str, count: int) -> Iterator[list[Any]]:
    """`count` worker supervisors and one change watcher on threads of this process, as
    `motionserve worker` runs them (one store, `BackgroundServices`)."""
    from motionserve.api.server import BackgroundServices
    from motionserve.jobs.changes import ChangeWatcher
    from motionserve.jobs.worker import WorkerSupervisor

    services = BackgroundServices()
    changes = ChangeWatcher(store)
    services.add("job-changes", changes.run_forever)
    supervisors = [
        WorkerSupervisor(config, store, "cpu", f"bench-worker-{i}", changes=changes, registry_module=registry)
        for i in range(count)
    ]
    for i, supervisor in enumerate(supervisors):
        services.add(f"worker-{i}", supervisor.run_forever)
    services.start()
    try:
        yield supervisors
    finally:
        services.stop()


# ---- 1. start latency --------------------------------------------------------------------------------


def start_latency(backend: str, root: Path, admin_url: str, samples: int, gap_s: float) -> dict[str, Any]:
    with database(backend, root / f"start-{backend}", admin_url) as url:
        config, store = open_store(root / f"start-{backend}", url)
        try:
            with workers(config, store, "jobs_fake_registry", 1):
                waits = []
                for i in range(samples + 1):  # the first one waits for the model process: dropped
                    job = store.submit(owner="bench", endpoint_id="test/echo", input={"steps": 0}, base_url="http://127.0.0.1")
                    done = wait_finished(store, [job.id])[0]
                    if done.error:
                        raise RuntimeError(f"echo job failed: {done.error}")
                    if i > 0:
                        waits.append(done.started_at - done.created_at)
                    # The worker is idle again, waiting on its watcher. A random gap, so that submits fall
                    # anywhere in the SQLite watcher's poll cycle, not in step with it.
                    time.sleep(gap_s * random.uniform(1.0, 2.0))
        finally:
            store.close()
    return {**spread(waits), "samples": len(waits), "gap_s": gap_s,
            "wakeup": "LISTEN/NOTIFY" if backend == "postgresql" else "change watcher polls every 0.2 s"}


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
            "min": ordered[0], "max": ordered[-1]}


# ---- 2./3. the API: requests/s and status streams -----------------------------------------------------


@contextmanager
def api_server(backend: str, root: Path, admin_url: str, name: str) -> Iterator[tuple[BenchServer, str]]:
    """`motionserve serve --no-workers` on its own database; the server and an API key."""
    data_dir = root / name
    with database(backend, data_dir, admin_url) as url:
        port = free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
                "--weights", "tiny", "--no-workers", *(["--database-url", url] if url else [])]
        server = BenchServer(data_dir, port, ManagedProcess(name, args, root / f"{name}.log", base_env()).start())
        try:
            server._wait_healthy()
            _, store = open_store(data_dir, url)
            key_id, secret = store.create_key("bench", "bench_scale")
            store.close()
            yield server, f"{key_id}:{secret}"
        finally:
            server.stop()


async def api_rps(server: BenchServer, key: str, total: int, concurrency: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": f"Key {key}"}, limits=limits, timeout=60) as http:
        await measure_rps(50, concurrency, lambda i: http.get("/health"))  # warm connections
        health, _ = await measure_rps(total, concurrency, lambda i: http.get("/health"))
        submit, submitted = await measure_rps(total, concurrency, lambda i: http.post(f"/queue/{T2V}", json={**PAYLOAD, "seed": i}))
        urls = [s["status_url"] for s in submitted]
        status, _ = await measure_rps(total, concurrency, lambda i: http.get(urls[i % len(urls)]), ok=(200, 202))
    return {"health_rps": health, "submit_rps": submit, "status_rps": status,
            "submit_vs_health": submit / health, "status_vs_health": status / health}


def probe_health(base_url: str, samples: int, pace_s: float, max_s: float = PROBE_MAX_S) -> list[float]:
    """GET /health one at a time (`samples` times, or fewer once `max_s` have passed); each latency in
    seconds. Runs in a process of its own, so the streams' client work in this one does not delay it."""
    latencies: list[float] = []
    with httpx.Client(base_url=base_url, timeout=60) as http:
        http.get("/health")
        until = time.monotonic() + max_s
        while len(latencies) < samples and time.monotonic() < until:
            started = time.perf_counter()
            http.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(pace_s)
    return latencies


async def stream_load(server: BenchServer, key: str, streams: int, probes: int, moves_per_s: float,
                      prober: ProcessPoolExecutor, postgres: bool) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pace_s = 0.02
    fillers_needed = int(moves_per_s * PROBE_MAX_S) + 10  # jobs ahead of the streamed ones, cancelled as the queue moves
    limits = httpx.Limits(max_connections=streams + 16, max_keepalive_connections=streams + 16)
    headers = {"Authorization": f"Key {key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(60, read=None)) as http:
        async def submit(i: int) -> httpx.Response:
            return await http.post(f"/queue/{T2V}", json={**PAYLOAD, "seed": i})

        async def probe() -> tuple[list[float], dict[str, float | None]]:
            """/health latencies, and the CPU the server and PostgreSQL used meanwhile (% of one core)."""
            server_cpu, pg_cpu, started = cpu_seconds([server.process.pid]), postgres_cpu_s(), time.perf_counter()
            latencies = await loop.run_in_executor(prober, probe_health, server.base_url, probes, pace_s)
            window_s = time.perf_counter() - started
            pg_after = postgres_cpu_s()
            return latencies, {
                "window_s": window_s,
                "server_cpu_pct": 100 * (cpu_seconds([server.process.pid]) - server_cpu) / window_s,
                "postgres_cpu_pct": 100 * sum(t - pg_cpu.get(pid, 0.0) for pid, t in pg_after.items()) / window_s
                if postgres else None,
            }

        _, ahead = await measure_rps(fillers_needed, 8, submit)
        _, watched = await measure_rps(streams, 8, submit)
        idle, idle_use = await probe()

        events = {"opened": 0, "data": 0}
        all_open = asyncio.Event()

        async def follow(status_url: str) -> None:
            async with http.stream("GET", f"{status_url}/stream") as r:
                r.raise_for_status()
                first = True
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        events["data"] += 1
                        if first:
                            first = False
                            events["opened"] += 1
                            if events["opened"] == streams:
                                all_open.set()

        async def move_queue() -> None:
            for i in itertools.count():
                await submit(fillers_needed + streams + i)  # a new job behind the streamed ones
                if i < len(ahead):
                    (await http.put(ahead[i]["cancel_url"])).raise_for_status()  # one ahead leaves the queue
                await asyncio.sleep(1 / moves_per_s)

        tasks = [asyncio.create_task(follow(w["status_url"])) for w in watched]
        try:
            await asyncio.wait_for(all_open.wait(), WAIT_S)
            before = events["data"]
            tasks.append(asyncio.create_task(move_queue()))
            loaded, loaded_use = await probe()
            sent = events["data"] - before
            if tasks[-1].done():
                tasks[-1].result()  # the queue stopped moving: say why
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    idle_ms, loaded_ms = statistics.median(idle) * 1000, statistics.median(loaded) * 1000
    return {"health_ms_idle": idle_ms, f"health_ms_{streams}_streams": loaded_ms, "ratio": loaded_ms / idle_ms,
            "health_ms_p90_idle": spread(idle)["p90"] * 1000, "health_ms_p90_streams": spread(loaded)["p90"] * 1000,
            "streams": streams, "queue_moves_per_s": moves_per_s, "sse_events_per_s": sent / loaded_use["window_s"],
            "sse_events_per_s_due": moves_per_s * streams, "probes": [len(idle), len(loaded)], "idle": idle_use, "with_streams": loaded_use}


# ---- 4. warm-aware claiming ----------------------------------------------------------------------------


def warm_claiming(backend: str, root: Path, admin_url: str, jobs: int, seed: int) -> dict[str, Any]:
    from _warm_registry import ENDPOINTS, LOAD_S, RUN_S

    endpoint_ids = list(ENDPOINTS)
    order = [endpoint_ids[i % len(endpoint_ids)] for i in range(jobs)]
    random.Random(seed).shuffle(order)
    figures: dict[str, Any] = {"backend": backend, "jobs": jobs, "workers": 2, "load_s": LOAD_S, "run_s": RUN_S,
                               "order_seed": seed}
    for label, max_wait in (("preference", None), ("no_preference", 0.0)):
        data_dir = root / f"warm-{label}"
        with database(backend, data_dir, admin_url) as url:
            config, store = open_store(data_dir, url, **({} if max_wait is None else {"warm_claim_max_wait_s": max_wait}))
            try:
                ids = [store.submit(owner="bench", endpoint_id=e, input={}, base_url="http://127.0.0.1").id for e in order]
                with workers(config, store, "_warm_registry", 2):
                    done = wait_finished(store, ids, poll_s=0.2)
            finally:
                store.close()
        failed = [j.error for j in done if j.result is None]
        if failed:
            raise RuntimeError(f"warm-claiming job failed: {failed[0]}")
        figures[label] = {
            "warm_claim_max_wait_s": config.warm_claim_max_wait_s,
            "loads": sum(1 for j in done if j.result["loaded"]),
            "makespan_s": max(j.finished_at for j in done) - min(j.started_at for j in done),
            "jobs_per_worker": sorted(sum(1 for j in done if j.worker_id == w) for w in {j.worker_id for j in done}),
        }
    return figures


# ---- 5. claims per second of one PostgreSQL store ----------------------------------------------------------


def prefill(store: Any, count: int) -> None:
    """`count` queued jobs in one statement (what `Store.submit` inserts, without its per-job commit)."""
    from sqlalchemy import insert

    from motionserve.database import db_now, jobs

    with store.engine.begin() as conn:
        now = db_now(conn)
        rows = [{"id": str(uuid.uuid4()), "owner": "bench", "endpoint_id": "bench/noop", "input": {}, "state": "queued",
                 "priority": 0, "created_at": now, "changed_at": now, "attempts": 0, "cancel_requested": False,
                 "base_url": "http://127.0.0.1", "no_retry": False} for _ in range(count)]
        conn.execute(insert(jobs), rows)


def claimer_process(url: str, names: list[str], seconds: float, ready: Any, go: Any, close: Any, results: Any) -> None:
    """Claimers on threads, each with its own Store: claim -> finish until `seconds` pass or the queue is empty."""
    from motionserve.jobs.store import Store

    stores = {name: Store(url) for name in names}
    for store in stores.values():
        store.get("warm-up")  # connect before the clock starts
    claimed: dict[str, list[str]] = {name: [] for name in names}
    ends: list[float] = []
    lost = [0]

    def loop(name: str) -> None:
        store, mine = stores[name], claimed[name]
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            job = store.claim(name, 300.0)
            if job is None:
                break
            if not store.finish(job.id, name, result={}):
                lost[0] += 1
            mine.append(job.id)
        ends.append(time.time())

    threads = [threading.Thread(target=loop, args=(name,)) for name in names]
    ready.put(os.getpid())
    go.wait()
    cpu_before = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put({"claimed": claimed, "end": max(ends), "cpu_s": time.process_time() - cpu_before, "lost": lost[0]})
    close.wait()  # keep the connections (and their server processes' CPU counters) until measured
    for store in stores.values():
        store.close()


def postgres_cpu_s() -> dict[int, float]:
    """CPU seconds of the local PostgreSQL server's processes, by pid (empty if it is not local)."""
    import psutil

    seen = {}
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in ("postgres", "postmaster"):
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seen[process.pid] = times.user + times.system
    return seen


def fleet_claims(root: Path, admin_url: str, claimers: int, processes: int, jobs: int, seconds: float) -> dict[str, Any]:
    from sqlalchemy import func, select

    from motionserve.database import jobs as jobs_table

    ctx = mp.get_context("spawn")
    with postgres_database(admin_url) as url:
        _, store = open_store(root / "fleet", url)
        try:
            prefill(store, jobs)
            ready, results, go, close = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
            names = [f"claimer-{i}" for i in range(claimers)]
            procs = [ctx.Process(target=claimer_process, args=(url, names[p::processes], seconds, ready, go, close, results))
                     for p in range(processes)]
            for proc in procs:
                proc.start()
            try:
                for _ in procs:
                    ready.get(timeout=WAIT_S)
                pg_before = postgres_cpu_s()
                started = time.time()
                go.set()
                reports = [results.get(timeout=seconds + WAIT_S) for _ in procs]
                pg_after = postgres_cpu_s()
            finally:
                close.set()
                for proc in procs:
                    proc.join(30)
                    if proc.is_alive():
                        proc.kill()
            by_claimer = {name: ids for report in reports for name, ids in report["claimed"].items()}
            with store.engine.connect() as conn:
                rows = conn.execute(select(jobs_table.c.id, jobs_table.c.worker_id, jobs_table.c.attempts, jobs_table.c.state)
                                    .where(jobs_table.c.state != "queued")).all()
                left = conn.execute(select(func.count()).select_from(jobs_table).where(jobs_table.c.state == "queued")).scalar_one()
        finally:
            store.close()
    elapsed = max(r["end"] for r in reports) - started
    cycles = sum(len(ids) for ids in by_claimer.values())
    pg_cpu = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items()) if pg_after else None
    return {"jobs_per_s": cycles / elapsed, "operations_per_s": 2 * cycles / elapsed, "job_cycles": cycles,
            "seconds": elapsed, "claimers": claimers, "processes": processes, "prefilled": jobs, "left_queued": left,
            "claimed_twice": claimed_twice(by_claimer, rows), "finish_lost_lease": sum(r["lost"] for r in reports),
            "claimer_cpu_ms_per_job": 1000 * sum(r["cpu_s"] for r in reports) / max(cycles, 1),
            "postgres_cpu_ms_per_job": 1000 * pg_cpu / max(cycles, 1) if pg_cpu is not None else None}


def claimed_twice(by_claimer: dict[str, list[str]], rows: list[Any]) -> int:
    """Jobs that more than one claim took: reported by two claimers (or twice by one), run more than
    once by the database's count (`attempts`), held by another worker than the one that reported
    it, or finished in the database without any claimer having reported it."""
    reporter: dict[str, str] = {}
    twice: set[str] = set()
    for name, ids in by_claimer.items():
        for job_id in ids:
            if job_id in reporter:
                twice.add(job_id)
            reporter[job_id] = name
    for row in rows:
        if row.attempts != 1 or row.state != "succeeded" or reporter.get(row.id) != row.worker_id:
            twice.add(row.id)
    return len(twice)


# ---- 6. what one claim costs with a deep queue, and fairness --------------------------------------------


def prefill_owners(store: Any, count: int, light_owners: int = 40) -> None:
    """`count` queued jobs in one statement, 3/4 of them one heavy owner's, with the fair_seq one
    submit at a time would have given them (each owner's 1, 2, 3... with nothing running)."""
    from sqlalchemy import insert

    from motionserve.database import db_now, jobs

    fair = "fair_seq" in jobs.c  # absent before fair queuing: run this file on that commit for its figures
    submitted: dict[str, int] = {}
    with store.engine.begin() as conn:
        now = db_now(conn)
        rows = []
        for i in range(count):
            owner = "heavy" if i % 4 else f"light-{i // 4 % light_owners}"
            submitted[owner] = submitted.get(owner, 0) + 1
            rows.append({"id": str(uuid.uuid4()), "owner": owner, "endpoint_id": "bench/noop", "input": {}, "state": "queued",
                         "priority": 0, "created_at": now, "changed_at": now, "attempts": 0, "cancel_requested": False,
                         "base_url": "http://127.0.0.1", "no_retry": False, **({"fair_seq": submitted[owner]} if fair else {})})
        conn.execute(insert(jobs), rows)
        conn.exec_driver_sql("ANALYZE jobs")


def claim_cost(root: Path, admin_url: str, queued: int, cycles: int) -> dict[str, Any]:
    from motionserve.jobs.models import ClaimPreference

    results: dict[str, Any] = {"queued": queued, "cycles": cycles}
    prefer = ClaimPreference(warm_endpoints=frozenset({"bench/other"}), hints=frozenset({"none"}), max_wait_s=30.0)
    variants = {"plain": {}, "running_limit": {"max_running_per_owner": 4}, "warm_preference": {"prefer": prefer}}
    for name, claim in variants.items():
        with postgres_database(admin_url) as url:
            _, store = open_store(root / f"claims-{name}", url)
            try:
                prefill_owners(store, queued)
                select_ms = statistics.median(claim_statement_ms(store, claim) for _ in range(15))
                times = []
                cpu = time.process_time()
                for _ in range(cycles):
                    started = time.perf_counter()
                    job = store.claim("bench", 300.0, **claim)
                    times.append(time.perf_counter() - started)
                    store.finish(job.id, "bench", result={})
                cycle_cpu_s = time.process_time() - cpu
                submits, submit_cpu_s = [], 0.0
                if name == "plain":
                    cpu = time.process_time()
                    submits = [timed_submit(store, f"light-{i % 40}") for i in range(cycles)]
                    submit_cpu_s = time.process_time() - cpu
            finally:
                store.close()
        results[name] = {"select_exec_ms": select_ms, "claim_ms_median": 1000 * statistics.median(times),
                         "claim_ms_p90": 1000 * sorted(times)[int(0.9 * len(times))],
                         "client_cpu_ms_per_cycle": 1000 * cycle_cpu_s / cycles}
        if submits:
            results["submit_ms_median"] = 1000 * statistics.median(submits)
            results["submit_client_cpu_ms"] = 1000 * submit_cpu_s / cycles
    results["newcomer_slot"] = newcomer_slot(root, admin_url)
    return results


def timed_submit(store: Any, owner: str) -> float:
    started = time.perf_counter()
    store.submit(owner=owner, endpoint_id="bench/noop", input={}, base_url="http://127.0.0.1")
    return time.perf_counter() - started


def claim_statement_ms(store: Any, claim: dict[str, Any]) -> float:
    """PostgreSQL's execution time of the SELECT that picks the next job (what `claim` runs first),
    by EXPLAIN ANALYZE of the very statement, in a transaction rolled back afterwards."""
    from sqlalchemy import event

    seen: list[float] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> tuple[str, Any]:
        if not seen and statement.lstrip().upper().startswith("SELECT") and "FOR UPDATE SKIP LOCKED" in statement:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            seen.append(cursor.fetchone()[0][0]["Execution Time"])
            raise _Explained
        return statement, parameters

    event.listen(store.engine, "before_cursor_execute", explain, retval=True)
    try:
        store.claim("bench-explain", 30.0, **claim)
    except _Explained:
        pass
    finally:
        event.remove(store.engine, "before_cursor_execute", explain)
    return seen[0]


class _Explained(Exception):
    """Ends a claim once its SELECT has been explained: the transaction rolls back, nothing claimed."""


def newcomer_slot(root: Path, admin_url: str) -> int:
    """One owner submits 20 jobs and one starts; then another owner submits one: the number of jobs
    that start before it (fair queuing: at most 1; first come, first served: 19)."""
    with postgres_database(admin_url) as url:
        _, store = open_store(root / "newcomer", url)
        try:
            for _ in range(20):
                store.submit(owner="heavy", endpoint_id="bench/noop", input={}, base_url="http://127.0.0.1")
            store.claim("bench", 300.0)
            newcomer = store.submit(owner="newcomer", endpoint_id="bench/noop", input={}, base_url="http://127.0.0.1")
            slot = 0
            while (job := store.claim("bench", 300.0)) is not None and job.id != newcomer.id:
                slot += 1
            return slot
        finally:
            store.close()


# ---- the run ------------------------------------------------------------------------------------------


def machine(admin_url: str, postgres: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                            "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    if postgres:
        from sqlalchemy import create_engine, text

        engine = create_engine(admin_url)
        with engine.connect() as conn:
            info["postgresql"] = conn.execute(text("SHOW server_version")).scalar_one()
        engine.dispose()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="for start, rps, streams (warm uses the last)")
    parser.add_argument("--postgres-admin-url", default=DEFAULT_ADMIN_URL, help="where fresh databases are created")
    parser.add_argument("--start-samples", type=int, default=30)
    parser.add_argument("--start-gap-s", type=float, default=0.2, help="idle time between start-latency jobs (1-2x this)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per rps phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--probes", type=int, default=150, help="GET /health latency samples, idle and with streams")
    parser.add_argument("--queue-moves-per-s", type=float, default=2.0,
                        help="while streaming: a job submitted and one ahead of the streamed ones cancelled, this often")
    parser.add_argument("--warm-jobs", type=int, default=24)
    parser.add_argument("--warm-seed", type=int, default=7)
    parser.add_argument("--claimers", type=int, default=32)
    parser.add_argument("--claimer-processes", type=int, default=4, help="the claimers are spread over these, as threads")
    parser.add_argument("--fleet-jobs", type=int, default=12000, help="queued before the claimers start (enough for ~20 s)")
    parser.add_argument("--fleet-seconds", type=float, default=20.0)
    parser.add_argument("--fair-jobs", type=int, default=12000, help="queued before the claim-cost figures")
    parser.add_argument("--claim-cycles", type=int, default=300, help="claim -> finish cycles timed per claim variant")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    unknown = set(only) - set(SECTIONS) | set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown section or backend: {sorted(unknown)}")

    began = time.perf_counter()
    figures: dict[str, Any] = {"machine": machine(args.postgres_admin_url, "postgresql" in backends or {"fleet", "claims"} & set(only))}
    with tempfile.TemporaryDirectory(prefix="motionserve-scale-") as tmp:
        root = Path(tmp)
        if "start" in only:
            figures["start_latency_s"] = {"how": "WorkerSupervisor + ChangeWatcher threads in this process (as `motionserve "
                                          "worker`), model process on tests/jobs/jobs_fake_registry.py test/echo (no model)"}
            for backend in backends:
                result = start_latency(backend, root, args.postgres_admin_url, args.start_samples, args.start_gap_s)
                figures["start_latency_s"][backend] = result
                print(f"start latency {backend:>10}: median {result['median'] * 1000:6.1f} ms, p90 {result['p90'] * 1000:6.1f} ms "
                      f"({result['samples']} jobs)", flush=True)
        if "rps" in only:
            figures["rps"] = {"concurrency": args.concurrency, "requests": args.requests}
            for backend in backends:
                with api_server(backend, root, args.postgres_admin_url, f"rps-{backend}") as (server, key):
                    result = asyncio.run(api_rps(server, key, args.requests, args.concurrency))
                figures["rps"][backend] = result
                print(f"rps {backend:>10}: health {result['health_rps']:6.0f}/s, submit {result['submit_rps']:6.0f}/s "
                      f"({result['submit_vs_health']:.2f}), status {result['status_rps']:6.0f}/s ({result['status_vs_health']:.2f})",
                      flush=True)
        if "streams" in only:
            figures["streams"] = {}
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as prober:
                prober.submit(os.getpid).result()  # started before anything is timed
                for backend in backends:
                    with api_server(backend, root, args.postgres_admin_url, f"streams-{backend}") as (server, key):
                        result = asyncio.run(stream_load(server, key, args.streams, args.probes, args.queue_moves_per_s, prober,
                                                         backend == "postgresql"))
                    figures["streams"][backend] = result
                    print(f"streams {backend:>10}: /health {result['health_ms_idle']:.1f} ms idle, "
                          f"{result[f'health_ms_{args.streams}_streams']:.1f} ms with {args.streams} streams "
                          f"(ratio {result['ratio']:.2f}; {result['sse_events_per_s']:.0f} SSE events/s)", flush=True)
        if "warm" in only:
            result = warm_claiming(backends[-1], root, args.postgres_admin_url, args.warm_jobs, args.warm_seed)
            figures["warm_claiming"] = result
            print(f"warm claiming ({result['backend']}): {result['preference']['loads']} loads with the preference, "
                  f"{result['no_preference']['loads']} without ({result['jobs']} jobs, 2 workers)", flush=True)
        if "fleet" in only:
            result = fleet_claims(root, args.postgres_admin_url, args.claimers, args.claimer_processes,
                                  args.fleet_jobs, args.fleet_seconds)
            figures["fleet_claims_per_s"] = result
            print(f"fleet: {result['jobs_per_s']:.0f} job cycles/s ({result['operations_per_s']:.0f} store operations/s), "
                  f"{result['claimers']} claimers, claimed twice: {result['claimed_twice']}", flush=True)
        if "claims" in only:
            result = claim_cost(root, args.postgres_admin_url, args.fair_jobs, args.claim_cycles)
            figures["claim_cost"] = result
            for name in ("plain", "running_limit", "warm_preference"):
                if name in result:
                    print(f"claim ({name}, {result['queued']} queued): SELECT {result[name]['select_exec_ms']:.2f} ms in PostgreSQL, "
                          f"claim {result[name]['claim_ms_median']:.2f} ms median, claimer CPU "
                          f"{result[name]['client_cpu_ms_per_cycle']:.2f} ms per claim + finish", flush=True)
            print(f"submit with {result['queued']} queued: {result['submit_ms_median']:.2f} ms median, client CPU "
                  f"{result['submit_client_cpu_ms']:.2f} ms; fairness: a newcomer's job "
                  f"started after {result['newcomer_slot']} of another owner's 20", flush=True)
    figures["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    figures["targets"] = TARGETS
    figures["wall_s"] = time.perf_counter() - began
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    main()
