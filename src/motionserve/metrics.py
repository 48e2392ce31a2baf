"""Prometheus metrics: what this process did, and what the fleet's database says right now. A leaf.

Two kinds of numbers, kept apart on purpose:

- **Process instruments** (histograms and counters below) count what happened in this process: the
  worker supervisors call `record_job_finished` when a job ends, the storage layer calls
  `record_bytes_stored`. Each API node and each `motionserve worker` reports its own; Prometheus sums
  them across instances.
- **Fleet state** (`FleetCollector`) is read from the database at scrape time: queue depth, running
  jobs, live workers, webhook backlog, stored bytes. It is the same from any API node, so it is the
  signal to autoscale on (take `max` across instances, not `sum`).

Several processes behind one port (e.g. a pre-forking server): set `PROMETHEUS_MULTIPROC_DIR` to an
empty folder, writable by every process and wiped before they start. prometheus_client then keeps
each process's values in files there, and `process_collector()` sums them all with its
`MultiProcessCollector`, so any process answers for the whole group. Without the variable each process
reports its own values from the default registry (plus CPU/memory/GC of the process itself).
"""

from __future__ import annotations

import logging
import os
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from motionserve.database import db_now, files, jobs, webhooks, workers

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Video jobs wait and run from a fraction of a second (tiny models, warm workers) to an hour.
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

PRIORITY_LABELS = {0: "normal", 1: "low"}  # the fal X-Fal-Queue-Priority names of jobs.priority
WORKER_STATES = ("starting", "idle", "busy", "draining")  # 'stopped' rows are not live workers
FILE_KINDS = ("upload", "output")

QUEUE_WAIT = Histogram(
    "motionserve_queue_wait_seconds", "Time from submit to the start of the job's last run.",
    ["endpoint"], buckets=JOB_BUCKETS,
)
RUN_TIME = Histogram(
    "motionserve_run_seconds", "Time a job ran on a worker (its last attempt).",
    ["endpoint"], buckets=JOB_BUCKETS,
)
JOBS_FINISHED = Counter(
    "motionserve_jobs_finished", "Jobs that ended on a worker of this process, by outcome.", ["endpoint", "outcome"],
)
JOB_FAILURES = Counter(
    "motionserve_job_failures", "Failed jobs by fal error type.", ["endpoint", "error_type"],
)
STORED_BYTES = Counter(
    "motionserve_stored_bytes", "Bytes this process wrote to file storage, by kind (upload | output).", ["kind"],
)
# Each one is an open status stream or a waiting /run request: a count that never falls back to the
# number of clients really connected is a leak (the fault tests watch it across client disconnects).
JOB_WAITERS = Gauge(
    "motionserve_job_waiters", "Status streams and /run requests of this process waiting for job changes.",
    multiprocess_mode="livesum",
)


def record_job_finished(
    endpoint_id: str,
    *,
    queue_wait_s: float | None,
    run_time_s: float | None,
    outcome: str,
    error_type: str | None,
) -> None:
    """Count one job that ended: `outcome` is "succeeded", "failed" or "cancelled". A time that does
    not apply (a job cancelled before it started has no run time) is None and is not observed."""
    if queue_wait_s is not None:
        QUEUE_WAIT.labels(endpoint_id).observe(max(0.0, queue_wait_s))  # hosts' clocks may disagree a little
    if run_time_s is not None:
        RUN_TIME.labels(endpoint_id).observe(max(0.0, run_time_s))
    JOBS_FINISHED.labels(endpoint_id, outcome).inc()
    if outcome == "failed":
        JOB_FAILURES.labels(endpoint_id, error_type or "unknown").inc()


def record_bytes_stored(kind: str, size: int) -> None:
    """Count `size` bytes written to file storage; `kind` is "upload" or "output"."""
    if size > 0:  # a Counter refuses negative increments; an empty file adds nothing
        STORED_BYTES.labels(kind).inc(size)


class FleetCollector(Collector):
    """Fleet-wide gauges read from the database at each scrape, in one short read transaction.

    `stale_after_s`: a worker whose `last_seen` (database clock) is older than this is not counted
    (e.g. 3 leases: it missed several heartbeats). `endpoints`: reported with zeros when idle, so the
    series never vanish (a KEDA or alert query over an absent series has nothing to compare).
    """

    def __init__(self, engine: Engine, *, stale_after_s: float, endpoints: Iterable[str] = ()) -> None:
        self._engine = engine
        self._stale_after_s = stale_after_s
        self._endpoints = tuple(endpoints)

    def describe(self) -> Iterator[Metric]:
        # Names only: registering the collector must not touch the database.
        return iter((_database_up(), *_families()))

    def collect(self) -> Iterator[Metric]:
        up = _database_up()
        try:
            with self._engine.connect() as conn, conn.begin():
                families = self._read(conn)
        except SQLAlchemyError as exc:  # a scrape must still answer: say the database is down
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self, conn: Connection) -> list[Metric]:
        queue, running, live, backlog, stored = _families()
        self._jobs(conn, queue, running)
        self._workers(conn, live)
        backlog.add_metric([], conn.execute(
            select(func.count()).select_from(webhooks).where(webhooks.c.state == "pending")  # ix_webhooks_due
        ).scalar_one())
        # No index on `kind`: a scan, of a table that file retention keeps bounded.
        sizes = dict.fromkeys(FILE_KINDS, 0)
        sizes.update(conn.execute(
            select(files.c.kind, func.coalesce(func.sum(files.c.size), 0)).group_by(files.c.kind)
        ).tuples().all())
        for kind, size in sizes.items():
            stored.add_metric([kind], int(size))  # PostgreSQL sums a BIGINT as NUMERIC
        return [queue, running, live, backlog, stored]

    def _jobs(self, conn: Connection, queue: GaugeMetricFamily, running: GaugeMetricFamily) -> None:
        depth = {(e, p): 0 for e in self._endpoints for p in PRIORITY_LABELS.values()}
        busy = {e: 0 for e in self._endpoints}
        rows = conn.execute(  # both states in one pass over the (state, priority, seq) index
            select(jobs.c.state, jobs.c.endpoint_id, jobs.c.priority, func.count())
            .where(jobs.c.state.in_(("queued", "running")))
            .group_by(jobs.c.state, jobs.c.endpoint_id, jobs.c.priority)
        ).tuples().all()
        for state, endpoint, priority, count in rows:
            if state == "queued":
                key = (endpoint, PRIORITY_LABELS.get(priority, str(priority)))
                depth[key] = depth.get(key, 0) + count
            else:
                busy[endpoint] = busy.get(endpoint, 0) + count
        for (endpoint, priority), count in sorted(depth.items()):
            queue.add_metric([endpoint, priority], count)
        for endpoint, count in sorted(busy.items()):
            running.add_metric([endpoint], count)

    def _workers(self, conn: Connection, live: GaugeMetricFamily) -> None:
        cutoff = db_now(conn) - self._stale_after_s  # last_seen is the database's clock too
        counts = dict.fromkeys(WORKER_STATES, 0)
        counts.update(conn.execute(
            select(workers.c.state, func.count())
            .where(workers.c.last_seen >= cutoff, workers.c.state != "stopped")
            .group_by(workers.c.state)
        ).tuples().all())
        for state, count in counts.items():
            live.add_metric([state], count)


def _database_up() -> GaugeMetricFamily:
    return GaugeMetricFamily("motionserve_database_up", "1 if the fleet metrics could be read from the database.")


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily("motionserve_queue_depth", "Queued jobs (fleet-wide).", labels=["endpoint", "priority"]),
        GaugeMetricFamily("motionserve_running_jobs", "Jobs running on a worker (fleet-wide).", labels=["endpoint"]),
        GaugeMetricFamily("motionserve_workers", "Worker supervisors seen recently, by state.", labels=["state"]),
        GaugeMetricFamily("motionserve_webhook_backlog", "Webhook deliveries still pending."),
        GaugeMetricFamily("motionserve_files_bytes", "Bytes of stored files, by kind.", labels=["kind"]),
    )


def process_collector() -> Collector:
    """This process's instruments, or with `PROMETHEUS_MULTIPROC_DIR` those of every process sharing it."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def render(*collectors: Collector) -> bytes:
    """The Prometheus text exposition of `collectors` together."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not worth a log line
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve_worker_http(port: int, ready: Callable[[], bool]) -> None:
    """For a `motionserve worker`, which has no API of its own, from a daemon thread on 0.0.0.0:`port`:
    `/ready` (a readiness probe: 200 once `ready()`, i.e. every device's model process is up with its
    preloads loaded; 503 before) and this process's instruments on any other path, as /metrics (its
    fleet state is on the API's /metrics)."""
    metrics = make_wsgi_app(process_collector())

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/ready":
            return metrics(environ, start_response)
        ok = ready()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"ready\n" if ok else b"starting: model processes are loading\n"]

    httpd = make_server("", port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="worker-http", daemon=True).start()
    log.info("worker metrics and readiness (/ready) on port %d", port)
