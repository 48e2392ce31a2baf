"""Shared dependencies: the app's settings/store/file store, the caller's identity, base URLs.

Routes declare what they need with the `Annotated` aliases below (`SettingsDep`, `StoreDep`,
`FileStoreDep`, `OwnerDep`) instead of reaching into `app.state` themselves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from motionserve.api.errors import ApiError
from motionserve.api.job_events import JobEvents
from motionserve.config import Settings
from motionserve.jobs.protocols import JobStore
from motionserve.storage import FileStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_job_events(request: Request) -> JobEvents:
    return request.app.state.job_events


def get_file_store(request: Request) -> FileStore:
    return request.app.state.file_store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
JobEventsDep = Annotated[JobEvents, Depends(get_job_events)]
FileStoreDep = Annotated[FileStore, Depends(get_file_store)]


def parse_key_header(authorization: str | None) -> tuple[str, str] | None:
    """`Key KEY_ID:SECRET` (or `Bearer KEY_ID:SECRET`) -> (key_id, secret); None when malformed."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() not in ("key", "bearer"):
        return None
    key_id, sep, secret = credentials.strip().partition(":")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def require_owner(
    store: StoreDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The owner of the API key in `Authorization`, or 401. Sync on purpose: FastAPI runs it in a
    thread, so the key check (a database read and a hash) never blocks the event loop."""
    parsed = parse_key_header(authorization)
    if parsed is None:
        raise ApiError(
            401,
            "Missing or malformed credentials: send 'Authorization: Key KEY_ID:SECRET'"
            if not authorization
            else "Malformed credentials: expected 'Authorization: Key KEY_ID:SECRET'",
            headers={"WWW-Authenticate": "Key"},
        )
    owner = store.verify_key(*parsed)
    if owner is None:
        raise ApiError(401, "Invalid or revoked API key", headers={"WWW-Authenticate": "Key"})
    return owner


OwnerDep = Annotated[str, Depends(require_owner)]


def require_admin(
    store: StoreDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The owner of an admin key in `Authorization`: 401 without a valid key, 403 for a user key."""
    parsed = parse_key_header(authorization)
    caller = store.authenticate(*parsed) if parsed is not None else None
    if caller is None:
        raise ApiError(401, "Missing or invalid API key: send 'Authorization: Key KEY_ID:SECRET'",
                       headers={"WWW-Authenticate": "Key"})
    if not caller.admin:
        raise ApiError(403, "This route needs an admin key")
    return caller.owner


AdminDep = Annotated[str, Depends(require_admin)]


def request_base_url(request: Request) -> str:
    """How this client reached us (scheme, host, port, any root path), without a trailing slash.
    Queue URLs and upload URLs are built on it: the client can evidently reach it."""
    return str(request.base_url).rstrip("/")


def public_base_url(request: Request, settings: Settings) -> str:
    """The base for file URLs handed to clients and stored on jobs: the configured public URL if
    the operator set one (e.g. behind a proxy), else the request's own base."""
    return settings.public_url.rstrip("/") if settings.public_url else request_base_url(request)
