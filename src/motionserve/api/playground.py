"""The playground: a page at `/` (and `/playground/{endpoint_id}`) to try every endpoint in a browser,
and the static files it and the docs pages load (`/static/...`, shipped in the package).

The page is plain HTML, CSS and ES modules (static/playground/), no build step. It builds each
endpoint's form from the endpoint's OpenAPI document and talks to the same public API the official
clients use (queue, status stream, cancel, storage uploads, `GET /requests`), with the key the user
types (kept in the browser's localStorage, sent only as the Authorization header). Nothing is loaded
from another host: its Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from motionserve import __version__
from motionserve.api.errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static"
_PAGE = STATIC_DIR / "playground" / "index.html"
# Scripts, styles and fetches from this server only. Images and videos may come from elsewhere: with
# S3 storage in redirect mode, /files/... answers with a presigned URL on the bucket's host.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src * data: blob:; media-src * data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
# Revalidated on every load (a 304 when unchanged): an upgraded server never runs stale scripts.
_STATIC_CACHE = "no-cache"


def root_path(request: Request) -> str:
    """Where the app is mounted (behind a proxy that strips a prefix), without a trailing slash."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def static_url(request: Request, name: str) -> str:
    return f"{root_path(request)}{STATIC_PREFIX}/{name}"


def _page(request: Request) -> HTMLResponse:
    html = _PAGE.read_text(encoding="utf-8")
    html = html.replace("{{ROOT}}", root_path(request)).replace("{{VERSION}}", __version__)
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/")
def playground_home(request: Request) -> HTMLResponse:
    return _page(request)


@router.get("/playground")
@router.get("/playground/{endpoint_id:path}")
def playground_endpoint(request: Request, endpoint_id: str = "") -> HTMLResponse:
    # Unknown ids get the page too: it says so itself, beside the list of real ones.
    return _page(request)


@router.get(STATIC_PREFIX + "/{name:path}")
def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file() or path == _PAGE:
        raise ApiError(404, "Not found")
    return FileResponse(path, headers={"Cache-Control": _STATIC_CACHE, "X-Content-Type-Options": "nosniff"})
