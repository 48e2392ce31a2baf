"""Invalid values for every field of an endpoint, derived from its input JSON schema.

Walking the schema (rather than a hand-written list) means a field added later is covered too. For
each field this yields one value of a type no variant of the field accepts, and for each bound
(minimum, maximum, length, enum) a value just outside it. Nested objects (e.g. `video_size.width`)
are walked with the path that leads to them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

Path = tuple[str | int, ...]
MISSING: Any = object()  # a BadCase value that removes the field instead


@dataclass(frozen=True)
class BadCase:
    field: str  # top-level field the server must name in `loc`
    path: Path  # where in the payload the bad value goes
    value: Any
    why: str

    @property
    def id(self) -> str:
        return f"{'.'.join(map(str, self.path))}={self.why}"

    def apply(self, payload: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(payload)
        target: Any = out
        for key in self.path[:-1]:
            target = target[key]
        if self.value is MISSING:
            del target[self.path[-1]]
        else:
            target[self.path[-1]] = self.value
        return out


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _variants(schema: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(schema, defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [v for sub in schema[key] for v in _variants(sub, defs)]
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _variants(schema["allOf"][0], defs)
    return [schema]


def _kind(variant: dict[str, Any]) -> str:
    if "type" in variant:
        return str(variant["type"])
    if "enum" in variant or "const" in variant:
        values = variant.get("enum", [variant.get("const")])
        return "string" if all(isinstance(v, str) for v in values) else "any"
    if "properties" in variant:
        return "object"
    return "any"


# One candidate per JSON type; the first that no variant accepts is the wrong-type value.
_WRONG_TYPE_CANDIDATES: list[tuple[str, Any]] = [
    ("string", "definitely-not-valid"),
    ("object", {"unexpected": True}),
    ("array", [[1], [2]]),
]
_ACCEPTS = {
    "string": {"string"},
    "object": {"object"},
    "array": {"array"},
}


def _wrong_type(kinds: set[str]) -> tuple[str, Any] | None:
    if "any" in kinds:
        return None
    for name, value in _WRONG_TYPE_CANDIDATES:
        if not kinds & _ACCEPTS[name]:
            return f"wrong-type-{name}", value
    return None


def _out_of_bounds(variant: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    kind = _kind(variant)
    if kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.5
        if "minimum" in variant:
            yield "below-minimum", variant["minimum"] - step
        if "exclusiveMinimum" in variant:
            yield "at-exclusive-minimum", variant["exclusiveMinimum"]
        if "maximum" in variant:
            yield "above-maximum", variant["maximum"] + step
        if "exclusiveMaximum" in variant:
            yield "at-exclusive-maximum", variant["exclusiveMaximum"]
    elif kind == "string":
        if "enum" in variant or "const" in variant:
            yield "not-in-enum", "no-such-choice"
        if variant.get("minLength", 0) > 0:
            yield "too-short", ""
        if "maxLength" in variant:
            yield "too-long", "x" * (variant["maxLength"] + 1)
    elif kind == "array":
        items = variant.get("items") or {}
        if "maxItems" in variant and ("enum" in items or items.get("type") in ("string", "integer", "number")):
            filler = items.get("enum", ["x"])[0] if "enum" in items else (0 if items.get("type") != "string" else "x")
            yield "too-many-items", [filler] * (variant["maxItems"] + 1)


def bad_cases(schema: dict[str, Any], base: dict[str, Any]) -> list[BadCase]:
    """Every invalid value for every property of the top-level `schema`, relative to payload `base`,
    and the absence of every required one."""
    defs = schema.get("$defs", {})
    cases: list[BadCase] = []
    for name, prop in schema.get("properties", {}).items():
        cases.extend(_walk(name, (name,), prop, defs, base.get(name)))
    cases.extend(BadCase(name, (name,), MISSING, "missing") for name in schema.get("required", []))
    return cases


def _walk(field: str, path: Path, prop: dict[str, Any], defs: dict[str, Any], current: Any) -> Iterator[BadCase]:
    variants = _variants(prop, defs)
    kinds = {_kind(v) for v in variants}
    wrong = _wrong_type(kinds)
    if wrong is not None:
        yield BadCase(field, path, wrong[1], wrong[0])
    seen: set[str] = set()
    for variant in variants:
        for why, value in _out_of_bounds(variant):
            if why not in seen and not _accepted_by_other(value, variant, variants):
                seen.add(why)
                yield BadCase(field, path, value, why)
        if _kind(variant) == "array":
            items = _resolve(variant.get("items") or {}, defs)
            if "enum" in items:
                yield BadCase(field, path, ["no-such-choice"], "item-not-in-enum")
            elif items.get("required"):
                yield BadCase(field, path, [{}], "item-missing-required")
        # Sub-fields of an object we actually send (e.g. video_size={"width":..,"height":..}).
        if _kind(variant) == "object" and isinstance(current, dict):
            for sub, sub_schema in variant.get("properties", {}).items():
                yield from _walk(field, (*path, sub), sub_schema, defs, current.get(sub))


def _accepted_by_other(value: Any, this: dict[str, Any], variants: list[dict[str, Any]]) -> bool:
    """A bound-breaking value can still be valid for another branch of a union (e.g. int | "auto")."""
    for other in variants:
        if other is this:
            continue
        kind = _kind(other)
        if kind == "string" and isinstance(value, str) and not ("enum" in other or "const" in other):
            return True
        if kind in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not any(k in other for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
                return True
    return False
