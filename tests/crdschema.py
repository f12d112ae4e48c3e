"""The generated CRD's openAPIV3Schema as a JSON Schema that `jsonschema` can check objects against.

A structural OpenAPI v3 schema is almost JSON Schema. The differences handled here:

- `x-kubernetes-*` keys are dropped; `x-kubernetes-int-or-string` becomes integer-or-string and
  `x-kubernetes-preserve-unknown-fields` leaves the object open.
- Objects with `properties` are closed (`additionalProperties: false`): the API server would prune
  unknown fields silently, and `kubectl apply` (strict field validation, its default) rejects them,
  so a typo in an example must fail here too.
- `nullable: true` admits null.
- The root `metadata` stays open: a CRD may only restrict `name`/`generateName`, and the API server
  fills in the rest of ObjectMeta.

`cel_errors` evaluates the CRD's CEL rules (`x-kubernetes-validations`) with cel-python, after
applying the schema's defaults as the API server does; the cluster tests apply the examples to a
real API server, which is the final judge.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import yaml
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "slm.dev_slmdeployments.yaml"


def load_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    """The CRD; a missing file is an error (the generator must have run), never a skip."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make generate`")
    crd: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return crd


def openapi_to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in {"properties", "patternProperties"}:
            out[key] = {name: openapi_to_jsonschema(sub) for name, sub in value.items()}
        elif key in {"enum", "default", "example", "required", "description", "format"}:
            out[key] = value
        else:
            out[key] = openapi_to_jsonschema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not preserve
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def version_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = openapi_to_jsonschema(entry["schema"]["openAPIV3Schema"])
            # The CRD may constrain metadata.name; the rest of ObjectMeta is always allowed.
            schema.get("properties", {}).get("metadata", {}).pop("additionalProperties", None)
            return schema
    raise KeyError(f"version {version} not in the CRD")


def raw_version_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"version {version} not in the CRD")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's defaulting: missing properties with a `default` get it, recursively."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


_CEL = celpy.Environment()


def cel_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of the CEL rules that `value` (already defaulted) breaks, from the root down."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = bool(_CEL.program(_CEL.compile(rule["rule"])).evaluate({"self": json_to_cel(value)}))
        except Exception as error:  # the API server rejects a rule that errors, too
            errors.append(f"{rule['message']} ({error})")
            continue
        if not ok:
            errors.append(rule["message"])
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value:
                errors += cel_errors(child, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in (schema.get("properties") or {}):
                    errors += cel_errors(extra, item)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            errors += cel_errors(schema["items"], item)
    return errors
