"""Schema fuzzing of a real server (tests/e2e/fuzz.py): every OpenAPI document, a few examples per
operation, every Schemathesis check. No answer may be a 5xx or differ from what its document declares
(status code, media type, headers, body). `make fuzz` runs the same with many more examples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from motionserve.endpoints.registry import ENDPOINTS

from .fuzz import APP_DOCUMENT, documents, run_schemathesis
from .server import Server

pytestmark = pytest.mark.e2e

# Per operation and phase; `make fuzz` uses many more. Enough here to reach every route and status.
EXAMPLES = int(os.environ.get("MOTIONSERVE_E2E_FUZZ_EXAMPLES", "5"))


class Target:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.key = server.create_key("fuzz")
        self.admin_key = server.create_key("fuzz-admin", admin=True)


@pytest.fixture(scope="module")
def target(server_factory) -> Iterator[Target]:
    # No workers: fuzzed submits only queue. Private URLs allowed: webhooks are sent to loopback.
    srv = server_factory("fuzz", workers=False, allow_private_urls=True)
    yield Target(srv)
    srv.stop()


def documented_operations(target: Target, document: str) -> int:
    with target.server.http() as http:
        paths = http.get(document).json()["paths"]
    return sum(1 for item in paths.values() for method in item if method in ("get", "put", "post", "delete", "patch"))


def cancelled_requests(target: Target, endpoint_id: str | None) -> int:
    params = {"limit": 100, **({"endpoint_id": endpoint_id} if endpoint_id else {})}
    with target.server.http(target.key) as http:
        listed = http.get("/requests", params=params).json()["requests"]
    return sum(1 for r in listed if r["error_type"] == "client_cancelled")


@pytest.mark.parametrize("document", documents(sorted(ENDPOINTS)))
def test_no_answer_is_a_server_error_or_undocumented(target: Target, document: str, tmp_path: Path) -> None:
    endpoint_id = None if document == APP_DOCUMENT else document.removeprefix("/openapi/").removesuffix(".json")
    cancelled_before = cancelled_requests(target, endpoint_id)

    result = run_schemathesis(
        target.server.base_url, document, ca_cert=target.server.tls.ca_cert, key=target.key,
        admin_key=target.admin_key, max_examples=EXAMPLES, report_dir=tmp_path, timeout_s=300,
    )

    assert result.ok, result.explain()
    assert result.operations == documented_operations(target, document), result.explain()
    # The stateful phase followed the links from a submit to its request: real ids were cancelled.
    assert cancelled_requests(target, endpoint_id) > cancelled_before, result.explain()
