"""values.schema.json and the default tiers in values.yaml: the Helm chart's view of the operator settings.

The chart passes its `settings` value verbatim to the operator as its config file, so the schema of
that value is the settings model's own JSON schema in the chart's camelCase spelling. Everything else
in values.schema.json is the hand-written base (charts/slm-operator/values.schema.base.yaml).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from slm_operator.catalog import Catalog
from slm_operator.settings import OperatorSettings, default_tiers_yaml

JSONSchema = dict[str, Any]

SETTINGS_DEF = OperatorSettings.__name__
SETTINGS_REF = f"#/$defs/{SETTINGS_DEF}"
# Settings the chart does not offer, and why: it would set them wrong or not at all.
CHART_OMITS = {
    "config_file": "the chart points SLM_OPERATOR_CONFIG_FILE at its own ConfigMap",
    "catalog_file": "a path inside the operator Pod, where the chart mounts no catalog (use `catalog`)",
}
# Settings whose value is a whole document another model validates: the chart checks it the same way.
DOCUMENT_SETTINGS: dict[str, type[BaseModel]] = {"catalog": Catalog}

TIERS_BLOCK_BEGIN = "# BEGIN generated: default tiers"
TIERS_BLOCK_END = "# END generated: default tiers"
# Defaults that only restate "empty" say nothing a reader needs.
_EMPTY_DEFAULTS: tuple[Any, ...] = ("", [], {}, None)


def settings_definitions() -> dict[str, JSONSchema]:
    """`$defs` for the chart's `settings` value: OperatorSettings (camelCase) and every model it uses."""
    raw = OperatorSettings.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, JSONSchema] = raw.pop("$defs", {})
    properties: dict[str, JSONSchema] = {}
    for name, schema in raw["properties"].items():
        if name in CHART_OMITS:
            continue
        if name in DOCUMENT_SETTINGS:
            document = DOCUMENT_SETTINGS[name]
            document_schema = document.model_json_schema(by_alias=True, mode="validation")
            definitions.update(document_schema.pop("$defs", {}))
            definitions[document.__name__] = document_schema
            # As in the model: the document as a mapping, or as YAML/JSON text.
            schema = {
                "description": schema.get("description", ""),
                "anyOf": [{"$ref": f"#/$defs/{document.__name__}"}, {"type": "string"}],
            }
        properties[to_camel(name)] = schema
    # The operator ignores unknown settings (environment variables share its prefix); in values a
    # key it would ignore is a typo, so the chart rejects it.
    definitions[SETTINGS_DEF] = {**raw, "properties": properties, "additionalProperties": False}
    return {name: _tidy(definitions[name]) for name in sorted(definitions)}


def values_schema(base: JSONSchema) -> JSONSchema:
    """The whole values schema: the hand-written base plus the settings definitions."""
    if base.get("properties", {}).get("settings", {}).get("$ref") != SETTINGS_REF:
        raise ValueError(f"the values schema base must declare `settings: {{$ref: '{SETTINGS_REF}'}}`")
    generated = settings_definitions()
    own = base.get("$defs", {})
    clashes = sorted(set(own) & set(generated))
    if clashes:
        raise ValueError(
            f"the values schema base defines {', '.join(clashes)} in $defs, a name the settings model "
            "uses: rename the base's definition"
        )
    return {**base, "$defs": {**own, **generated}}


def render_values_schema(base_text: str) -> str:
    """values.schema.json from the text of the base (YAML)."""
    base = yaml.safe_load(base_text)
    if not isinstance(base, dict):
        raise ValueError("the values schema base must be a YAML mapping (a JSON schema)")
    return json.dumps(values_schema(base), indent=2, ensure_ascii=False) + "\n"


def default_tiers_block() -> list[str]:
    """The built-in tiers' data file as YAML under `tiers:`, its own comments kept, its header left out."""
    lines = default_tiers_yaml().splitlines()
    while lines and (not lines[0].strip() or lines[0].startswith("#")):
        lines.pop(0)
    return ["tiers:", *(f"  {line}" if line.strip() else "" for line in lines)]


def with_default_tiers_block(values_text: str) -> str:
    """values.yaml with the commented block between the markers replaced by the built-in tiers.

    The tiers stay comments: Helm merges a user's values into the chart's key by key, so live
    defaults would blend into a tier the user gives instead of being replaced by it as the operator
    does (`tiers: {}` keeps meaning "the built-in tiers").
    """
    lines = values_text.splitlines(keepends=True)
    begin = [i for i, line in enumerate(lines) if line.strip().startswith(TIERS_BLOCK_BEGIN)]
    end = [i for i, line in enumerate(lines) if line.strip().startswith(TIERS_BLOCK_END)]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise ValueError(
            f"values.yaml needs one `{TIERS_BLOCK_BEGIN}` line and, after it, one `{TIERS_BLOCK_END}` "
            "line (under settings.tiers) where the default tiers are written"
        )
    indent = lines[begin[0]][: len(lines[begin[0]]) - len(lines[begin[0]].lstrip())]
    block = [f"{indent}# {line}".rstrip() + "\n" for line in default_tiers_block()]
    return "".join([*lines[: begin[0] + 1], *block, *lines[end[0] :]])


def _tidy(schema: JSONSchema) -> JSONSchema:
    """Drop pydantic's titles and empty defaults; spell maps with fixed keys as properties."""
    schema = dict(schema)
    schema.pop("title", None)
    if "default" in schema and schema["default"] in _EMPTY_DEFAULTS:
        del schema["default"]
    keys = schema.get("propertyNames", {}).get("enum")
    if keys is not None and isinstance(schema.get("additionalProperties"), dict):
        # dict[Literal[...], T]: each allowed key as a property, so errors and docs name them.
        value = schema.pop("additionalProperties")
        del schema["propertyNames"]
        schema["properties"] = {key: value for key in keys}
        schema["additionalProperties"] = False
    ordered: JSONSchema = {key: schema.pop(key) for key in ("type", "description") if key in schema}
    ordered.update(schema)
    for key, value in ordered.items():
        if key in ("properties", "$defs"):
            ordered[key] = {name: _tidy(child) for name, child in value.items()}
        elif key in ("anyOf", "allOf", "oneOf"):
            ordered[key] = [_tidy(child) for child in value]
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            ordered[key] = _tidy(value)
    return ordered
