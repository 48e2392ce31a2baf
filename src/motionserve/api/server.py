"""Running the service: uvicorn for the API plus background threads beside it.

`serve` runs, as threads of one process (never on the event loop): one worker supervisor per device
(unless `workers_in_process` is off), the webhook dispatcher, and the expired-file clean-up. `work`
runs only the supervisors, for a separate worker process against the same store and data directory.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from motionserve.config import Settings
from motionserve import storage
from motionserve.storage import FileStore, StorageConfigError

log = logging.getLogger("motionserve")

FILE_CLEANUP_INTERVAL_S = 600.0
ADMIN_KEY_FILE = "admin-key.txt"


def detect_devices() -> tuple[str, ...]:
    """Every visible NVIDIA GPU as `cuda:N`, else `("cpu",)`. Read from the driver's /proc entries
    and CUDA_VISIBLE_DEVICES, because the API process must not import torch just to count GPUs."""
    gpus = Path("/proc/driver/nvidia/gpus")
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        ids = ids[: ids.index("-1")] if "-1" in ids else ids  # CUDA stops at the first invalid id
        count = min(count, len(ids))
    return tuple(f"cuda:{i}" for i in range(count)) or ("cpu",)


def open_store(settings: Settings) -> Any:
    """The job store, its database brought to (or, without auto_migrate, checked to be at) the
    newest schema; exits with one line for the operator when it is not and may not be."""
    from motionserve.jobs.store import Store
    from motionserve.migrations import SchemaOutOfDate, require_head, upgrade

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    try:
        if settings.auto_migrate:
            upgrade(url)
        else:
            require_head(url)
    except SchemaOutOfDate as exc:
        raise SystemExit(f"motionserve: {exc}") from None
    return Store(url)


def open_file_store(settings: Settings) -> FileStore:
    """The file store; exits with one line for the operator when its settings cannot work
    (no such bucket, access denied, endpoint unreachable)."""
    try:
        return storage.open_file_store(settings)
    except StorageConfigError as exc:
        raise SystemExit(f"motionserve: {exc}") from None


def ensure_admin_key(store: Any, data_dir: Path) -> Path | None:
    """On a fresh store, create a first key and leave it in `{data_dir}/admin-key.txt` (0600).
    Only the path is logged: logs are read by more people than the operator."""
    if store.has_keys():
        return None
    key_id, secret = store.create_key("admin", "created on first start", admin=True)
    path = Path(data_dir) / ADMIN_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key_id}:{secret}\n")
    os.chmod(path, 0o600)
    log.info("No API keys yet: created one for owner 'admin'; it is in %s (FAL_KEY=<its content>)", path)
    return path


@dataclass
class _Service:
    name: str
    target: Callable[[threading.Event], None]
    thread: threading.Thread | None = None
    info: dict[str, Any] = field(default_factory=dict)


class BackgroundServices:
    """Threads that run beside the API, all stopped by one event."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self._services: list[_Service] = []

    def add(self, name: str, target: Callable[[threading.Event], None], **info: Any) -> None:
        self._services.append(_Service(name, target, info=info))

    def start(self) -> None:
        for service in self._services:
            service.thread = threading.Thread(target=self._run, args=(service,), name=service.name, daemon=True)
            service.thread.start()

    def _run(self, service: _Service) -> None:
        try:
            service.target(self.stop_event)
        except Exception:  # log it: a dead background thread must not be silent
            log.exception("background service %s stopped with an error", service.name)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stop_event.set()
        for service in self._services:
            if service.thread is not None:
                service.thread.join(timeout_s)
                if service.thread.is_alive():
                    log.warning("%s did not stop within %.0fs", service.name, timeout_s)

    def wait(self) -> None:
        """Block until every thread has ended (after `stop_event` is set)."""
        for service in self._services:
            if service.thread is not None:
                while service.thread.is_alive():
                    service.thread.join(0.5)

    def workers_info(self) -> list[dict[str, Any]]:
        return [
            {**s.info, "alive": bool(s.thread and s.thread.is_alive())}
            for s in self._services
            if s.info.get("kind") == "worker"
        ]


def add_workers(services: BackgroundServices, settings: Settings, store: Any, file_store: FileStore) -> None:
    from motionserve.jobs.worker import WorkerSupervisor

    for device in settings.devices or detect_devices():
        supervisor = WorkerSupervisor(settings, store, device=device, file_store=file_store)
        services.add(f"worker-{device}", supervisor.run_forever, kind="worker", device=device)


def add_webhooks(services: BackgroundServices, settings: Settings, store: Any) -> None:
    from motionserve.jobs.webhooks import WebhookDispatcher

    services.add("webhooks", WebhookDispatcher(store, settings.allow_private_urls).run_forever)


def add_file_cleanup(services: BackgroundServices, file_store: FileStore, interval_s: float = FILE_CLEANUP_INTERVAL_S) -> None:
    def clean(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                removed = file_store.delete_expired()
                if removed:
                    log.info("deleted %d expired files", removed)
            except Exception:  # disk, database or bucket: the thread must live on
                log.exception("expired-file clean-up failed; retrying later")
            stop.wait(interval_s)

    services.add("file-cleanup", clean)


def add_deadline_expiry(services: BackgroundServices, store: Any, interval_s: float = 1.0) -> None:
    """Workers expire start deadlines when they claim; this covers the time when all of them are busy,
    so a client's X-Fal-Request-Timeout ends its request on time rather than when a worker frees up."""

    def expire(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                store.expire_start_deadlines()
            except Exception:  # a store hiccup must not end the thread
                log.exception("start-deadline expiry failed; retrying later")
            stop.wait(interval_s)

    services.add("deadline-expiry", expire)


def serve(settings: Settings) -> None:
    """Run the API server (TLS when a certificate and key are configured) until SIGINT/SIGTERM."""
    import uvicorn

    from motionserve.api.app import create_app

    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    store = open_store(settings)
    ensure_admin_key(store, Path(settings.data_dir))
    file_store = open_file_store(settings)
    services = BackgroundServices()
    if settings.workers_in_process:
        add_workers(services, settings, store, file_store)
    add_webhooks(services, settings, store)
    add_file_cleanup(services, file_store)
    add_deadline_expiry(services, store)
    app = create_app(settings, store, file_store, workers_info=services.workers_info)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,  # SSE streams would otherwise hold shutdown open
        log_level="info",
    )
    scheme = "https" if settings.tls_cert else "http"
    log.info("motionserve on %s://%s:%d (data in %s)", scheme, settings.host, settings.port, Path(settings.data_dir).resolve())
    _absorb_reraised_signals()
    services.start()
    try:
        uvicorn.Server(config).run()
    finally:
        services.stop()  # workers hand their running jobs back before the process ends
        store.close()


def _absorb_reraised_signals() -> None:
    """uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal to the handler that was
    installed before it. With the default handlers that kills the process right there, before our
    background threads are stopped; a handler that only logs lets `serve` finish its clean-up."""
    if threading.current_thread() is not threading.main_thread():
        return

    def absorb(signum: int, _: Any) -> None:
        log.info("stopped by signal %d", signum)

    signal.signal(signal.SIGTERM, absorb)
    signal.signal(signal.SIGINT, absorb)


def work(settings: Settings) -> None:
    """Run worker supervisors only (no API), until SIGINT/SIGTERM."""
    if settings.metrics_port is not None:
        from motionserve.metrics import serve_worker_metrics

        serve_worker_metrics(settings.metrics_port)
    store = open_store(settings)
    services = BackgroundServices()
    add_workers(services, settings, store, open_file_store(settings))

    def request_stop(signum: int, _: Any) -> None:
        log.info("received signal %d: stopping workers", signum)
        services.stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    services.start()
    log.info("workers running on %s", ", ".join(s["device"] for s in services.workers_info()))
    try:
        services.wait()
    finally:
        services.stop()
        store.close()
