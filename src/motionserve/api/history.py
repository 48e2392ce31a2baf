"""`GET /requests`: the caller's own recent requests, newest first (the playground's history).

Not a fal route (fal shows history on its website only), so it is ours to shape: each entry is what
the playground needs to re-open a request (its status and queue URLs, the result or the error) or to
run it again (the input as sent). Only the key's owner's requests are listed, as every lookup here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from motionserve.api.deps import OwnerDep, StoreDep, request_base_url
from motionserve.api.ids import parse_endpoint_id
from motionserve.api.responses import API_KEY, errors, json_body
from motionserve.api.status import CANCELLED_DETAIL, RequestUrls, error_message, fal_status
from motionserve.jobs.models import Job, JobState

router = APIRouter(tags=["queue"])

MAX_LIMIT = 100  # entries carry their inputs: bound the answer
# Inputs may hold data: URIs of up to 64 MB. Longer strings are left out of the listing (named in
# `omitted`): the playground asks for that file again before a re-run.
MAX_INPUT_STRING = 8192


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat() if epoch is not None else None


def trim_input(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """`value` with every string longer than MAX_INPUT_STRING replaced by None, and the dotted
    paths of those strings (`image_url`, `loras.0.path`)."""
    if isinstance(value, str):
        return (None, [path]) if len(value) > MAX_INPUT_STRING else (value, [])
    items: list[tuple[Any, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return value, []
    omitted: list[str] = []
    trimmed = []
    for key, item in items:
        new, left_out = trim_input(item, f"{path}.{key}" if path else str(key))
        trimmed.append((key, new))
        omitted += left_out
    return (dict(trimmed) if isinstance(value, dict) else [v for _, v in trimmed]), omitted


def history_entry(job: Job, base_url: str) -> dict[str, Any]:
    urls = RequestUrls.build(base_url, parse_endpoint_id(job.endpoint_id).app, job.id)
    inputs, omitted = trim_input(job.input or {})
    entry: dict[str, Any] = {
        "request_id": job.id,
        "endpoint_id": job.endpoint_id,
        "status": fal_status(job.state),
        "state": job.state.value,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "input": inputs,
        "omitted": omitted,
        "result": job.result if job.state is JobState.SUCCEEDED else None,
        "error": None,
        "error_type": None,
        **urls.as_dict(),
    }
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        error = job.error or {}
        entry["error"] = CANCELLED_DETAIL if job.state is JobState.CANCELLED else error_message(error)
        entry["error_type"] = error.get("error_type")
    return entry


@router.get("/requests", summary="The caller's recent requests, newest first (with inputs and results)", openapi_extra=API_KEY,
            responses={200: json_body({"type": "object", "required": ["requests"], "properties": {"requests": {"type": "array"}}},
                                      "The requests"), **errors(401, 422)})
async def list_requests(
    request: Request,
    owner: OwnerDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many, newest first.")] = 20,
    # No NUL (PostgreSQL text cannot hold one: it would fail the query) and no longer than an id can be.
    endpoint_id: Annotated[str | None, Query(description="Only requests to this endpoint.", max_length=200, pattern=r"^[^\x00]*$")] = None,
) -> JSONResponse:
    jobs = await anyio.to_thread.run_sync(lambda: store.list_jobs(owner, limit=limit, endpoint_id=endpoint_id))
    base_url = request_base_url(request)
    return JSONResponse({"requests": [history_entry(job, base_url) for job in jobs]})
