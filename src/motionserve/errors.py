"""Errors shared by every layer. A leaf module: it imports nothing of ours.

Each error knows the HTTP status and fal `error_type` it is reported with, so that a failure raised
deep in a pipeline reaches the client in fal's shape without the inner layers knowing about HTTP.
"""

from __future__ import annotations

import errno
from typing import Any


class MotionserveError(Exception):
    """Base class. `status_code`/`error_type` say how the failure is reported to the client."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> Any:
        """The value of the `detail` key in the JSON error body."""
        return self.message


class InputValidationError(MotionserveError):
    """One or more input fields are invalid: fal's 422 `{"detail": [{loc, msg, type}, ...]}`.

    `errors` entries follow pydantic v2: `loc` starts with "body", `msg`, `type`, optional `input`/`ctx`.
    """

    status_code = 422
    error_type = "validation_error"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors))

    @classmethod
    def for_field(cls, field: str | tuple[str | int, ...], msg: str, type_: str = "value_error", input: Any = None) -> "InputValidationError":
        loc = ("body", field) if isinstance(field, str) else ("body", *field)
        entry: dict[str, Any] = {"loc": list(loc), "msg": msg, "type": type_}
        if input is not None:
            entry["input"] = input
        return cls([entry])

    def detail(self) -> Any:
        return self.errors


class FetchError(MotionserveError):
    """A remote or local file could not be fetched (bad URL, refused address, too big, too slow...)."""

    status_code = 422
    error_type = "file_download_error"


class AddressRefusedError(FetchError):
    """A URL refused by policy (a non-public address, an unsupported scheme): no retry can help."""


class ModelUnavailableError(MotionserveError):
    """A checkpoint the endpoint needs is missing; the message says what and how to get it."""

    status_code = 503
    error_type = "model_unavailable"


class JobCancelledError(MotionserveError):
    """The request was cancelled by its owner; raised at the next step check. Not a failure."""

    status_code = 499
    error_type = "client_cancelled"


class StorageFullError(MotionserveError):
    """The disk that holds uploads and outputs is full (or over quota); retrying once space is freed
    works. Reported as 507 Insufficient Storage (RFC 4918), never as a truncated file."""

    status_code = 507
    error_type = "insufficient_storage"

    def __init__(self, message: str = "No space left on the server's file storage; try again later") -> None:
        super().__init__(message)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError that means "no space left" (ENOSPC) or "over quota" (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
