"""Schema fuzzing of a real server (tests/e2e/fuzz.py): every OpenAPI document, a few examples per
operation, every Schemathesis check. No answer may be a 5xx or differ from what its document declares
(status code, media type, headers, body). `make fuzz` runs the same with many more examples.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import pytest

from motionserve.endpoints.registry import ENDPOINTS

from .fuzz import documents, run_schemathesis
from .server import Server

pytestmark = pytest.mark.e2e

# Per operation and phase; `make fuzz` uses many more. Enough here to reach every route and status.
EXAMPLES = int(os.environ.get("MOTIONSERVE_E2E_FUZZ_EXAMPLES", "4"))


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


# An answered lookup of a request id the server made (a UUID), in uvicorn's access log: a status,
# stream, cancel or result that found its request (200/202, or 400/499 for a result or cancel).
REAL_ID_LOOKUP = re.compile(
    r'"(?:GET|PUT) /queue/\S+/requests/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
    r'(?:/status|/status/stream|/cancel)?/? HTTP/1\.1" (?:200|202|400|499)'
)


def log_size(target: Target) -> int:
    return target.server.process.log_path.stat().st_size


def real_id_lookups(target: Target, since: int) -> list[str]:
    with open(target.server.process.log_path, "rb") as log:
        log.seek(since)
        return REAL_ID_LOOKUP.findall(log.read().decode(errors="replace"))


@pytest.mark.parametrize("document", documents(sorted(ENDPOINTS)))
def test_no_answer_is_a_server_error_or_undocumented(target: Target, document: str, tmp_path: Path) -> None:
    log_start = log_size(target)

    result = run_schemathesis(
        target.server.base_url, document, ca_cert=target.server.tls.ca_cert, key=target.key,
        admin_key=target.admin_key, max_examples=EXAMPLES, report_dir=tmp_path, timeout_s=300,
    )

    assert result.ok, result.explain()
    assert result.operations == documented_operations(target, document), result.explain()
    # The stateful phase followed the links from a submit to the lookups of its request, real id and all.
    assert real_id_lookups(target, log_start), result.explain()
