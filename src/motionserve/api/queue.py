"""Submitting work: `POST /queue/{endpoint_id}` (asynchronous) and `POST /run/{endpoint_id}` (sync).

Both validate the input with the endpoint's own model before anything is stored, so a bad request
is a 422 at once rather than a failed job later. The sync route goes through the same queue (so
priorities and workers are shared) and simply waits for the job, cancelling it if the client leaves.
"""

from __future__ import annotations

import math
import time
from functools import partial

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from motionserve.api.body import read_json_object
from motionserve.api.deps import JobEventsDep, OwnerDep, SettingsDep, StoreDep, public_base_url, request_base_url
from motionserve.api.errors import REQUEST_ID_HEADER, ApiError
from motionserve.api.headers import parse_submit_options
from motionserve.api.ids import AppId, parse_endpoint_id
from motionserve.api.job_events import JobEvents
from motionserve.api.status import RequestUrls, result_response
from motionserve.config import Settings
from motionserve.errors import AddressRefusedError, FetchError, InputValidationError
from motionserve.endpoints.base import Endpoint, Limits
from motionserve.jobs.changes import Change
from motionserve.jobs.models import Job, SubmitRate, SubmitRateExceeded
from motionserve.jobs.protocols import JobStore
from motionserve.jobs.store import ChangeKind

QUEUE_FULL_RETRY_AFTER_S = 10
DISCONNECT_CHECK_S = 1.0  # how soon a /run caller that hung up gets its job cancelled

router = APIRouter()

def resolve_endpoint(request: Request, raw_id: str) -> tuple[AppId, Endpoint]:
    """The endpoint a submit/run URL names (full id, subpath included), or 404."""
    try:
        app_id = parse_endpoint_id(raw_id)
    except ValueError as exc:
        raise ApiError(404, str(exc)) from exc
    endpoint = request.app.state.endpoints.get(app_id.endpoint_id)
    if endpoint is None:
        raise ApiError(404, f"Endpoint '{app_id.endpoint_id}' not found")
    return app_id, endpoint


async def _submit(request: Request, raw_id: str, owner: str, settings: Settings, store: JobStore, webhook: str | None) -> tuple[AppId, Job]:
    app_id, endpoint = resolve_endpoint(request, raw_id)
    payload = await read_json_object(request)
    options = parse_submit_options(request.headers, webhook)
    if settings.max_queue_length:
        await _refuse_if_queue_full(store, app_id.endpoint_id, settings.max_queue_length)
    if options.webhook_url is not None:
        await _check_webhook_target(options.webhook_url, settings)
    endpoint.validate(payload, Limits(max_frames=settings.max_frames))
    submit = partial(
        store.submit,
        owner=owner,
        endpoint_id=app_id.endpoint_id,
        input=payload,  # as sent: the worker validates it again with the same model
        priority=options.priority,
        start_timeout_s=options.start_timeout_s,
        webhook_url=options.webhook_url,
        base_url=public_base_url(request, settings),
        file_retention_s=options.file_retention_s or settings.file_retention_s,
        runner_hint=options.runner_hint,
        no_retry=options.no_retry,
        submit_rate=SubmitRate(settings.submit_rate_per_min) if settings.submit_rate_per_min else None,
    )
    try:
        job = await anyio.to_thread.run_sync(submit)
    except SubmitRateExceeded as exc:
        raise _rate_limited(exc) from exc
    request.app.state.job_events.watcher.made_here(Change(ChangeKind.QUEUED, job.id))
    return app_id, job


def _rate_limited(exc: SubmitRateExceeded) -> ApiError:
    """A 429 as for a full queue, saying when the oldest submit of the window leaves it. Counted by
    the store, so it holds across API nodes; only jobs that were queued count (not 422s)."""
    wait_s = max(1, math.ceil(exc.retry_after_s))
    return ApiError(429, f"Too many requests: this key may submit {exc.rate.count} requests per minute; "
                         f"try again in {wait_s} s", error_type="rate_limited", headers={"Retry-After": str(wait_s)})


async def _refuse_if_queue_full(store: JobStore, endpoint_id: str, limit: int) -> None:
    """fal's queue-length cap: a 429 the clients show, with when to try again. (Nodes racing may let
    a few more in: the cap bounds the queue, it is not an exact count.)"""
    if await anyio.to_thread.run_sync(store.queue_length, endpoint_id) >= limit:
        raise ApiError(429, f"The queue of {endpoint_id} is full ({limit} requests waiting); try again later",
                       error_type="queue_full", headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})


async def _check_webhook_target(url: str, settings: Settings) -> None:
    """A webhook the server would refuse to call (loopback, private, link-local...) is a 422 now,
    not ten refused deliveries over two hours. A name that does not resolve yet is accepted."""
    from motionserve.jobs.webhooks import resolve_webhook_target

    try:
        await anyio.to_thread.run_sync(resolve_webhook_target, url, settings.allow_private_urls)
    except AddressRefusedError as exc:
        raise InputValidationError(
            [{"loc": ["query", "fal_webhook"], "msg": f"The server will not call this webhook: {exc.message}",
              "type": "value_error", "input": url}]
        ) from exc
    except FetchError:
        pass


@router.post("/queue/{endpoint_id:path}", include_in_schema=False)
async def submit(request: Request, endpoint_id: str, owner: OwnerDep, settings: SettingsDep, store: StoreDep) -> JSONResponse:
    app_id, job = await _submit(request, endpoint_id, owner, settings, store, request.query_params.get("fal_webhook"))
    urls = RequestUrls.build(request_base_url(request), app_id.app, job.id)
    position = await anyio.to_thread.run_sync(store.queue_position, job)
    body = {
        "status": "IN_QUEUE",
        "request_id": job.id,
        "gateway_request_id": job.id,
        **urls.as_dict(),
        "queue_position": position,
    }
    return JSONResponse(body, headers={REQUEST_ID_HEADER: job.id})


@router.post("/run/{endpoint_id:path}", include_in_schema=False)
async def run(
    request: Request, endpoint_id: str, owner: OwnerDep, settings: SettingsDep, store: StoreDep, job_events: JobEventsDep
) -> JSONResponse:
    _, job = await _submit(request, endpoint_id, owner, settings, store, webhook=None)
    finished = await wait_for_job(request, store, job_events, job.id, timeout_s=settings.sync_run_timeout_s)
    return result_response(finished)


async def wait_for_job(request: Request, store: JobStore, events: JobEvents, job_id: str, *, timeout_s: float) -> Job:
    """Wait until the job is finished, reading it when the change watcher says it changed. A client
    that hangs up cancels its job (nobody would ever read the result); so does running past the
    server's sync timeout (504)."""
    deadline = time.monotonic() + timeout_s
    with events.subscribe(job_id) as changes:
        while True:
            job = await anyio.to_thread.run_sync(store.get, job_id)
            if job is None:
                raise ApiError(500, "Request disappeared from the store", error_type="internal_error")
            if job.is_terminal:
                return job
            read_at = time.monotonic()
            while not await changes.wait(DISCONNECT_CHECK_S):
                if await request.is_disconnected():
                    await anyio.to_thread.run_sync(store.request_cancel, job_id)
                    raise ApiError(499, "Client disconnected", error_type="client_disconnected",
                                   headers={REQUEST_ID_HEADER: job_id})
                if time.monotonic() > deadline:
                    await anyio.to_thread.run_sync(store.request_cancel, job_id)
                    raise ApiError(504, "Request timed out", error_type="request_timeout", headers={REQUEST_ID_HEADER: job_id})
                if time.monotonic() - read_at >= changes.fallback_s:
                    break  # in case a notification was lost: look at the store now and then
