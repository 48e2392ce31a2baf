"""Limits per key over HTTP: the submit rate (429 + Retry-After, shared by API nodes through the
database), a running limit that queues instead of refusing, and admin-only routes."""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import ExitStack, contextmanager
from pathlib import Path

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIRouter

import motionserve.api
from motionserve.api.deps import require_admin
from tests.api.conftest import Api, make_api

APP = "/queue/test-owner/echo"
api_node = contextmanager(make_api)  # an API node of its own (app, store), on the database it is given


def _admin_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the API package that asks for `require_admin`, on whichever
    APIRouter it is declared (found by reading the modules, so a new admin route is covered too)."""
    routes = []
    for info in pkgutil.iter_modules(motionserve.api.__path__):
        module = importlib.import_module(f"motionserve.api.{info.name}")
        routes += [r for v in vars(module).values() if isinstance(v, APIRouter) for r in v.routes if isinstance(r, APIRoute)]
    return {(m, r.path) for r in routes if _needs_admin(r.dependant) for m in r.methods}


def _needs_admin(dependant: Dependant) -> bool:
    return dependant.call is require_admin or any(_needs_admin(d) for d in dependant.dependencies)


def test_a_user_key_gets_a_clear_403_on_every_admin_route(api: Api) -> None:
    admin_routes = _admin_routes()
    assert {("GET", "/workers"), ("GET", "/metrics")} <= admin_routes
    key_id, secret = api.store.create_key("ops", admin=True)
    for method, path in sorted(admin_routes):
        refused = api.client.request(method, path, headers=api.auth)
        assert refused.status_code == 403, path
        assert refused.json()["detail"] == "This route needs an admin key", path
        assert api.client.request(method, path).status_code == 401, path
        assert api.client.request(method, path, headers={"Authorization": f"Key {key_id}:{secret}"}).status_code == 200, path


def test_the_submit_rate_is_shared_by_two_api_nodes_on_one_postgres_database(tmp_path: Path, postgres_url: str) -> None:
    with ExitStack() as nodes:
        one = nodes.enter_context(api_node(tmp_path / "one", database_url=postgres_url, submit_rate_per_min=3))
        two = nodes.enter_context(api_node(tmp_path / "two", database_url=postgres_url, submit_rate_per_min=3))
        bad = one.client.post(APP, json={"prompt": "hi", "num_frames": 0}, headers=one.auth)
        assert bad.status_code == 422  # refused input never counts
        for node in (one, two, one):
            node.submit()
        refused = two.client.post(APP, json={"prompt": "hi"}, headers=one.auth)  # alice's key, on the other node
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.json()["detail"].startswith("Too many requests: this key may submit 3 requests per minute")
        assert refused.headers["X-Fal-Error-Type"] == "rate_limited"
        assert len(one.store.list_jobs("alice", limit=10)) == 3
        assert one.client.post(APP, json={"prompt": "hi"}, headers=two.key_for("bob")).status_code == 200  # bob's own count


def test_a_key_at_its_running_limit_still_queues_and_runs_later(tmp_path: Path) -> None:
    with api_node(tmp_path, max_running_per_key=1) as api:
        ids = [api.submit()["request_id"] for _ in range(3)]  # never refused: they wait
        limit = api.settings.max_running_per_key  # what each worker claims with
        first = api.store.claim("w1", 30, max_running_per_owner=limit)
        assert first is not None and first.id == ids[0]
        assert api.store.claim("w2", 30, max_running_per_owner=limit) is None  # a free worker waits
        status = api.client.get(f"{APP}/requests/{ids[1]}/status", headers=api.auth).json()
        assert status["status"] == "IN_QUEUE" and status["queue_position"] == 0
        assert api.store.finish(first.id, "w1", result={"echo": "hi"})
        assert api.store.claim("w2", 30, max_running_per_owner=limit).id == ids[1]  # type: ignore[union-attr]
