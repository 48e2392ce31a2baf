"""Request bodies with bounds: JSON inputs (data URIs make them big, but not unbounded) and raw
uploads streamed to disk chunk by chunk, so a 5 GB upload never sits in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
from fastapi import Request

from motionserve.api.errors import ApiError, body_validation_error
from motionserve.errors import StorageFullError, is_disk_full

MB = 1024 * 1024
# Inputs may carry base64 data URIs (fal_client.encode_file): allow those, refuse anything silly.
MAX_JSON_BODY_BYTES = 64 * MB
_WRITE_BATCH = 1 * MB


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large (limit {limit} bytes)", error_type="request_too_large")


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it grows past `limit`."""
    _check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int = MAX_JSON_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object. An empty body is `{}` (so missing fields are reported one by one);
    malformed JSON or a non-object is a 422 in the same shape as field errors (loc ["body"])."""
    raw = await read_limited(request, limit)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise body_validation_error(f"JSON decode error: {exc}", "json_invalid") from exc
    if not isinstance(value, dict):
        raise body_validation_error("Input should be a valid dictionary or object", "dict_type")
    return value


async def stream_to_file(request: Request, path: Path, limit: int) -> int:
    """Write the raw body to `path` in batches (file writes in a worker thread); returns the size.
    Removes the partial file and raises 413 if the body passes `limit`."""
    _check_declared_length(request, limit)
    size = 0
    batch: list[bytes] = []
    batched = 0
    try:
        with open(path, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _WRITE_BATCH:
                    await anyio.to_thread.run_sync(out.write, b"".join(batch))
                    batch, batched = [], 0
            if batch:
                await anyio.to_thread.run_sync(out.write, b"".join(batch))
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise StorageFullError() from exc
        raise
    return size
