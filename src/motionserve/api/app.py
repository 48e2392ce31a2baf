"""The FastAPI application: fal's queue/run API, storage, files, docs, health and JWKS.

`create_app` only wires things together; it starts nothing. Workers, the webhook dispatcher and the
file clean-up run beside it as threads (see `motionserve.api.server`) or in other processes, and
everything they share with the API goes through the store.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from motionserve import __version__
from motionserve.api import files, metrics, openapi, queue, requests
from motionserve.api.deps import SettingsDep, StoreDep
from motionserve.api.errors import install_exception_handlers
from motionserve.api.upload_tokens import UploadTokens, load_or_create_secret
from motionserve.config import Settings
from motionserve.database import make_engine
from motionserve.endpoints.base import Endpoint
from motionserve.storage import FileStore

log = logging.getLogger(__name__)

ops = APIRouter(tags=["server"])

DESCRIPTION = """Self-hosted video diffusion endpoints speaking the fal model API.

Point `fal-client` / `@fal-ai/client` here (see the README), authenticate with
`Authorization: Key KEY_ID:SECRET`, and use the per-endpoint documents under `/openapi/{endpoint_id}.json`."""


@ops.get("/health", summary="Liveness: the store answers; in-process workers")
def health(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    try:
        store.has_keys()  # a real round trip to the database
    except Exception as exc:  # any driver error means "not healthy", with the reason
        log.warning("health check: store unreachable: %s", exc)
        return JSONResponse({"status": "unhealthy", "detail": f"store unreachable: {exc}"}, status_code=503)
    workers_info: Callable[[], list[dict[str, Any]]] | None = request.app.state.workers_info
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "endpoints": sorted(request.app.state.endpoints),
            "workers": workers_info() if workers_info is not None else [],
            "workers_in_process": settings.workers_in_process,
        }
    )


def _jwks(store: Any) -> JSONResponse:
    # Imported here: the webhook module pulls in the HTTP delivery client, which only this route needs.
    from motionserve.jobs.webhooks import jwks

    return JSONResponse(jwks(store), headers={"Cache-Control": "public, max-age=3600"})


@ops.get("/.well-known/jwks.json", summary="Public keys that sign webhook deliveries")
def jwks_root(store: StoreDep) -> JSONResponse:
    return _jwks(store)


@ops.get("/rest/.well-known/jwks.json", include_in_schema=False)
def jwks_rest(store: StoreDep) -> JSONResponse:
    return _jwks(store)


def default_endpoints() -> Mapping[str, Endpoint]:
    from motionserve.endpoints.registry import ENDPOINTS

    return ENDPOINTS


def _upload_token_secret(database_url: str) -> bytes:
    """Read once at start, from the job store's database (its tables must exist)."""
    engine = make_engine(database_url)
    try:
        return load_or_create_secret(engine)
    finally:
        engine.dispose()


def create_app(
    settings: Settings,
    store: Any,
    file_store: FileStore,
    *,
    endpoints: Mapping[str, Endpoint] | None = None,
    workers_info: Callable[[], list[dict[str, Any]]] | None = None,
) -> FastAPI:
    """The app for `settings`, `store` (motionserve.jobs.store.Store) and `file_store`.

    `endpoints` defaults to the registry; `workers_info` reports in-process workers on /health.
    """
    app = FastAPI(
        title="motionserve",
        version=__version__,
        description=DESCRIPTION,
        # A redirect is an error for fal_client's async client: accept both forms explicitly instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.file_store = file_store
    app.state.endpoints = dict(default_endpoints() if endpoints is None else endpoints)
    app.state.workers_info = workers_info
    app.state.upload_tokens = UploadTokens(_upload_token_secret(store.url))
    install_exception_handlers(app)
    app.include_router(requests.router)
    app.include_router(queue.router)
    app.include_router(files.router)
    app.include_router(openapi.router)
    app.include_router(ops)
    app.include_router(metrics.router)
    openapi.install_openapi(app)
    return app
