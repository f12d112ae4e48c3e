"""Building SLMDeployment objects from spec fields, and reading their status (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from slm_operator.api.v1alpha1 import API_VERSION, KIND, MAX_NAME_LENGTH, NAME_PATTERN, SLMDeploymentSpec
from slm_operator.cli.errors import CliError
from slm_operator.cli.output import getpath


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not re.match(NAME_PATTERN, name):
        raise CliError(
            f"invalid name {name!r}: use lower-case letters, digits and '-', starting with a letter, "
            f"at most {MAX_NAME_LENGTH} characters (e.g. {_suggest_name(name)})"
        )
    return name


def _suggest_name(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "assistant"
    if not text[0].isalpha():
        text = f"m-{text}"
    return text[:MAX_NAME_LENGTH].rstrip("-")


def validate_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate through the API's pydantic model; the fields as set, camelCase (the wire form)."""
    try:
        model = SLMDeploymentSpec.model_validate(dict(spec))
    except ValidationError as error:
        details = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"])
            details.append(f"spec.{where}: {item['msg']}")
        raise CliError(
            f"the resulting spec is invalid ({len(details)} problem(s))", details=details
        ) from error
    model_spec = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    model_fields = model_spec.get("model") or {}
    if bool(model_fields.get("name")) == bool(model_fields.get("source")):
        raise CliError("spec.model needs exactly one of name (a catalog name) and source (a URL)")
    hardware = model_spec.get("hardware") or {}
    if hardware.get("preferred") and hardware.get("preferred") in (hardware.get("fallback") or []):
        raise CliError("hardware.fallback must not contain the preferred tier")
    return dict(model_spec)


def build(
    name: str, namespace: str, spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": check_name(name), "namespace": namespace}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": validate_spec(spec)}


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any]:
    for item in getpath(obj, "status", "conditions", default=[]):
        if item.get("type") == type_:
            return dict(item)
    return {}


def is_current(obj: Mapping[str, Any], cond: Mapping[str, Any]) -> bool:
    generation = int(getpath(obj, "metadata", "generation", default=0))
    return int(cond.get("observedGeneration") or 0) >= generation


def model_label(obj: Mapping[str, Any]) -> str:
    spec_model = getpath(obj, "spec", "model", default={})
    return str(
        spec_model.get("name")
        or spec_model.get("source")
        or getpath(obj, "status", "model", "name", default="")
    )
