"""The JSON body fal POSTs to a request's webhook when it completes.

Built by the store in the same transaction that makes the job terminal, so the delivery row
exists exactly when the job is finished; the dispatcher (webhooks.py) only sends these bytes.
"""

from __future__ import annotations

import json
from typing import Any

from motionserve.jobs.models import Job, JobState


def fal_webhook_payload(job: Job) -> dict[str, Any]:
    """Success: `status: OK` with the output; failure/cancel: `status: ERROR` with the detail."""
    # We have no gateway retries of our own, so the gateway id is the request id (fal documents
    # them as "mostly the same").
    base = {"request_id": job.id, "gateway_request_id": job.id}
    if job.state is JobState.SUCCEEDED:
        return {**base, "status": "OK", "payload": job.result, "error": None}
    error = job.error or {"status_code": 500, "detail": "Internal Server Error"}
    return {
        **base,
        "status": "ERROR",
        "error": f"Invalid status code: {error.get('status_code', 500)}",
        "payload": {"detail": error.get("detail")},
    }


def webhook_body(job: Job) -> bytes:
    return json.dumps(fal_webhook_payload(job), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
