"""Schemathesis hooks for the schema fuzzer (loaded through `hooks` in tests/e2e/schemathesis.toml).

Webhooks stay on loopback
-------------------------
The fuzzer may send anything the documents allow, and the server acts on some of it: a webhook URL
is called when its request finishes (a cancelled one too). So that no fuzzed request makes the
server reach past this machine, every http(s) `fal_webhook` is pointed at a closed loopback port
before it is sent; the rest of the URL (scheme, path, query) stays as generated. Values the server
refuses before looking at the host (no scheme, no host) are sent unchanged.

Sync runs only with inputs the server refuses
---------------------------------------------
The server runs no workers, so a `/run` it accepts would wait for a result that never comes. The
fuzzer makes only invalid `/run` bodies (schemathesis.toml), but some of those the server reads as
valid (next paragraph): a `/run` body is sent only if the endpoint's own validation refuses it.

fal's lax number parsing
------------------------
Endpoint inputs are parsed as fal parses them (pydantic's lax mode): `"seed": "42"` or `"seed": true`
is read as the integer 42 or 1. The fuzzer calls such an input schema-violating, and its acceptance a
failure (ST201). That one failure is dropped when, and only when, the values the server actually
uses (the parsed input, for the fields sent) satisfy the documented schema: the server read the input
as a valid one. An input accepted and still outside the schema after parsing remains a failure.
"""

from __future__ import annotations

from functools import cache
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from pydantic import BaseModel, ValidationError

from motionserve.endpoints.base import Limits
from motionserve.endpoints.registry import ENDPOINTS
from motionserve.errors import InputValidationError

# Port 9 (discard) on loopback: nothing listens there in the tests, so deliveries fail at once.
LOOPBACK_WEBHOOK = "127.0.0.1:9"


def loopback_webhook(value: Any) -> Any:
    """`value` with its host replaced by LOOPBACK_WEBHOOK if the server could try to call it (each
    value of a repeated parameter too)."""
    if isinstance(value, (list, tuple)):
        return [loopback_webhook(v) for v in value]
    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value  # the server's own urlsplit refuses it too: a 422
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return value
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{LOOPBACK_WEBHOOK}/{parts.path.lstrip('/')}{query}{fragment}"


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if query and "fal_webhook" in query:
        query = {**query, "fal_webhook": loopback_webhook(query["fal_webhook"])}
    return query


def submitted_endpoint(path: str) -> str | None:
    """The endpoint id a submit path addresses (`/queue/{id}`, `/run/{id}`, or `/{id}` under `/queue`)."""
    for prefix in ("/queue/", "/run/", "/"):
        if path.startswith(prefix) and path[len(prefix):] in ENDPOINTS:
            return path[len(prefix):]
    return None


@cache
def _input_validator(endpoint_id: str) -> Any:
    return jsonschema_rs.validator_for(ENDPOINTS[endpoint_id].input_model.model_json_schema())


def read_as_valid(endpoint_id: str, body: Any) -> bool:
    """Whether the endpoint reads `body` as an input that satisfies its documented schema."""
    model: type[BaseModel] = ENDPOINTS[endpoint_id].input_model
    if not isinstance(body, dict):
        return False
    try:
        parsed = model.model_validate(body)
    except ValidationError:
        return False
    used = parsed.model_dump(mode="json", include=set(body) & set(model.model_fields))
    return bool(_input_validator(endpoint_id).is_valid(used))


@schemathesis.hook
def filter_failure(context: schemathesis.HookContext, failure: Any, case: schemathesis.Case, response: Any) -> bool:
    """Keep every failure but an accepted input that fal's lax parsing turns into a valid one."""
    if getattr(failure, "code", None) != "ST201":
        return True
    endpoint_id = submitted_endpoint(case.operation.path)
    if endpoint_id is None or _negative_outside_body(case):
        return True
    return not read_as_valid(endpoint_id, case.body)


def _negative_outside_body(case: schemathesis.Case) -> bool:
    meta = case.meta
    if meta is None:
        return True  # nothing says the body is what was made invalid: keep the failure
    return any(meta.is_negative_at(location) for location in meta.components if location is not ParameterLocation.BODY)


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    path = context.operation.path if context.operation is not None else ""
    endpoint_id = submitted_endpoint(path) if path.startswith("/run/") else None
    return endpoint_id is None or not accepted(endpoint_id, body)


def accepted(endpoint_id: str, body: Any) -> bool:
    """Whether a submit of `body` would be queued by a server with default settings."""
    if not isinstance(body, dict):
        return False
    try:
        ENDPOINTS[endpoint_id].validate(body, Limits())
    except InputValidationError:
        return False
    return True
