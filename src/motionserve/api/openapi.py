"""OpenAPI documents: one per endpoint (as fal publishes them), and the whole app at /openapi.json,
shown by /docs and /redoc from the viewers shipped in the package (static/docs/).

The submit/run routes take any endpoint id, so FastAPI cannot see their bodies; instead each
endpoint's input and output models are injected as named components (`FastAnimatediffTextToVideoInput`
and so on, like fal's) with one concrete path per endpoint, so /docs shows and can send real inputs.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from motionserve.api.deps import request_base_url
from motionserve.api.errors import ApiError
from motionserve.api.ids import parse_endpoint_id
from motionserve.api.playground import root_path, static_url
from motionserve.api.responses import (
    API_KEY,
    QUEUE_STATUS,
    CANCEL_STATUS,
    ERROR_COMPONENT,
    ERROR_SCHEMA,
    Responses,
    error,
    errors,
    failed_result,
    json_body,
)
from motionserve.config import Settings
from motionserve.endpoints.base import Endpoint, Limits

router = APIRouter()

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEMES = {
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "Fal Key: `Key KEY_ID:SECRET` (create one with `motionserve keys create`)",
    }
}
VALIDATION_ERROR = {
    "type": "object",
    "title": "HTTPValidationError",
    "properties": {"detail": {"type": "array", "items": {"type": "object"}}},
}


def component_name(endpoint_id: str, suffix: str) -> str:
    """`fal-ai/fast-animatediff/text-to-video` + `Input` -> `FastAnimatediffTextToVideoInput`."""
    app_id = parse_endpoint_id(endpoint_id)
    words = re.split(r"[^A-Za-z0-9]+", f"{app_id.alias}/{app_id.path}")
    return "".join(w[:1].upper() + w[1:] for w in words if w) + suffix


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Mapping[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def model_components(endpoint: Endpoint, limits: Limits | None = None) -> tuple[str, str, dict[str, Any]]:
    """(input name, output name, components): the two models and every model they use; with the
    operator's `limits` on the input where a field states one directly (see `limit_input`)."""
    in_name = component_name(endpoint.endpoint_id, "Input")
    out_name = component_name(endpoint.endpoint_id, "Output")
    components: dict[str, Any] = {}
    for name, model, mode in ((in_name, endpoint.input_model, "validation"), (out_name, endpoint.output_model, "serialization")):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
        defs = schema.pop("$defs", {})
        schema["title"] = name
        _merge(components, defs, prefix=name)
        components[name] = schema
    if limits is not None:
        limit_input(components[in_name], limits)
    return in_name, out_name, components


def limit_input(schema: dict[str, Any], limits: Limits) -> None:
    """The server's frame cap (`max_frames`, checked before a request is queued) as the `maximum` of a
    `num_frames` input: the document then says what this server accepts. (Caps on a product of fields,
    like video-to-video's seconds × fps, cannot be said in a schema: their 422s name the fields.)"""
    frames = schema.get("properties", {}).get("num_frames")
    if isinstance(frames, dict) and frames.get("type") == "integer":
        frames["maximum"] = min(frames.get("maximum", limits.max_frames), limits.max_frames)


def _rename_refs(node: Any, renames: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _rename_refs(v, renames) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in renames:
            out["$ref"] = "#/components/schemas/" + renames[ref.rsplit("/", 1)[1]]
        return out
    if isinstance(node, list):
        return [_rename_refs(v, renames) for v in node]
    return node


def _merge(target: dict[str, Any], new: Mapping[str, Any], *, prefix: str) -> dict[str, str]:
    """Add `new` schemas to `target`; a name already taken by a different schema is prefixed.
    Returns the renames, already applied inside the added schemas."""
    renames = {n: f"{prefix}{n}" for n, s in new.items() if n in target and target[n] != s}
    for name, schema in new.items():
        final = renames.get(name, name)
        target.setdefault(final, _rename_refs(schema, renames))
    return renames


def _str_codes(responses: Responses) -> dict[str, Any]:
    return {str(code): value for code, value in sorted(responses.items(), key=lambda item: str(item[0]))}


def submit_responses(status_links: Mapping[str, Any]) -> dict[str, Any]:
    """A queue submit's answers; `status_links` lead from its request_id to the lookups."""
    queued = {**_json(_ref("QueueStatus"), "The request is queued"), "links": dict(status_links)}
    return _str_codes({200: queued, 422: error("Invalid input (fields, headers or fal_webhook)"), **errors(401, 413, 429)})


def run_responses(out_name: str) -> dict[str, Any]:
    """A sync run's answers: the output, a refusal, or the request's failure with its own status."""
    return _str_codes({
        **failed_result(),
        200: _json(_ref(out_name), "The output"),
        422: error("Invalid input, or the request failed on its input (e.g. a file that cannot be decoded)"),
        **errors(401, 413, 429),
    })


def lookup_operations(out_name: str, request_id: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Status, cancel and result of one request: operation ids -> operations (parameters, answers)."""
    logs = {"name": "logs", "in": "query", "required": False, "schema": {"type": "string"},
            "description": "`1` or `true` (also `yes`, `on`): include the logs; anything else: `logs` is null."}
    status_codes = {200: _json(_ref("QueueStatus"), "COMPLETED"), 202: _json(_ref("QueueStatus"), "IN_QUEUE or IN_PROGRESS")}
    return {
        "status": {"summary": "Request status", "operationId": "status", "parameters": [request_id, logs],
                   "responses": _str_codes({**status_codes, **errors(401, 404)})},
        "cancel": {"summary": "Cancel the request", "operationId": "cancel", "parameters": [request_id],
                   "responses": _str_codes({202: _json(CANCEL_STATUS, "Cancellation requested"), 400: _json(CANCEL_STATUS, "Already completed"),
                                            404: _json(CANCEL_STATUS, "Not found (or not the caller's)"), **errors(401)})},
        "result": {"summary": "Request result", "operationId": "result", "parameters": [request_id],
                   "responses": _str_codes({**failed_result(), 200: _json(_ref(out_name), "The output"),
                                            400: error("The request is still in progress"), **errors(401, 404)})},
    }


def _links(operation_ids: Mapping[str, str], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAPI links from a submit's answer to the lookups of the request it made."""
    return {name: {"operationId": op_id, "parameters": dict(parameters)} for name, op_id in operation_ids.items()}


def endpoint_document(endpoint: Endpoint, base_url: str, limits: Limits | None = None) -> dict[str, Any]:
    """The OpenAPI document of one endpoint, its paths relative to `{base}/queue` like fal's."""
    app = parse_endpoint_id(endpoint.endpoint_id).app
    in_name, out_name, schemas = model_components(endpoint, limits)
    schemas["QueueStatus"] = QUEUE_STATUS
    schemas["HTTPValidationError"] = VALIDATION_ERROR
    schemas[ERROR_COMPONENT] = ERROR_SCHEMA
    request_id = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    lookups = lookup_operations(out_name, request_id)
    links = _links({"GetStatus": "status", "Cancel": "cancel", "GetResult": "result"}, {"request_id": "$response.body#/request_id"})
    paths = {
        f"/{endpoint.endpoint_id}": {
            "post": {
                "summary": f"Submit a request to {endpoint.title}",
                "operationId": "submit",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(in_name)}}},
                "parameters": [{"name": "fal_webhook", "in": "query", "required": False, "schema": {"type": "string", "format": "uri"}}],
                "responses": submit_responses(links),
            }
        },
        f"/{app}/requests/{{request_id}}/status": {"get": lookups["status"]},
        f"/{app}/requests/{{request_id}}/cancel": {"put": lookups["cancel"]},
        f"/{app}/requests/{{request_id}}": {"get": lookups["result"]},
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": endpoint.title,
            "description": endpoint.description,
            "version": "1.0.0",
            "x-fal-metadata": {"endpointId": endpoint.endpoint_id},
        },
        "servers": [{"url": f"{base_url}/queue"}],
        "security": [{"apiKeyAuth": []}],
        "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": schemas},
        "paths": paths,
    }


def app_document(app: FastAPI, endpoints: Iterable[Endpoint], limits: Limits | None = None) -> dict[str, Any]:
    """FastAPI's document of the concrete routes plus `/queue/{id}` and `/run/{id}` per endpoint."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    # The routes' own declarations (api.responses) refer to these two by name.
    schemas["QueueStatus"] = QUEUE_STATUS
    schemas[ERROR_COMPONENT] = ERROR_SCHEMA
    for endpoint in endpoints:
        in_name, out_name, own = model_components(endpoint, limits)
        renames = _merge(schemas, own, prefix=component_name(endpoint.endpoint_id, ""))
        in_name, out_name = renames.get(in_name, in_name), renames.get(out_name, out_name)
        body = {"required": True, "content": {"application/json": {"schema": _ref(in_name)}}}
        common = {"tags": [endpoint.endpoint_id], "requestBody": body, **API_KEY, "description": endpoint.description}
        app_param = {"app": parse_endpoint_id(endpoint.endpoint_id).app, "request_id": "$response.body#/request_id"}
        links = _links(APP_LOOKUP_OPERATIONS, app_param)
        doc["paths"][f"/queue/{endpoint.endpoint_id}"] = {
            "post": {**common, "summary": f"Queue: {endpoint.title}", "operationId": f"queue_{in_name}",
                     "responses": submit_responses(links)}
        }
        doc["paths"][f"/run/{endpoint.endpoint_id}"] = {
            "post": {**common, "summary": f"Run and wait: {endpoint.title}", "operationId": f"run_{in_name}",
                     "responses": run_responses(out_name)}
        }
    return doc


# The operation ids of the request routes (api.requests) that a submit's answer links to.
APP_LOOKUP_OPERATIONS = {
    "GetStatus": "get_request_status",
    "StreamStatus": "stream_request_status",
    "Cancel": "cancel_request",
    "GetResult": "get_request_result",
}


def _limits(settings: Settings) -> Limits:
    return Limits(max_frames=settings.max_frames)


def install_openapi(app: FastAPI) -> None:
    """Serve the app document (cached) at /openapi.json, which /docs reads."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = app_document(app, app.state.endpoints.values(), _limits(app.state.settings))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _endpoint_or_404(request: Request, endpoint_id: str) -> Endpoint:
    endpoint = request.app.state.endpoints.get(endpoint_id.strip("/"))
    if endpoint is None:
        raise ApiError(404, f"Endpoint '{endpoint_id}' not found")
    return endpoint


@router.get("/openapi/{endpoint_id:path}.json", tags=["docs"], summary="OpenAPI document of one endpoint",
            responses={200: json_body({"type": "object"}, "The endpoint's OpenAPI document"), **errors(404)})
def openapi_for_endpoint(request: Request, endpoint_id: str) -> JSONResponse:
    endpoint = _endpoint_or_404(request, endpoint_id)
    return JSONResponse(endpoint_document(endpoint, request_base_url(request), _limits(request.app.state.settings)))


@router.get("/queue/{endpoint_id:path}/openapi.json", include_in_schema=False)
def queue_openapi_for_endpoint(request: Request, endpoint_id: str) -> JSONResponse:
    return openapi_for_endpoint(request, endpoint_id)


@router.get("/endpoints", tags=["docs"], summary="The endpoints this server serves",
            responses={200: json_body({"type": "array", "items": {"type": "object"}}, "The endpoints")})
def list_endpoints(request: Request) -> JSONResponse:
    return JSONResponse(
        [
            {"endpoint_id": e.endpoint_id, "title": e.title, "description": e.description, "openapi": f"{request_base_url(request)}/openapi/{e.endpoint_id}.json"}
            for e in request.app.state.endpoints.values()
        ]
    )


# /docs and /redoc from the viewers shipped in the package (static/docs/), never from a CDN: they
# must work on an offline or firewalled machine. The app is created with docs_url=redoc_url=None.
# Swagger UI's validator badge would send the document to validator.swagger.io: off.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True}


@router.get("/docs", include_in_schema=False)
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=f"{root_path(request)}/openapi.json",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=static_url(request, "docs/swagger-ui-bundle.js"),
        swagger_css_url=static_url(request, "docs/swagger-ui.css"),
        swagger_favicon_url=static_url(request, "favicon.svg"),
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get("/redoc", include_in_schema=False)
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=f"{root_path(request)}/openapi.json",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=static_url(request, "docs/redoc.standalone.js"),
        redoc_favicon_url=static_url(request, "favicon.svg"),
        with_google_fonts=False,
    )
