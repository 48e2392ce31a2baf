"""Running the service: uvicorn for the API plus background threads beside it.

`serve` runs, as threads of one process (never on the event loop): one worker supervisor per device
(unless `workers_in_process` is off), the webhook dispatcher and the fleet's upkeep (deadlines,
vanished workers' jobs, retention); the app runs the process's change watcher. `work` runs only the
supervisors (and a change watcher), for worker processes anywhere that reach the same database and
object store.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from motionserve.config import Settings
from motionserve.jobs.changes import ChangeWatcher
from motionserve.jobs.child import PreloadError
from motionserve.jobs.store import Store
from motionserve.jobs.upkeep import Upkeep
from motionserve import storage
from motionserve.storage import FileStore, StorageConfigError

if TYPE_CHECKING:
    from motionserve.jobs.worker import WorkerSupervisor
    from motionserve.tls import LocalTls

log = logging.getLogger("motionserve")

ADMIN_KEY_FILE = "admin-key.txt"
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's default, said here)


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


def open_store(settings: Settings) -> Store:
    """The job store, its database brought to (or, without auto_migrate, checked to be at) the
    newest schema; exits with one line for the operator when it is not and may not be."""
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


def ensure_admin_key(store: Store, data_dir: Path) -> Path | None:
    """On a fresh store, create a first key and leave it in `{data_dir}/admin-key.txt` (0600).
    Only the path is logged: logs are read by more people than the operator."""
    created = store.create_first_admin_key()
    if created is None:
        return None
    key_id, secret = created
    path = Path(data_dir) / ADMIN_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key_id}:{secret}\n")
    os.chmod(path, 0o600)
    log.info("No API keys yet: created one for owner 'admin'; it is in %s (FAL_KEY=<its content>)", path)
    return path


def use_local_tls(settings: Settings) -> "LocalTls":
    """`--tls auto`: the local CA and server certificate in `<data-dir>/tls`, made or renewed as needed."""
    from motionserve.tls import TlsSetupError, default_names, ensure_local_tls

    if settings.tls_cert or settings.tls_key:
        raise SystemExit("motionserve: --tls auto makes its own certificate; leave out --tls-cert/--tls-key (or --tls auto)")
    try:
        local = ensure_local_tls(settings.tls_dir, settings.tls_names or default_names(settings.host))
    except TlsSetupError as exc:
        raise SystemExit(f"motionserve: {exc}") from None
    if local.created_ca:
        log.info("created a local certificate authority in %s (clients trust ca.pem)", local.directory)
    if local.issued_server:
        log.info("issued a server certificate for %s (%s)", ", ".join(local.names), local.issued_server)
    return local


def print_client_lines(settings: Settings, local: "LocalTls") -> None:
    """What a client shell needs, on stdout: the operator's terminal. The key itself stays in its file."""
    from motionserve.tls import client_host, client_lines

    host_port = client_host(settings.host, settings.port, local.names)
    print("\n".join(client_lines(local, host_port, Path(settings.data_dir) / ADMIN_KEY_FILE)), flush=True)


@dataclass
class _Service:
    name: str
    target: Callable[[threading.Event], None]
    thread: threading.Thread | None = None


class BackgroundServices:
    """Threads that run beside the API, all stopped by one event.

    A worker that cannot preload its pipelines stops them all and leaves its one-line reason in
    `failure`, for the process to exit non-zero with; `on_failure` also stops whatever else runs."""

    def __init__(self, on_failure: Callable[[], None] | None = None) -> None:
        self.stop_event = threading.Event()
        self.failure: str | None = None
        self._on_failure = on_failure
        self._services: list[_Service] = []

    def add(self, name: str, target: Callable[[threading.Event], None]) -> None:
        self._services.append(_Service(name, target))

    def start(self) -> None:
        for service in self._services:
            service.thread = threading.Thread(target=self._run, args=(service,), name=service.name, daemon=True)
            service.thread.start()

    def _run(self, service: _Service) -> None:
        try:
            service.target(self.stop_event)
        except PreloadError as exc:  # already logged by the worker
            self.failure = f"{service.name}: cannot preload: {exc}"
            self.stop_event.set()
            if self._on_failure is not None:
                self._on_failure()
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


def add_workers(
    services: BackgroundServices, settings: Settings, store: Store, changes: ChangeWatcher
) -> list["WorkerSupervisor"]:
    """A supervisor per device, woken by `changes` when work is queued."""
    from motionserve.jobs.worker import WorkerSupervisor

    supervisors = [WorkerSupervisor(settings, store, device, changes=changes)
                   for device in settings.devices or detect_devices()]
    for supervisor in supervisors:
        services.add(f"worker-{supervisor.device}", supervisor.run_forever)
    return supervisors


def add_webhooks(services: BackgroundServices, settings: Settings, store: Store) -> None:
    from motionserve.jobs.webhooks import WebhookDispatcher

    services.add("webhooks", WebhookDispatcher(store, settings.allow_private_urls).run_forever)


def serve(settings: Settings) -> None:
    """Run the API server (TLS when a certificate and key are configured) until SIGINT/SIGTERM."""
    import uvicorn

    from motionserve.api.app import create_app
    from motionserve.api.http_protocol import BoundedHeadProtocol

    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    local_tls = use_local_tls(settings) if settings.tls == "auto" else None
    if local_tls is not None:
        settings = settings.model_copy(update={"tls_cert": local_tls.server_cert, "tls_key": local_tls.server_key})
    store = open_store(settings)
    ensure_admin_key(store, Path(settings.data_dir))
    file_store = open_file_store(settings)
    changes = ChangeWatcher(store)  # the app runs it; in-process workers listen to it too
    # A worker that cannot preload ends the whole server: it was configured to serve warm.
    services = BackgroundServices(on_failure=lambda: setattr(server, "should_exit", True))
    if settings.workers_in_process:
        add_workers(services, settings, store, changes)
    add_webhooks(services, settings, store)
    services.add("upkeep", Upkeep.for_node(settings, store, file_store).run_forever)
    app = create_app(settings, store, file_store, changes=changes)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,  # SSE streams would otherwise hold shutdown open
        http=BoundedHeadProtocol,  # a request's headers must arrive in time and stay small (slow loris)
        timeout_keep_alive=KEEP_ALIVE_S,
        log_level="info",
    )
    scheme = "https" if settings.tls_cert else "http"
    log.info("motionserve on %s://%s:%d (data in %s)", scheme, settings.host, settings.port, Path(settings.data_dir).resolve())
    if local_tls is not None:
        print_client_lines(settings, local_tls)
    _absorb_reraised_signals()
    server = uvicorn.Server(config)
    services.start()
    try:
        server.run()
    finally:
        services.stop()  # workers hand their running jobs back before the process ends
        store.close()
    if services.failure is not None:
        raise SystemExit(f"motionserve: {services.failure}")


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
    """Run worker supervisors only (no API), until SIGINT/SIGTERM; exits non-zero when one cannot preload."""
    store = open_store(settings)
    open_file_store(settings).close()  # a bad bucket stops the worker now, in one line, not each model process
    services = BackgroundServices()
    changes = ChangeWatcher(store)
    services.add("job-changes", changes.run_forever)
    supervisors = add_workers(services, settings, store, changes)
    devices = [s.device for s in supervisors]
    if settings.metrics_port is not None:
        from motionserve.metrics import serve_worker_http

        serve_worker_http(settings.metrics_port, ready=lambda: all(s.is_ready() for s in supervisors))

    def request_stop(signum: int, _: Any) -> None:
        log.info("received signal %d: stopping workers", signum)
        services.stop_event.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    services.start()
    log.info("workers running on %s", ", ".join(devices))
    try:
        services.wait()
    finally:
        services.stop()
        store.close()
    if services.failure is not None:
        raise SystemExit(f"motionserve: {services.failure}")
