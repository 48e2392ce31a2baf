"""The model process: a long-lived child (multiprocessing *spawn*, so CUDA is safe) that runs handlers.

It imports the endpoints once, loads the pipelines it is told to preload (`Settings.preload`) before
it says `Ready` (otherwise the warm-pipeline holder `ctx.models` loads each on first use), then serves
`RunJob` messages one at a time and answers each with `Done`. Everything a handler may ask of the service goes through `JobContext` (the `RunContext` of endpoints/base.py); live previews are
stored off the handler's thread, by `PreviewPublisher`. An endpoint with `run_pending` leaves its output
file to `OutputEncoder` (jobs/outputs.py): the process answers `OutputPending` and takes the next job
while the file is encoded and stored, and the `Done` follows from the encoder. The process ends on
`Shutdown` (once pending outputs are stored), on pipe EOF, or as soon as its supervisor process dies.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import mimetypes
import multiprocessing as mp
import os
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from types import ModuleType
from typing import Any, Callable

from motionserve.config import Settings
from motionserve.database import retry_while_unreachable
from motionserve.endpoints.base import File, Limits
from motionserve.errors import FetchError, InputValidationError, JobCancelledError, ModelUnavailableError, MotionserveError
from motionserve.jobs.events import (
    ChildEvent, Done, Log, OutputPending, PreloadFailed, Preview, Ready, RunJob, Shutdown, StartupFailed,
)
from motionserve.jobs.models import Job, error_dict
from motionserve.jobs.outputs import OutputEncoder, OutputJob
from motionserve.storage import FileStore, open_file_store

DEFAULT_REGISTRY = "motionserve.endpoints.registry"
INTERNAL_ERROR = error_dict(500, "Internal Server Error", "internal_error")
# At most this often per job: a status stream shows no more, and each costs a stored file and a write.
PREVIEW_MIN_INTERVAL_S = 0.5
# Previews matter while their job runs; an hour covers long runs and whoever looks a little later.
PREVIEW_RETENTION_S = 3600
# In the request's logs when its pipelines are loaded for it: why this one took longer than the next.
COLD_START_LOG = "Loading this endpoint's pipelines on the worker (cold start); later requests find them warm"
OUTPUT_PENDING_LOG = "Generation done; encoding and storing the output"

log = logging.getLogger(__name__)


class Sender:
    """The model process's end of the pipe, shared by the handler's thread and the preview thread:
    a `Connection` must not be written by two threads at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, event: ChildEvent) -> None:
        with self._lock:
            self._conn.send(event)


class PreviewPublisher:
    """Stores preview images and tells the supervisor, on a thread of its own, so that the denoising
    loop never waits for the file store (a PUT to a bucket takes tens of milliseconds).

    It holds one image: one handed over while another is being stored replaces any still waiting
    (only the newest is worth showing). A failure is logged and forgotten: previews never fail a job.
    """

    def __init__(self, files: FileStore, sender: Sender) -> None:
        self._files, self._sender = files, sender
        self._pending: tuple[Job, bytes, int, str] | None = None
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Job, image: bytes, step: int, content_type: str) -> None:
        with self._wake:
            self._pending = (job, image, step, content_type)
            self._wake.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="previews", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None:
                    self._wake.wait()
                pending, self._pending = self._pending, None
            self._publish(*pending)

    def _publish(self, job: Job, image: bytes, step: int, content_type: str) -> None:
        try:
            stored = self._files.put(
                image,
                content_type=content_type,
                file_name="preview" + (mimetypes.guess_extension(content_type) or ""),
                expires_at=time.time() + PREVIEW_RETENTION_S,
                kind="preview",
            )
            self._sender.send(Preview(job.id, self._files.file_url(job.base_url, stored), step))
        except Exception:
            log.warning("request %s: could not publish the preview of step %d", job.id, step, exc_info=True)


def preview_step(step: int, total_steps: int | None, every: int) -> bool:
    """Whether denoising step `step` (1-based) is one previews are made at: every `every` steps, or,
    for short schedules (few-step LCM samplers), every `total_steps // 2` so that they get some too."""
    if total_steps:
        every = min(every, total_steps // 2)
    return step % max(1, every) == 0


class JobContext:
    """`RunContext` for one job, in the model process."""

    def __init__(
        self,
        job: Job,
        settings: Settings,
        sender: Sender,
        cancel_event: Event,
        models: Callable[[], Any],
        files: FileStore,
        previews: PreviewPublisher,
        *,
        cold: bool = False,
    ) -> None:
        """`cold`: the job's pipelines are not loaded yet; its log says so when the handler asks for them."""
        self.request_id = job.id
        self.limits = Limits(max_frames=settings.max_frames)
        self._job = job
        self._settings = settings
        self._sender = sender
        self._cancel_event = cancel_event
        self._models = models
        self._files = files
        self._previews = previews
        self._last_preview = -float("inf")  # time.monotonic() of the last preview handed over
        self._cold = cold

    @property
    def models(self) -> Any:
        # Built on first access: a handler that fails validation never pays for loading weights.
        if self._cold:
            self._cold = False  # said once per request
            self.log(COLD_START_LOG)
        return self._models()

    def log(self, message: str, level: str = "INFO") -> None:
        self._sender.send(Log(self._job.id, level.upper(), str(message), time.time()))

    def is_cancelled(self) -> bool:
        return self._cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancel_event.is_set():
            raise JobCancelledError("Request was cancelled")

    def read_input(self, url: str, field: str) -> bytes:
        from motionserve.storage.fetch import fetch_bytes

        try:
            return fetch_bytes(
                url,
                max_bytes=self._settings.max_fetch_bytes,
                timeout_s=self._settings.fetch_timeout_s,
                allow_private=self._settings.allow_private_urls,
                # Our own /files/... URLs are read through the file store (disk or bucket), not
                # fetched from an API node: any worker reads any node's uploads.
                own_files=self._files,
                own_base_urls=[b for b in (self._job.base_url, self._settings.public_url) if b],
            )
        except FetchError as exc:
            raise InputValidationError.for_field(field, f"Could not read the file: {exc.message}") from exc

    def save_output(self, data: bytes, *, content_type: str, file_name: str) -> File:
        retention = self._job.file_retention_s or self._settings.file_retention_s
        # A finished output is worth waiting for through a database restart, though not past the
        # lease: by then the job may have been handed to another worker.
        stored = retry_while_unreachable(
            lambda: self._files.put(
                data, content_type=content_type, file_name=file_name, expires_at=time.time() + retention, kind="output"
            ),
            for_s=self._settings.lease_s,
            what=f"request {self._job.id}: storing its output",
        )
        return File(
            url=self._files.file_url(self._job.base_url, stored),
            content_type=stored.content_type,
            file_name=stored.file_name,
            file_size=stored.size,
        )

    def preview_due(self, step: int, total_steps: int | None) -> bool:
        return (
            self._settings.previews
            and preview_step(step, total_steps, self._settings.preview_every_steps)
            and time.monotonic() - self._last_preview >= PREVIEW_MIN_INTERVAL_S
        )

    def preview(self, image: bytes, *, step: int, content_type: str) -> None:
        now = time.monotonic()
        if not self._settings.previews or now - self._last_preview < PREVIEW_MIN_INTERVAL_S:
            return  # dropped here, before it costs a stored file and a store write
        self._last_preview = now
        self._previews.submit(self._job, image, step, content_type)


class _Models:
    """The one ModelManager of this process, created on first use and kept warm."""

    def __init__(self, registry: ModuleType, settings: Settings, device: str) -> None:
        self._registry, self._settings, self._device = registry, settings, device
        self._manager: Any = None

    def __call__(self) -> Any:
        if self._manager is None:
            self._manager = self._registry.create_model_manager(self._settings, self._device)
        return self._manager

    def preload(self, names: tuple[str, ...]) -> None:
        """Load the named endpoints' pipelines now (`Settings.preload`); nothing to do without names."""
        if names:
            self._registry.preload(self(), names)

    def is_cold(self, endpoint_id: str) -> bool:
        """Whether the endpoint's pipelines would be loaded for its next job (False when the registry cannot tell)."""
        warm = self.warm_endpoints()
        return warm is not None and endpoint_id not in warm

    def warm_endpoints(self) -> tuple[str, ...] | None:
        """Endpoints whose pipelines are loaded here (None: this registry cannot tell)."""
        warm_endpoints = getattr(self._registry, "warm_endpoints", None)
        if warm_endpoints is None:
            return None
        return tuple(warm_endpoints(self._manager)) if self._manager is not None else ()


def run_job(job: Job, registry: ModuleType, ctx: JobContext) -> Done | OutputJob:
    """Validate the stored input, run the handler, and turn its outcome into a `Done`, or into the
    `OutputJob` that stores its output when the endpoint leaves that for later (`run_pending`)."""
    endpoint = registry.get(job.endpoint_id)
    if endpoint is None:
        return Done(job.id, error=error_dict(404, f"Endpoint {job.endpoint_id!r} is not served here", "bad_request"))
    try:
        inputs = endpoint.validate(job.input, ctx.limits)
        started = time.perf_counter()
        if endpoint.run_pending is not None:
            pending = endpoint.run_pending(inputs, ctx)
            ctx.log(f"{OUTPUT_PENDING_LOG} ({pending.file_name})")  # the model is free for the next job from here
            return OutputJob(job.id, pending, ctx.save_output, started, warm=None)
        output = endpoint.run(inputs, ctx)
        elapsed = time.perf_counter() - started
        return Done(job.id, result=output.model_dump(mode="json", exclude_none=True), inference_time=elapsed)
    except JobCancelledError:
        return Done(job.id, cancelled=True)
    except MotionserveError as exc:
        return Done(job.id, error=error_dict(exc.status_code, exc.detail(), exc.error_type))
    except Exception:
        # The client sees fal's generic 500; the owner finds the traceback in the request's logs.
        ctx.log(traceback.format_exc(), level="ERROR")
        log.exception("request %s failed", job.id)
        return Done(job.id, error=INTERNAL_ERROR)


def _preload(conn: Connection, models: _Models, names: tuple[str, ...]) -> None:
    """Load `names` before the process says it is ready. Weights that cannot be had (or a name that is
    not an endpoint) are the operator's to fix: one line to the supervisor, and exit; anything else is
    a start-up failure like any other, which the supervisor retries."""
    try:
        models.preload(names)
    except (ModelUnavailableError, ValueError) as exc:
        message = exc.message if isinstance(exc, MotionserveError) else str(exc)
        conn.send(PreloadFailed(" ".join(message.split())))
        raise SystemExit(1)
    except BaseException:
        conn.send(StartupFailed(traceback.format_exc()))
        raise SystemExit(1)


def _exit_with_parent() -> None:
    parent = mp.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)  # the supervisor is gone: nobody will collect our results; free the GPU now


def child_main(
    conn: Connection,
    cancel_event: Event,
    settings: Settings,
    device: str,
    registry_module: str = DEFAULT_REGISTRY,
) -> None:
    """Entry point of the model process (the target of a spawn-context Process)."""
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    try:
        registry = importlib.import_module(registry_module)
        models = _Models(registry, settings, device)
        files = open_file_store(settings)  # once: its database engine and S3 client are reused
    except BaseException:
        conn.send(StartupFailed(traceback.format_exc()))
        raise SystemExit(1)
    _preload(conn, models, settings.preload)
    sender = Sender(conn)
    previews = PreviewPublisher(files, sender)
    outputs = OutputEncoder(sender.send)
    sender.send(Ready(os.getpid(), warm=models.warm_endpoints()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the supervisor closed the pipe
        if isinstance(message, Shutdown):
            outputs.drain()  # finished requests complete before the process goes
            return
        if isinstance(message, RunJob):
            ctx = JobContext(message.job, settings, sender, cancel_event, models, files, previews,
                             cold=models.is_cold(message.job.endpoint_id))
            try:
                outcome = run_job(message.job, registry, ctx)
                warm = models.warm_endpoints()
                if isinstance(outcome, OutputJob):
                    outputs.submit(dataclasses.replace(outcome, warm=warm))  # waits while the encoder is behind
                    sender.send(OutputPending(message.job.id, warm=warm))
                else:
                    sender.send(dataclasses.replace(outcome, warm=warm))
            except (BrokenPipeError, EOFError, OSError):
                return
