"""GET /metrics: Prometheus text for a scraper holding an admin key.

The answer joins this process's instruments with the fleet's state read from the database, so any
API node gives the fleet-wide queue depth (the autoscaling signal). Prometheus sends the key with
`authorization: {type: Key, credentials: KEY_ID:SECRET}` in its scrape config (or `Bearer`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from motionserve.api.deps import AdminDep, SettingsDep, StoreDep
from motionserve.api.responses import ADMIN_ONLY, API_KEY
from motionserve.metrics import FleetCollector, process_collector, render

# A worker that missed this many leases' worth of heartbeats is no longer counted as live.
STALE_AFTER_LEASES = 3

router = APIRouter(tags=["server"])


@router.get("/metrics", summary="Prometheus metrics: this node's counters and the fleet's queue (admin key)", openapi_extra=API_KEY,
            responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                       **ADMIN_ONLY})
def metrics(request: Request, _admin: AdminDep, store: StoreDep, settings: SettingsDep) -> Response:
    # A sync route on purpose: FastAPI runs it in a thread, so the database reads never block the event loop.
    fleet: FleetCollector | None = getattr(request.app.state, "fleet_metrics", None)
    if fleet is None:  # two first scrapes racing would each build one: harmless
        fleet = FleetCollector(
            store.engine,
            stale_after_s=STALE_AFTER_LEASES * settings.lease_s,
            endpoints=request.app.state.endpoints,
        )
        request.app.state.fleet_metrics = fleet
    return Response(render(process_collector(), fleet), media_type=CONTENT_TYPE_LATEST)
