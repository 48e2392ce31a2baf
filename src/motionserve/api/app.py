"""The FastAPI application: fal's queue/run API, storage, files, docs, health and JWKS.

`create_app` only wires things together; it starts nothing. Workers, the webhook dispatcher and the
file clean-up run beside it as threads (see `motionserve.api.server`) or in other processes, and
everything they share with the API goes through the store.
"""

from __future__ import annotations

import logging
import asyncio
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator, Mapping

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from motionserve import __version__
from motionserve.api import files, history, metrics, openapi, playground, queue, requests
from motionserve.api.deps import AdminDep, SettingsDep, StoreDep
from motionserve.api.job_events import JobEvents
from motionserve.api.errors import install_exception_handlers
from motionserve.api.responses import ADMIN_ONLY, API_KEY, json_body
from motionserve.api.upload_tokens import UploadTokens, load_or_create_secret
from motionserve.config import Settings
from motionserve.database import make_engine
from motionserve.endpoints.base import Endpoint
from motionserve.jobs.changes import ChangeWatcher
from motionserve.jobs.protocols import JobStore
from motionserve.jobs.store import Store
from motionserve.storage import FileStore

log = logging.getLogger(__name__)

ops = APIRouter(tags=["server"])

DESCRIPTION = """Self-hosted video diffusion endpoints speaking the fal model API.

Point `fal-client` / `@fal-ai/client` here (see the README), authenticate with
`Authorization: Key KEY_ID:SECRET`, and use the per-endpoint documents under `/openapi/{endpoint_id}.json`.
Or try them in a browser: the playground is at `/`."""


def _live_workers(store: JobStore, settings: Settings) -> list[dict[str, Any]]:
    # Workers refresh their row every lease/3 at most: one unseen for a whole lease is gone.
    return [asdict(w) for w in store.live_workers(seen_within_s=settings.lease_s + 5.0)]


_HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}, "detail": {"type": "string"}}}


@ops.get("/health", summary="Liveness: the store answers; the fleet's live workers",
         responses={200: json_body(_HEALTH, "Healthy"), 503: json_body(_HEALTH, "The store is unreachable")})
def health(request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    try:
        workers = _live_workers(store, settings)  # a real round trip to the database
    except Exception as exc:  # any driver error means "not healthy"
        # /health needs no key: the driver's message (host, port, user) goes to the log only.
        log.warning("health check: store unreachable: %s", str(exc).splitlines()[0] if str(exc) else repr(exc))
        detail = f"store unreachable ({type(exc).__name__}); the server log has the reason"
        return JSONResponse({"status": "unhealthy", "detail": detail}, status_code=503)
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "endpoints": sorted(request.app.state.endpoints),
            "workers": [{k: w[k] for k in ("host", "device", "state", "warm")} for w in workers],
            "workers_in_process": settings.workers_in_process,
        }
    )


@ops.get("/workers", summary="Every live worker of the fleet (admin key)", openapi_extra=API_KEY,
         responses={200: json_body({"type": "object", "required": ["workers"], "properties": {"workers": {"type": "array"}}},
                                   "The live workers"), **ADMIN_ONLY})
def list_workers(_: AdminDep, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    return JSONResponse({"workers": _live_workers(store, settings)})


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


@asynccontextmanager
async def _watch_changes(app: FastAPI) -> AsyncIterator[None]:
    """The process's change watcher runs while the app does (one thread, whatever the stream count)."""
    events: JobEvents = app.state.job_events
    stop = threading.Event()
    thread = threading.Thread(target=events.watcher.run_forever, args=(stop,), name="job-changes", daemon=True)
    events.attach(asyncio.get_running_loop())
    thread.start()
    try:
        yield
    finally:
        stop.set()
        events.detach()
        thread.join(5)


def _upload_token_secret(database_url: str) -> bytes:
    """Read once at start, from the job store's database (its tables must exist)."""
    engine = make_engine(database_url)
    try:
        return load_or_create_secret(engine)
    finally:
        engine.dispose()


def create_app(
    settings: Settings,
    store: Store,
    file_store: FileStore,
    *,
    endpoints: Mapping[str, Endpoint] | None = None,
    changes: ChangeWatcher | None = None,
) -> FastAPI:
    """The app for `settings`, `store` and `file_store`. It starts nothing but its change watcher
    (`changes`, or its own), which in-process workers may share.

    `endpoints` defaults to the registry.
    """
    app = FastAPI(
        title="motionserve",
        version=__version__,
        description=DESCRIPTION,
        # A redirect is an error for fal_client's async client: accept both forms explicitly instead.
        redirect_slashes=False,
        lifespan=_watch_changes,
        docs_url=None,  # /docs and /redoc are served from the package's own assets (openapi.py)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.file_store = file_store
    app.state.endpoints = dict(default_endpoints() if endpoints is None else endpoints)
    app.state.job_events = JobEvents(changes or ChangeWatcher(store), store)
    app.state.upload_tokens = UploadTokens(_upload_token_secret(store.url))
    install_exception_handlers(app)
    app.include_router(requests.router)
    app.include_router(queue.router)
    app.include_router(files.router)
    app.include_router(openapi.router)
    app.include_router(ops)
    app.include_router(metrics.router)
    app.include_router(history.router)
    app.include_router(playground.router)
    openapi.install_openapi(app)
    return app
