"""Exception handlers: every error leaves the server as JSON in fal's `{"detail": ...}` shape.

The JS client only builds a useful error from a JSON body (`Content-Type: application/json`), and the
Python client takes `detail` and `error_type` from it, so Starlette's own plain-text 404/405/500 pages
are replaced as well.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from motionserve.database import unreachable
from motionserve.errors import InputValidationError, MotionserveError, StorageFullError, is_disk_full

log = logging.getLogger(__name__)

ERROR_TYPE_HEADER = "X-Fal-Error-Type"
REQUEST_ID_HEADER = "x-fal-request-id"
# What a client is told to wait before retrying while the database is away: restarts and fail-overs
# take seconds; a shorter hint would only add load to a server that cannot answer yet.
DATABASE_RETRY_AFTER_S = 5


class ApiError(Exception):
    """An HTTP error raised inside a route: status, `detail` value, optional error type and headers."""

    def __init__(
        self,
        status_code: int,
        detail: Any,
        *,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(str(detail))
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type
        self.headers = dict(headers or {})
        self.body = body  # replaces {"detail": ...} when the protocol wants another shape (cancel)


def error_response(
    status_code: int,
    detail: Any,
    *,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": jsonable_encoder(detail)}
    out_headers = dict(headers or {})
    if error_type:
        body["error_type"] = error_type
        out_headers.setdefault(ERROR_TYPE_HEADER, error_type)
    return JSONResponse(body, status_code=status_code, headers=out_headers)


def motionserve_error_response(exc: MotionserveError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    # Validation keeps fal's exact 422 body (a list under `detail`, nothing else).
    error_type = None if isinstance(exc, InputValidationError) else exc.error_type
    return error_response(exc.status_code, exc.detail(), error_type=error_type, headers=headers)


def body_validation_error(msg: str, type_: str = "value_error", loc: tuple[str, ...] = ("body",)) -> InputValidationError:
    """A 422 about the body as a whole (malformed JSON, not an object), same shape as field errors."""
    return InputValidationError([{"loc": list(loc), "msg": msg, "type": type_}])


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.body is not None:
        return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, exc.detail, error_type=exc.error_type, headers=exc.headers)


async def _motionserve_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MotionserveError)
    return motionserve_error_response(exc)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"Path {request.url.path} not found"  # what fal's runners answer for unknown routes
    return error_response(exc.status_code, detail, headers=exc.headers)


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k != "url"} for e in exc.errors()]
    return error_response(422, errors)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sa_exc.SQLAlchemyError)
    if not unreachable(exc):  # a statement the database refused: a bug, a 500
        return await _unhandled(request, exc)
    # One line, no traceback: during an outage every request lands here.
    log.warning("%s %s: database unreachable: %s", request.method, request.url.path, str(exc).splitlines()[0])
    return error_response(
        503,
        "The server's database is unreachable; try again shortly",
        error_type="database_unavailable",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    if is_disk_full(exc):  # a full disk met outside the file store's own checks
        return motionserve_error_response(StorageFullError())
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal Server Error", error_type="internal_error")


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(MotionserveError, _motionserve_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unhandled)
