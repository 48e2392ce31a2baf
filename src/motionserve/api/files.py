"""Uploads in both official clients' flows (fal-protocol.md §3), and serving stored files.

Python (`fal_client.upload*`, with `REST_URL = base + "/rest"`, `CDN_URL = base + "/cdn"`):
  POST /rest/storage/auth/token            API key -> short-lived bearer token, base_url = {base}/cdn
  POST /cdn/files/upload                   raw body -> {"access_url"}
  POST /cdn/files/upload/multipart         -> {"access_url", "uploadId"}; access_url is the final file URL
  PUT  {access_url}/multipart/{id}/{n}     -> ETag header
  POST {access_url}/multipart/{id}/complete
  POST /rest/storage/upload/initiate?storage_type=gcs   the fallback: same as JS below
JS (`fal.storage.upload`, rest.fal.ai rewritten to {base}/rest):
  POST /rest/storage/upload/initiate[-multipart]        API key -> {"upload_url", "file_url"}
  PUT  {upload_url}                        single upload; no credentials, so the URL itself carries
                                           the unguessable upload id (usable until completed)
  PUT  {upload_url}/{n} -> {"partNumber", "etag"};  POST {upload_url}/complete
Files are served at GET /files/{token}/{name} without a key: the token is the secret. Any node
answers for any file (the metadata is in the database): from local disk, by a redirect to a
short-lived presigned S3 URL, or by relaying the object (Settings.file_delivery).
"""

from __future__ import annotations

import mimetypes
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import anyio
from fastapi import APIRouter, Depends, Header, Path as PathParam, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from motionserve.api.body import read_json_object, stream_to_file
from motionserve.api.deps import (
    FileStoreDep,
    OwnerDep,
    SettingsDep,
    StoreDep,
    parse_key_header,
    public_base_url,
    request_base_url,
)
from motionserve.api.errors import ApiError
from motionserve.api.headers import parse_lifecycle
from motionserve.api.responses import ANY_FILE, API_KEY, RAW_BODY, Responses, errors, json_body
from motionserve.errors import InputValidationError
from motionserve.storage import (
    FileStore,
    FileStoreError,
    FileTooLargeError,
    PendingUpload,
    StorageUnavailableError,
    StoredFile,
    UploadNotFoundError,
)
from motionserve.storage.store import MAX_PART_NUMBER
from motionserve.storage.types import ServeFile, ServeRedirect, ServeStream

router = APIRouter(tags=["files"])

T = TypeVar("T")
_CACHE_CONTROL = "private, max-age=3600"
# Checked (422) before the part's body is read; the stores refuse any other number too.
PartNumber = Annotated[int, PathParam(ge=1, le=MAX_PART_NUMBER, description="1 to 10000, as in S3")]

# What the upload routes answer besides 200; 503 only with an object store (S3) that is unreachable,
# 507 when the server's disk is full.
_UPLOAD_ERRORS: Responses = errors(400, 413, 422, 503, 507)
_PART_ERRORS: Responses = errors(400, 404, 413, 422, 503, 507)
_FILE_INFO = json_body(
    {"type": "object", "required": ["access_url", "file_url"],
     "properties": {"access_url": {"type": "string"}, "file_url": {"type": "string"}, "content_type": {"type": "string"},
                    "file_name": {"type": "string"}, "file_size": {"type": "integer"}}},
    "The stored file",
)
_PART = json_body({"type": "object", "required": ["partNumber", "etag"],
                   "properties": {"partNumber": {"type": "integer"}, "etag": {"type": "string"}}}, "The part is stored")
_PARTS_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object",
    "properties": {"parts": {"type": "array", "items": {
        "type": "object", "required": ["partNumber"],
        "properties": {"partNumber": {"type": "integer"}, "etag": {"type": ["string", "null"]}}}}},
}}}}}
_INITIATE_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"content_type": {"type": ["string", "null"]}, "file_name": {"type": ["string", "null"]}},
}}}}}


def require_upload_owner(
    request: Request,
    store: StoreDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """A CDN bearer token (what the Python client sends), or an API key (handy with curl)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        owner = request.app.state.upload_tokens.verify(credentials.strip())
        if owner is not None:
            return owner
    parsed = parse_key_header(authorization)
    owner = store.verify_key(*parsed) if parsed is not None else None
    if owner is None:
        raise ApiError(401, "Missing, invalid or expired upload token", headers={"WWW-Authenticate": "Bearer"})
    return owner


UploaderDep = Annotated[str, Depends(require_upload_owner)]


def _expires_at(request: Request, settings: Any) -> float:
    retention = parse_lifecycle(request.headers) or settings.file_retention_s
    return time.time() + retention


def _default_name(content_type: str) -> str:
    return "upload" + (mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin")


def _file_info(file_store: FileStore, base_url: str, stored: StoredFile) -> dict[str, Any]:
    url = file_store.file_url(base_url, stored)
    return {
        "access_url": url,
        "file_url": url,
        "content_type": stored.content_type,
        "file_name": stored.file_name,
        "file_size": stored.size,
    }


def _translate(exc: FileStoreError) -> ApiError:
    if isinstance(exc, FileTooLargeError):
        return ApiError(413, str(exc), error_type="request_too_large")
    if isinstance(exc, UploadNotFoundError):
        return ApiError(404, str(exc))
    if isinstance(exc, StorageUnavailableError):
        return ApiError(503, str(exc))
    return ApiError(400, str(exc))


async def _in_thread(call: Callable[[], T]) -> T:
    """A file store call (database, disk or bucket: all blocking) off the event loop, its
    refusals as HTTP errors."""
    try:
        return await anyio.to_thread.run_sync(call)
    except FileStoreError as exc:
        raise _translate(exc) from exc


async def _receive(request: Request, file_store: FileStore, limit: int) -> Path:
    path = file_store.temp_path()
    await stream_to_file(request, path, limit)
    return path


async def _parts_from_body(request: Request) -> list[tuple[int, str | None]] | None:
    body = await read_json_object(request, limit=1024 * 1024)
    if "parts" not in body:
        return None
    try:
        return [(int(p["partNumber"]), str(p["etag"]) if p.get("etag") is not None else None) for p in body["parts"]]
    except (TypeError, KeyError, ValueError) as exc:
        raise ApiError(422, [{"loc": ["body", "parts"], "msg": "Expected [{partNumber, etag}, ...]", "type": "value_error"}]) from exc


# ---- Python client: token + CDN ------------------------------------------------------------------


@router.post("/rest/storage/auth/token", openapi_extra=API_KEY, responses={
    200: json_body({"type": "object", "required": ["token", "token_type", "base_url", "expires_at"],
                    "properties": {k: {"type": "string"} for k in ("token", "token_type", "base_url", "expires_at")}},
                   "A short-lived upload token for the CDN routes"),
    **errors(401),
})
def cdn_token(request: Request, owner: OwnerDep, storage_type: str | None = None) -> JSONResponse:
    token, expires_at = request.app.state.upload_tokens.issue(owner)
    return JSONResponse(
        {
            "token": token,
            "token_type": "Bearer",
            "base_url": f"{request_base_url(request)}/cdn",
            # Python parses it with datetime.fromisoformat and compares to an aware now(): keep the offset.
            "expires_at": datetime.fromtimestamp(expires_at, tz=timezone.utc).isoformat(),
        }
    )


@router.post("/cdn/files/upload", openapi_extra={**API_KEY, **RAW_BODY},
             responses={200: _FILE_INFO, **errors(401), **_UPLOAD_ERRORS})
async def cdn_upload(
    request: Request,
    _: UploaderDep,
    settings: SettingsDep,
    file_store: FileStoreDep,
    content_type: Annotated[str | None, Header()] = None,
    x_fal_file_name: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    ctype = content_type or "application/octet-stream"
    expires_at = _expires_at(request, settings)
    path = await _receive(request, file_store, settings.max_upload_bytes)
    name = x_fal_file_name or _default_name(ctype)
    stored = await _in_thread(
        lambda: file_store.put(path, content_type=ctype, file_name=name, expires_at=expires_at, move=True)
    )
    return JSONResponse(_file_info(file_store, public_base_url(request, settings), stored))


@router.post("/cdn/files/upload/multipart", openapi_extra=API_KEY, responses={
    200: json_body({"type": "object", "required": ["access_url", "uploadId"],
                    "properties": {"access_url": {"type": "string"}, "uploadId": {"type": "string"}}}, "The upload is open"),
    **errors(401), **_UPLOAD_ERRORS,
})
def cdn_multipart_begin(
    request: Request,
    _: UploaderDep,
    settings: SettingsDep,
    file_store: FileStoreDep,
    content_type: Annotated[str | None, Header()] = None,
    x_fal_file_name: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    ctype = content_type or "application/octet-stream"
    try:
        pending = file_store.begin_multipart(ctype, x_fal_file_name or _default_name(ctype), _expires_at(request, settings))
    except FileStoreError as exc:
        raise _translate(exc) from exc
    return JSONResponse({"access_url": file_store.file_url(public_base_url(request, settings), pending), "uploadId": pending.upload_id})


def _pending_for(file_store: FileStore, upload_id: str, token: str | None = None) -> PendingUpload:
    pending = file_store.pending(upload_id)
    if pending is None or (token is not None and pending.token != token):
        raise ApiError(404, "Upload not found (unknown, completed or expired)")
    return pending


async def _put_part(
    request: Request, settings: Any, file_store: FileStore, upload_id: str, part_number: int, token: str | None = None
) -> str:
    await anyio.to_thread.run_sync(lambda: _pending_for(file_store, upload_id, token))  # before reading the body
    path = await _receive(request, file_store, settings.max_upload_bytes)
    try:
        return await _in_thread(lambda: file_store.put_part(upload_id, part_number, path, move=True))
    finally:
        path.unlink(missing_ok=True)  # normally consumed already; not when the part was refused


async def _complete(
    request: Request, settings: Any, file_store: FileStore, upload_id: str, parts: list[tuple[int, str | None]] | None
) -> JSONResponse:
    stored = await _in_thread(lambda: file_store.complete_multipart(upload_id, parts))
    return JSONResponse(_file_info(file_store, public_base_url(request, settings), stored))


@router.put("/files/{token}/{name}/multipart/{upload_id}/{part_number:int}", openapi_extra={**API_KEY, **RAW_BODY},
            responses={200: _PART, **errors(401), **_PART_ERRORS})
async def cdn_multipart_part(
    request: Request, token: str, name: str, upload_id: str, part_number: PartNumber,
    _: UploaderDep, settings: SettingsDep, file_store: FileStoreDep,
) -> JSONResponse:
    etag = await _put_part(request, settings, file_store, upload_id, part_number, token)
    return JSONResponse({"partNumber": part_number, "etag": etag}, headers={"ETag": etag})


@router.post("/files/{token}/{name}/multipart/{upload_id}/complete", openapi_extra={**API_KEY, **_PARTS_BODY},
             responses={200: _FILE_INFO, **errors(401), **_PART_ERRORS})
async def cdn_multipart_complete(
    request: Request, token: str, name: str, upload_id: str,
    _: UploaderDep, settings: SettingsDep, file_store: FileStoreDep,
) -> JSONResponse:
    await anyio.to_thread.run_sync(lambda: _pending_for(file_store, upload_id, token))
    return await _complete(request, settings, file_store, upload_id, await _parts_from_body(request))


# ---- JS client (and the Python "gcs" fallback): initiate + upload URL -----------------------------


def _optional_text(body: dict[str, Any], field: str) -> str | None:
    """A string field of an initiate body, or None when absent, null or empty; anything else is a 422
    (str() of an object would have named the file `{}`)."""
    value = body.get(field)
    if value is None or isinstance(value, str):
        return value or None
    raise InputValidationError([{"loc": ["body", field], "msg": "Input should be a valid string", "type": "string_type", "input": value}])


async def _initiate(request: Request, settings: Any, file_store: FileStore) -> JSONResponse:
    body = await read_json_object(request, limit=1024 * 1024)
    ctype = _optional_text(body, "content_type") or "application/octet-stream"
    name = _optional_text(body, "file_name") or _default_name(ctype)
    expires_at = _expires_at(request, settings)
    pending = await _in_thread(lambda: file_store.begin_multipart(ctype, name, expires_at))
    return JSONResponse(
        {
            "upload_url": f"{request_base_url(request)}/cdn/uploads/{pending.upload_id}",
            "file_url": file_store.file_url(public_base_url(request, settings), pending),
        }
    )


_INITIATED = json_body({"type": "object", "required": ["upload_url", "file_url"],
                        "properties": {"upload_url": {"type": "string"}, "file_url": {"type": "string"}}},
                       "Where to PUT the file, and its URL once complete")


@router.post("/rest/storage/upload/initiate", openapi_extra={**API_KEY, **_INITIATE_BODY},
             responses={200: _INITIATED, **errors(401), **_UPLOAD_ERRORS})
async def initiate_upload(request: Request, _: OwnerDep, settings: SettingsDep, file_store: FileStoreDep) -> JSONResponse:
    return await _initiate(request, settings, file_store)


@router.post("/rest/storage/upload/initiate-multipart", openapi_extra={**API_KEY, **_INITIATE_BODY},
             responses={200: _INITIATED, **errors(401), **_UPLOAD_ERRORS})
async def initiate_multipart(request: Request, _: OwnerDep, settings: SettingsDep, file_store: FileStoreDep) -> JSONResponse:
    return await _initiate(request, settings, file_store)


@router.put("/cdn/uploads/{upload_id}", openapi_extra=RAW_BODY, responses={200: _FILE_INFO, **_PART_ERRORS})
async def upload_single(request: Request, upload_id: str, settings: SettingsDep, file_store: FileStoreDep) -> JSONResponse:
    # A one-part multipart upload: on S3 the part goes to S3's multipart API like any other.
    etag = await _put_part(request, settings, file_store, upload_id, 1)
    return await _complete(request, settings, file_store, upload_id, [(1, etag)])


@router.put("/cdn/uploads/{upload_id}/{part_number:int}", openapi_extra=RAW_BODY, responses={200: _PART, **_PART_ERRORS})
async def upload_part(request: Request, upload_id: str, part_number: PartNumber, settings: SettingsDep, file_store: FileStoreDep) -> JSONResponse:
    etag = await _put_part(request, settings, file_store, upload_id, part_number)
    return JSONResponse({"partNumber": part_number, "etag": etag}, headers={"ETag": etag})


@router.post("/cdn/uploads/{upload_id}/complete", openapi_extra=_PARTS_BODY, responses={200: _FILE_INFO, **_PART_ERRORS})
async def upload_complete(request: Request, upload_id: str, settings: SettingsDep, file_store: FileStoreDep) -> JSONResponse:
    await anyio.to_thread.run_sync(lambda: _pending_for(file_store, upload_id))
    return await _complete(request, settings, file_store, upload_id, await _parts_from_body(request))


# ---- serving -----------------------------------------------------------------------------------------


@router.get("/files/{token}/{name}", summary="Download a stored file (no key: the URL is the secret)", responses={
    200: ANY_FILE,
    206: {**ANY_FILE, "description": "The byte range asked for (S3 relay)"},
    307: {"description": "Redirect to a short-lived presigned URL (S3 redirect mode)"},
    **errors(404, 416, 503),
})
def get_file(request: Request, token: str, name: str, file_store: FileStoreDep) -> Response:
    stored = file_store.get(token)
    if stored is None:
        raise ApiError(404, "File not found (unknown or expired)")
    how = file_store.delivery(stored)
    if isinstance(how, ServeFile):
        return FileResponse(
            how.path,
            media_type=stored.content_type,
            filename=stored.file_name,
            content_disposition_type="inline",
            headers={"Cache-Control": _CACHE_CONTROL},
        )
    if isinstance(how, ServeRedirect):
        # The presigned URL expires: a cached redirect would outlive it.
        return RedirectResponse(how.url, status_code=307, headers={"Cache-Control": "no-store"})
    return _relay(request, stored, how)


router.add_api_route("/files/{token}/{name}", get_file, methods=["HEAD"], include_in_schema=False)


def _relay(request: Request, stored: StoredFile, stream: ServeStream) -> Response:
    """The object through this node, with single-range support (video players seek with Range)."""
    first, last, partial = _byte_range(request.headers.get("range"), stored.size)
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": _CACHE_CONTROL,
        "Content-Disposition": f'inline; filename="{stored.file_name}"',
        "Content-Length": str(last - first + 1),
    }
    if partial:
        headers["Content-Range"] = f"bytes {first}-{last}/{stored.size}"
    status = 206 if partial else 200
    if request.method == "HEAD" or stored.size == 0:
        return Response(status_code=status, headers=headers, media_type=stored.content_type)
    try:
        chunks = stream.open(first, last)
    except FileStoreError as exc:
        raise _translate(exc) from exc
    return StreamingResponse(chunks, status_code=status, headers=headers, media_type=stored.content_type)


def _byte_range(header: str | None, size: int) -> tuple[int, int, bool]:
    """(first, last, partial) for a `Range: bytes=...` header; the whole file when absent, multiple
    or malformed (RFC 9110 lets a server ignore those); 416 when it starts past the end."""
    whole = (0, size - 1, False)
    spec = (header or "").strip()
    if not spec.lower().startswith("bytes=") or "," in spec:
        return whole
    start_text, dash, end_text = (t.strip() for t in spec[len("bytes="):].partition("-"))
    if not dash or not (start_text or end_text) or not all(t.isdigit() for t in (start_text, end_text) if t):
        return whole
    if start_text:
        first = int(start_text)
        if end_text and int(end_text) < first:
            return whole
        last = min(int(end_text), size - 1) if end_text else size - 1
    else:  # a suffix: the last N bytes
        suffix = int(end_text)
        first, last = (size - min(suffix, size), size - 1) if suffix else (size, size - 1)
    if first >= size:
        raise ApiError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return first, last, True
