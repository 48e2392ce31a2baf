"""How a job looks from the outside: fal's queue status JSON, its SSE stream, and the result response.

fal has exactly three statuses the clients understand: IN_QUEUE, IN_PROGRESS, COMPLETED (Python raises
on anything else, JS polls forever). A failure or cancellation is COMPLETED with `error`/`error_type`;
its real status code shows up when the result is fetched.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import anyio
from fastapi.responses import JSONResponse

from motionserve.api.errors import ERROR_TYPE_HEADER, REQUEST_ID_HEADER, error_response
from motionserve.api.job_events import JobEvents
from motionserve.jobs.models import Job, JobState, LogLine
from motionserve.jobs.protocols import JobStore

# After a wake-up, wait this long before reading the store: changes that come in bursts (log lines
# of consecutive denoising steps) then cost one read, not one each.
MIN_REREAD_S = 0.05
# An SSE comment this often while nothing changes, so idle-connection timeouts (proxies, load
# balancers) do not cut a stream that waits for a long queue; clients ignore comments.
KEEPALIVE_S = 15.0
CANCELLED_DETAIL = "Request was cancelled"


@dataclass(frozen=True)
class RequestUrls:
    """The absolute URLs of one request, built on `{base}/queue/{namespace/}{owner}/{alias}`."""

    response_url: str
    status_url: str
    cancel_url: str

    @classmethod
    def build(cls, base_url: str, app: str, request_id: str) -> "RequestUrls":
        root = f"{base_url.rstrip('/')}/queue/{app}/requests/{request_id}"
        return cls(response_url=root, status_url=f"{root}/status", cancel_url=f"{root}/cancel")

    def as_dict(self) -> dict[str, str]:
        return {"response_url": self.response_url, "status_url": self.status_url, "cancel_url": self.cancel_url}


def fal_status(state: JobState) -> str:
    if state is JobState.QUEUED:
        return "IN_QUEUE"
    if state is JobState.RUNNING:
        return "IN_PROGRESS"
    return "COMPLETED"


def render_log(line: LogLine) -> dict[str, Any]:
    timestamp = datetime.fromtimestamp(line.timestamp, tz=timezone.utc).isoformat()
    return {"message": line.message, "level": line.level, "source": "USER", "timestamp": timestamp}


def error_message(error: dict[str, Any] | None) -> str:
    """The status's `error` string. A list detail (validation) is summarised as its messages."""
    detail = (error or {}).get("detail", "Internal Server Error")
    if isinstance(detail, list):
        parts = []
        for entry in detail:
            if isinstance(entry, dict):
                loc = ".".join(str(p) for p in entry.get("loc", []) if p != "body")
                parts.append(f"{loc}: {entry.get('msg')}" if loc else str(entry.get("msg")))
            else:
                parts.append(str(entry))
        return "; ".join(parts) or "Invalid input"
    return str(detail)


def render_status(
    job: Job,
    urls: RequestUrls,
    *,
    queue_position: int,
    logs: list[LogLine] | None,
) -> dict[str, Any]:
    """fal's status body. `logs` None means the client did not ask for logs (sent as null)."""
    status = fal_status(job.state)
    body: dict[str, Any] = {"status": status, "request_id": job.id, **urls.as_dict()}
    if status == "IN_QUEUE":
        body["queue_position"] = queue_position
        return body
    body["logs"] = None if logs is None else [render_log(line) for line in logs]
    if status == "IN_PROGRESS" and job.preview:
        # Not in fal's schema: its clients ignore fields they do not know; the playground shows it.
        body["preview"] = {"url": job.preview.get("url"), "step": job.preview.get("step")}
    if status == "COMPLETED":
        body["metrics"] = {"inference_time": job.inference_time} if job.inference_time is not None else {}
        if job.state is not JobState.SUCCEEDED:
            error = job.error or {}
            body["error"] = CANCELLED_DETAIL if job.state is JobState.CANCELLED else error_message(error)
            body["error_type"] = error.get("error_type") or ("client_cancelled" if job.state is JobState.CANCELLED else "internal_error")
    return body


def status_code_for(job: Job) -> int:
    """200 only when done, 202 while pending: what fal's own SDK tells the two apart by."""
    return 200 if job.is_terminal else 202


def result_response(job: Job) -> JSONResponse:
    """The result of a finished job: its output, or its failure's status and `{"detail": ...}`."""
    headers = {REQUEST_ID_HEADER: job.id}
    if job.state is JobState.SUCCEEDED:
        return JSONResponse(job.result if job.result is not None else {}, headers=headers)
    if job.state is JobState.CANCELLED:
        return error_response(499, CANCELLED_DETAIL, headers=headers)
    if not job.is_terminal:
        # Not a retryable code on purpose: clients only ask for the result after COMPLETED.
        return error_response(400, "Request is still in progress", headers=headers)
    error = job.error or {}
    status_code = int(error.get("status_code") or 500)
    error_type = error.get("error_type")
    if status_code == 422 and isinstance(error.get("detail"), list):
        error_type = None  # a validation failure keeps fal's exact 422 body
    if error.get("timeout_type"):
        # The clients never retry a 504 that says the user's own start timeout ran out.
        headers["X-Fal-Request-Timeout-Type"] = str(error["timeout_type"])
    if error_type:
        headers[ERROR_TYPE_HEADER] = str(error_type)
    return error_response(status_code, error.get("detail", "Internal Server Error"), error_type=error_type, headers=headers)


def parse_logs_flag(value: str | None) -> bool:
    """`logs=1|true` (JS sends 1/0, Python true/false)."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


async def status_events(
    store: JobStore,
    events: JobEvents,
    job_id: str,
    urls: RequestUrls,
    *,
    with_logs: bool,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[str]:
    """SSE `data:` events: one per change (state, queue position, preview, or new log lines), each
    carrying only the log lines not sent before (the JS client appends them); ends after COMPLETED.
    The store is read only when the process's change watcher says this job changed; while it is
    queued, `events` keeps its position current for all streams at once. Starlette cancels this
    generator when the client disconnects."""
    last_key: tuple[Any, ...] | None = None
    last_seq = 0
    last_sent = time.monotonic()
    with events.subscribe(job_id) as changes:
        needs_read = True
        while True:
            new_logs: list[LogLine] | None = None
            if needs_read:
                job = await anyio.to_thread.run_sync(store.get, job_id)
                if job is None:
                    return
                if with_logs:
                    new_logs = await anyio.to_thread.run_sync(store.logs, job_id, last_seq)
                    if new_logs:
                        last_seq = new_logs[-1].seq
                changes.watch_queue = job.state is JobState.QUEUED
                changes.position = await anyio.to_thread.run_sync(store.queue_position, job) if changes.watch_queue else 0
            position = changes.position or 0  # without a read: the queue moved, JobEvents read where we are
            key = (job.state, position, (job.preview or {}).get("url"))  # a new preview is a new event
            if key != last_key or new_logs or job.is_terminal:
                last_key = key
                body = render_status(job, urls, queue_position=position, logs=new_logs)
                yield f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
                last_sent = time.monotonic()
            if job.is_terminal:
                return
            woken = await changes.wait(max(0.0, last_sent + keepalive_s - time.monotonic()))
            # Not woken: the fallback timer; read in case a notification was lost.
            needs_read = changes.take_needs_read() or not woken
            if woken and needs_read:
                await anyio.sleep(MIN_REREAD_S)  # coalesce bursts (a log line per denoising step)
            elif not woken and time.monotonic() - last_sent >= keepalive_s:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()
