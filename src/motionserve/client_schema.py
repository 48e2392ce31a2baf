"""An endpoint's input schema (JSON Schema) as command-line flags, for `motionserve run`.

Each input property becomes `--field-name VALUE` (also `--field_name`), its text converted by the
schema's types: enums by name, integers, numbers, booleans (true/false), objects and arrays as JSON,
and unions tried strictest first (`--video-size landscape_16_9` or `--video-size '{"width": 64, ...}'`).
Array fields take the flag repeatedly or a JSON list; an object item with one required text field takes
just that text (`--loras my.safetensors`). No network here: the schema comes from the registry or from
an OpenAPI document the caller fetched.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from motionserve.endpoints import registry

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
# The options of `motionserve run` itself: a field with one of these names is set with --set instead.
COMMON_FLAGS = frozenset({"--server", "--key", "--input", "--set", "--output", "--json", "--help"})


@dataclass(frozen=True)
class InputSchema:
    """An endpoint's input object: its properties, as JSON Schema, and the document their `$ref`s point into."""

    title: str
    description: str
    properties: Mapping[str, Mapping[str, Any]]
    required: frozenset[str]
    root: Mapping[str, Any]

    @classmethod
    def from_object(cls, schema: Mapping[str, Any], root: Mapping[str, Any], title: str, description: str) -> "InputSchema":
        schema = _deref(schema, root)
        return cls(title, description, schema.get("properties", {}), frozenset(schema.get("required", [])), root)


def _deref(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """`node` with local `$ref`s (and single-entry `allOf` wrappers) followed; sibling keys are kept."""
    while True:
        if "$ref" in node:
            target: Any = root
            for part in str(node["$ref"]).removeprefix("#/").split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        else:
            return node


def _variants(schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The non-null alternatives of a schema (`anyOf`/`oneOf` flattened)."""
    schema = _deref(schema, root)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return [v for option in options for v in _variants(option, root)]
    return [] if schema.get("type") == "null" else [schema]


def local_schema(endpoint_id: str) -> InputSchema | None:
    endpoint = registry.get(endpoint_id)
    if endpoint is None:
        return None
    schema = endpoint.input_model.model_json_schema()
    return InputSchema.from_object(schema, schema, endpoint.title, endpoint.description)


def openapi_input_schema(doc: Mapping[str, Any], endpoint_id: str) -> InputSchema | None:
    """The input of `endpoint_id`'s submit operation in an OpenAPI document (ours or fal's), if it has one."""
    try:
        body = next(
            ops["post"]["requestBody"]["content"]["application/json"]["schema"]
            for path, ops in doc["paths"].items()
            if path.rstrip("/").endswith("/" + endpoint_id) and "post" in ops
        )
    except (KeyError, TypeError, StopIteration):
        return None
    info = doc.get("info", {})
    return InputSchema.from_object(body, doc, info.get("title", endpoint_id), info.get("description", ""))


def _parse_variant(variant: Mapping[str, Any], text: str, root: Mapping[str, Any]) -> Any:
    """`text` as a value of one schema alternative; ValueError when it is not one."""
    if "enum" in variant:
        for option in variant["enum"]:
            if str(option) == text:
                return option
        raise ValueError(text)
    kind = variant.get("type")
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    if kind == "boolean":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(text)
    if kind in ("object", "array"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict if kind == "object" else list):
            return value
        shorthand = _single_required_string(variant, root) if kind == "object" else None
        if shorthand is None:
            raise ValueError(text)
        return {shorthand: text}  # e.g. `--loras my.safetensors` for {"path": "my.safetensors"}
    if kind in (None, "string"):
        return text
    raise ValueError(text)


def _single_required_string(variant: Mapping[str, Any], root: Mapping[str, Any]) -> str | None:
    required = variant.get("required", [])
    if len(required) != 1:
        return None
    prop = _deref(variant.get("properties", {}).get(required[0], {}), root)
    return str(required[0]) if prop.get("type") == "string" and "enum" not in prop else None


def _priority(variant: Mapping[str, Any]) -> int:
    """Try the strictest reading first: a preset name before JSON, a number before free text."""
    if "enum" in variant:
        return 0
    return {"object": 1, "array": 1, "integer": 2, "number": 3, "boolean": 4}.get(variant.get("type", ""), 5)


def _describe(variants: Sequence[Mapping[str, Any]], root: Mapping[str, Any]) -> str:
    parts = []
    for v in variants:
        if "enum" in v:
            parts.append("one of " + ", ".join(str(o) for o in v["enum"]))
        elif v.get("type") == "object":
            names = ", ".join(v.get("properties", {}))
            shorthand = _single_required_string(v, root)
            parts.append((f"JSON {{{names}}}" if names else "a JSON object") + (f" or just its {shorthand}" if shorthand else ""))
        elif v.get("type") == "array":
            parts.append("a JSON list")
        else:
            bounds = [f"{k} {v[k]}" for k in ("minimum", "maximum") if k in v]
            parts.append(f"{v.get('type', 'a value')}" + (f" ({', '.join(bounds)})" if bounds else ""))
    return " or ".join(parts) or "a value"


def value_parser(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Callable[[str], Any]:
    """An argparse `type` that converts a flag's text by the field's schema (unions included)."""
    variants = sorted(_variants(schema, root), key=_priority)

    def parse(text: str) -> Any:
        for variant in variants:
            try:
                return _parse_variant(variant, text, root)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"expected {_describe(variants, root)}, got {text!r}")

    return parse


def list_parser(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Callable[[str], list[Any]] | None:
    """For array fields: a JSON list, or one item (the flag is repeated for more); None for other fields."""
    arrays = [v for v in _variants(schema, root) if v.get("type") == "array"]
    if not arrays:
        return None
    item = value_parser(arrays[0].get("items", {}), root)

    def parse(text: str) -> list[Any]:
        if text.lstrip().startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise argparse.ArgumentTypeError(f"not a JSON list: {exc}") from exc
            if isinstance(value, list):
                return value
        return [item(text)]

    return parse


@dataclass(frozen=True)
class FieldFlag:
    name: str
    dest: str
    parse: Callable[[str], Any]


def add_field_flags(parser: argparse.ArgumentParser, schema: InputSchema) -> list[FieldFlag]:
    """One `--field-name VALUE` flag per input property (also `--field_name`); help from the schema."""
    group = parser.add_argument_group(f"input fields of {schema.title}")
    flags = []
    for name, prop in schema.properties.items():
        dashed, plain = "--" + name.replace("_", "-"), "--" + name
        if dashed in COMMON_FLAGS or plain in COMMON_FLAGS:
            continue  # reachable through --set
        prop = _deref(prop, schema.root)
        many = list_parser(prop, schema.root)
        one = value_parser(prop, schema.root)
        dest = f"field:{name}"
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "type": many or one, "metavar": _metavar(prop, schema.root)}
        if many is not None:
            kwargs["action"] = "extend"
        group.add_argument(dashed, help=_field_help(name, prop, schema), **kwargs)
        if plain != dashed:  # the field's own spelling works too, unlisted
            group.add_argument(plain, help=argparse.SUPPRESS, **kwargs)
        flags.append(FieldFlag(name, dest, many or one))
    return flags


def _metavar(prop: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    variants = _variants(prop, root)
    arrays = [v for v in variants if v.get("type") == "array"]
    if arrays:
        variants = _variants(arrays[0].get("items", {}), root)
    names = {"integer": "INT", "number": "NUMBER", "boolean": "BOOL", "object": "JSON", "array": "JSON"}
    kinds = ["NAME" if "enum" in v else names.get(v.get("type", ""), "TEXT") for v in sorted(variants, key=_priority)]
    return "|".join(dict.fromkeys(kinds)) or "VALUE"


def _field_help(name: str, prop: Mapping[str, Any], schema: InputSchema) -> str:
    variants = sorted(_variants(prop, schema.root), key=_priority)
    if any(v.get("type") == "array" for v in variants):
        items = next(v for v in variants if v.get("type") == "array").get("items", {})
        kind = f"{_describe(sorted(_variants(items, schema.root), key=_priority), schema.root)}; repeat the flag, or give a JSON list"
    else:
        kind = _describe(variants, schema.root)
    if name in schema.required:
        tail = "required"
    elif prop.get("default") is not None:
        default = prop["default"]
        tail = f"default: {default if isinstance(default, str) else json.dumps(default)}"
    else:
        tail = "optional"
    if name.endswith("_url"):
        kind += "; a local file is uploaded first"
    text = f"{prop.get('description', '').strip()} [{kind}; {tail}]".strip()
    return text.replace("%", "%%")  # argparse %-formats help strings
