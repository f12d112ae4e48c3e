"""Turn a pydantic JSON Schema into a Kubernetes structural OpenAPI v3 schema.

After azimuth-cloud/kube-custom-resource `schema.py`: structural schemas forbid `$ref`, know
`nullable` rather than `anyOf [T, null]`, spell int-or-string and free-form maps with their own
extensions, and the API server rejects `additionalProperties: false` next to `properties`.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

JSONSchema = dict[str, Any]

_DROPPED_KEYS = ("title",)
# Defaults that only restate "empty" carry no meaning and would clutter every stored object.
_EMPTY_DEFAULTS: tuple[Any, ...] = ("", [], None)


def structural_schema(model: type[BaseModel]) -> JSONSchema:
    """The structural OpenAPI v3 schema of `model` (aliases as property names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, JSONSchema] = raw.pop("$defs", {})
    return _convert(raw, definitions)


def _resolve_ref(schema: JSONSchema, definitions: dict[str, JSONSchema]) -> JSONSchema:
    """Inline a `$ref` (or a single-item `allOf`), letting sibling keys such as description win."""
    siblings = dict(schema)
    if "allOf" in siblings and len(siblings["allOf"]) == 1:
        siblings.update(siblings.pop("allOf")[0])
    ref = siblings.pop("$ref", None)
    if ref is None:
        return siblings
    target = copy.deepcopy(definitions[ref.rsplit("/", 1)[-1]])
    target.update(siblings)
    return target


def _convert(schema: JSONSchema, definitions: dict[str, JSONSchema]) -> JSONSchema:
    schema = _resolve_ref(schema, definitions)
    if "anyOf" in schema:
        schema = _collapse_any_of(schema, definitions)
    for key in _DROPPED_KEYS:
        schema.pop(key, None)
    if "default" in schema and schema["default"] in _EMPTY_DEFAULTS:
        del schema["default"]
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]

    result: JSONSchema = {}
    # A stable, readable key order: type first, then description, then the rest as pydantic gave.
    for key in ("type", "description"):
        if key in schema:
            result[key] = schema[key]
    for key, value in schema.items():
        if key in result:
            continue
        if key == "properties":
            result[key] = {name: _convert(prop, definitions) for name, prop in value.items()}
        elif key == "items":
            result[key] = _convert(value, definitions)
        elif key == "additionalProperties":
            if value is False:
                continue  # pruning already drops unknown fields; the API server rejects it
            if value is True or value == {}:
                result["x-kubernetes-preserve-unknown-fields"] = True
                continue
            result[key] = _convert(value, definitions)
        elif key == "required" and not value:
            continue
        else:
            result[key] = value
    if result.get("type") == "object" and "properties" not in result and "additionalProperties" not in result:
        result["x-kubernetes-preserve-unknown-fields"] = True
    return result


def _collapse_any_of(schema: JSONSchema, definitions: dict[str, JSONSchema]) -> JSONSchema:
    branches = [_resolve_ref(branch, definitions) for branch in schema.pop("anyOf")]
    non_null = [branch for branch in branches if branch.get("type") != "null"]
    types = sorted(str(branch.get("type")) for branch in non_null)
    if types == ["integer", "string"]:
        # Quantities: `x-kubernetes-int-or-string` is the only structural way to say int | str.
        schema["x-kubernetes-int-or-string"] = True
        return schema
    if len(non_null) != 1:
        raise ValueError(f"cannot express anyOf {branches} in a structural schema")
    # `None` means "omitted": fields stay non-nullable so the API server prunes explicit nulls.
    merged = dict(non_null[0])
    merged.update(schema)
    return merged
