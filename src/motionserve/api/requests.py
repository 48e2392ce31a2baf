"""Looking up a submitted request: status (+ SSE stream), result, cancel.

URLs are `/queue/{namespace/}{owner}/{alias}/requests/{id}[...]`; a subpath, if a client sends one, is
ignored, and a trailing slash is accepted (fal's own SDK adds one). A request is visible only to keys
of the owner that submitted it: anyone else gets the same 404 as for an unknown id.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from motionserve.api.deps import JobEventsDep, OwnerDep, StoreDep, request_base_url
from motionserve.api.errors import REQUEST_ID_HEADER, ApiError
from motionserve.api.ids import AppId, parse_endpoint_id, same_app
from motionserve.api.responses import (
    API_KEY,
    CANCEL_STATUS,
    FAL_ERROR_REF,
    QUEUE_STATUS_REF,
    SSE_STATUS,
    error,
    errors,
    failed_result,
    json_body,
)
from motionserve.api.status import (
    RequestUrls,
    parse_logs_flag,
    render_status,
    result_response,
    status_code_for,
    status_events,
)
from motionserve.jobs.models import CancelOutcome, Job, JobState
from motionserve.jobs.protocols import JobStore

router = APIRouter()

_PREFIX = "/queue/{app:path}/requests/{request_id}"
# Request ids are printable ASCII (UUIDs). Anything else in the URL is unknown without a lookup (a NUL
# would make PostgreSQL fail the query), and is not echoed in `x-fal-request-id`, which fal echoes even
# for an unknown id: control characters or non-Latin-1 in a header would fail the response itself.
_POSSIBLE_ID = re.compile(r"[!-~]{1,128}")


def _id_header(request_id: str) -> dict[str, str]:
    return {REQUEST_ID_HEADER: request_id} if _POSSIBLE_ID.fullmatch(request_id) else {}


def _find(store: JobStore, app: str, request_id: str, owner: str) -> tuple[AppId, Job] | None:
    try:
        app_id = parse_endpoint_id(app)
    except ValueError:
        return None
    if not _POSSIBLE_ID.fullmatch(request_id):
        return None
    job = store.get(request_id)
    if job is None or job.owner != owner or not same_app(job.endpoint_id, app_id):
        return None
    return app_id, job


def _lookup(store: JobStore, app: str, request_id: str, owner: str) -> tuple[AppId, Job]:
    found = _find(store, app, request_id, owner)
    if found is None:
        raise ApiError(404, "Request not found", headers=_id_header(request_id))
    return found


def _routes(path: str, method: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a handler at `path` and `path/` (no redirects: async httpx would not follow them)."""

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        for p in (path, path + "/"):
            router.add_api_route(p, handler, methods=[method], include_in_schema=(p == path), **kwargs)
        return handler

    return register


# Order matters: `{app:path}` is greedy, so the longer suffixes must be tried before the result route.


@_routes(_PREFIX + "/status/stream", "GET", summary="Stream a request's status (SSE)", tags=["queue"],
         operation_id="stream_request_status", responses={200: SSE_STATUS, **errors(401, 404)}, openapi_extra=API_KEY)
def stream_status(
    request: Request, app: str, request_id: str, owner: OwnerDep, store: StoreDep, job_events: JobEventsDep,
    logs: str | None = None,
) -> StreamingResponse:
    app_id, job = _lookup(store, app, request_id, owner)
    urls = RequestUrls.build(request_base_url(request), app_id.app, job.id)
    events = status_events(store, job_events, job.id, urls, with_logs=parse_logs_flag(logs))
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={REQUEST_ID_HEADER: job.id, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@_routes(_PREFIX + "/status", "GET", summary="Get a request's status", tags=["queue"], operation_id="get_request_status",
         responses={200: json_body(QUEUE_STATUS_REF, "COMPLETED (done, failed or cancelled)"),
                    202: json_body(QUEUE_STATUS_REF, "IN_QUEUE or IN_PROGRESS"), **errors(401, 404)},
         openapi_extra=API_KEY)
def get_status(
    request: Request, app: str, request_id: str, owner: OwnerDep, store: StoreDep, logs: str | None = None
) -> JSONResponse:
    app_id, job = _lookup(store, app, request_id, owner)
    urls = RequestUrls.build(request_base_url(request), app_id.app, job.id)
    position = store.queue_position(job) if job.state is JobState.QUEUED else 0
    lines = store.logs(job.id) if parse_logs_flag(logs) else None
    body = render_status(job, urls, queue_position=position, logs=lines)
    return JSONResponse(body, status_code=status_code_for(job), headers={REQUEST_ID_HEADER: job.id})


@_routes(_PREFIX + "/cancel", "PUT", summary="Cancel a request", tags=["queue"], operation_id="cancel_request",
         responses={202: json_body(CANCEL_STATUS, "Cancellation requested"), 400: json_body(CANCEL_STATUS, "Already completed"),
                    404: json_body({"anyOf": [CANCEL_STATUS, FAL_ERROR_REF]},
                                   "Not found (or not the caller's); `detail` instead when the path matches no route"),
                    **errors(401)},
         openapi_extra=API_KEY)
def cancel(app: str, request_id: str, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    headers = _id_header(request_id)
    found = _find(store, app, request_id, owner)
    outcome = store.request_cancel(request_id) if found is not None else None
    if outcome is None:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404, headers=headers)
    if CancelOutcome(outcome) is CancelOutcome.ALREADY_COMPLETED:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400, headers=headers)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=headers)


@_routes(_PREFIX, "GET", summary="Get a request's result", tags=["queue"], operation_id="get_request_result",
         responses={200: json_body({"type": "object"}, "The endpoint's output"), **failed_result(),
                    400: error("The request is still in progress"), **errors(401, 404)},
         openapi_extra=API_KEY)
def get_result(app: str, request_id: str, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    _, job = _lookup(store, app, request_id, owner)
    return result_response(job)
