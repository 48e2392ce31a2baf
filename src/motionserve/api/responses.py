"""What each route may answer, for the OpenAPI documents: status codes, bodies and media types.

Routes return `JSONResponse`s built by hand (fal's shapes), so FastAPI cannot see their answers; they
declare them here instead, and the schema fuzzer (tests/e2e/test_fuzz.py) holds every answer of the
running server to what is declared. Errors are fal's `{"detail": ...}` (see api.errors).
"""

from __future__ import annotations

from typing import Any, Mapping

ERROR_COMPONENT = "FalError"
# fal's error body: a message, or (422) a list of {loc, msg, type}; `error_type` on some errors.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": ERROR_COMPONENT,
    "required": ["detail"],
    "properties": {
        "detail": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["loc", "msg", "type"],
                        "properties": {
                            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                            "msg": {"type": "string"},
                            "type": {"type": "string"},
                        },
                    },
                },
            ]
        },
        "error_type": {"type": "string"},
    },
}
FAL_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}

Responses = dict[int | str, dict[str, Any]]


def json_body(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(schema)}}}


def error(description: str) -> dict[str, Any]:
    return json_body(FAL_ERROR_REF, description)


def errors(*codes: int) -> Responses:
    """The standard error answers for `codes`, each with fal's error body."""
    return {code: error(ERROR_DESCRIPTIONS[code]) for code in codes}


ERROR_DESCRIPTIONS = {
    400: "The storage refused the upload (e.g. a part out of order)",
    401: "Missing, malformed, invalid or revoked credentials",
    403: "The key is not an admin key",
    404: "Not found (or not the caller's)",
    413: "The body is over the server's limit",
    416: "The range starts past the end of the file",
    422: "Invalid input: `detail` lists `{loc, msg, type}` per field",
    429: "The endpoint's queue is full, or the key is over its submit rate; `Retry-After` says when to try again",
    499: "The request was cancelled",
    500: "The request failed inside the model worker",
    503: "The store or the storage backend is unreachable",
    504: "The request timed out (the server's sync limit or the caller's start timeout)",
    507: "Out of disk space for the file",
}

# Every route that takes `Authorization: Key KEY_ID:SECRET` says so (apiKeyAuth in openapi.py).
API_KEY = {"security": [{"apiKeyAuth": []}]}

ADMIN_ONLY = errors(401, 403)
# A stored file: any media type (what was uploaded, or an MP4/WebP the server made).
ANY_FILE = {"description": "The file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
RAW_BODY = {"requestBody": {"required": False, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

_URLS = {"response_url": {"type": "string"}, "status_url": {"type": "string"}, "cancel_url": {"type": "string"}}
QUEUE_STATUS = {
    "type": "object",
    "title": "QueueStatus",
    "required": ["status", "request_id"],
    "properties": {
        "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
        "request_id": {"type": "string", "description": "The request id."},
        **_URLS,
        "queue_position": {"type": "integer", "description": "Requests ahead of this one (IN_QUEUE only)."},
        "logs": {"anyOf": [{"type": "array", "items": {"type": "object"}}, {"type": "null"}]},
        "metrics": {"type": "object"},
        "error": {"type": "string"},
        "error_type": {"type": "string"},
    },
}
QUEUE_STATUS_REF = {"$ref": "#/components/schemas/QueueStatus"}
CANCEL_STATUS = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string", "enum": ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]}},
}
# Each event's `data` is a QueueStatus (inline: an event's schema is read on its own).
SSE_STATUS = {
    "description": "Server-sent events, one QueueStatus JSON per change; the stream ends after COMPLETED",
    "content": {"text/event-stream": {"schema": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "string", "contentMediaType": "application/json", "contentSchema": QUEUE_STATUS}},
    }}},
}
FAILED_RESULT_CODES = (404, 422, 499, 500, 503, 504, 507)


def failed_result() -> Responses:
    """A finished request's failure keeps its status code when the result is fetched (fal's behaviour)."""
    return {code: error(f"The request failed: {ERROR_DESCRIPTIONS[code].lower()}") for code in FAILED_RESULT_CODES}
