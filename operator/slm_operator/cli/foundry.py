"""Foundry Local's deployment configuration (JSON or YAML) → SLMDeployment spec fields.

    {"deployment": {"model": "microsoft/phi-4-mini",
                    "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
                    "optimization": {"quantization": "dynamic", "batch_size": 4, "max_context": 4096},
                    "api": {"port": 8080, "openai_compatible": true}}}

Every key is mapped or refused by name; nothing is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

from slm_operator.api.v1alpha1 import GGUF_QUANTIZATIONS, ONNX_QUANTIZATIONS, TIERS
from slm_operator.catalog import Catalog
from slm_operator.cli.errors import CliError
from slm_operator.cli.modelfile import REMOTE_SCHEMES, suggest

# Foundry Local model aliases (its catalog's names, with or without the publisher) → our catalog.
FOUNDRY_MODELS: dict[str, str] = {
    "phi-4-mini": "phi4:mini",
    "phi-4-mini-instruct": "phi4:mini",
    "qwen2.5-0.5b": "qwen2.5:0.5b",
    "qwen2.5-0.5b-instruct": "qwen2.5:0.5b",
    "qwen2.5-1.5b": "qwen2.5:1.5b",
    "qwen2.5-1.5b-instruct": "qwen2.5:1.5b",
    "qwen2.5-3b": "qwen2.5:3b",
    "qwen2.5-3b-instruct": "qwen2.5:3b",
    "deepseek-r1-1.5b": "deepseek-r1:1.5b",
    "r1-distill-qwen-1.5b": "deepseek-r1:1.5b",
    "deepseek-r1-distill-qwen-1.5b": "deepseek-r1:1.5b",
    "llama-3.2-1b": "llama3.2:1b",
    "llama-3.2-1b-instruct": "llama3.2:1b",
    "llama-3.2-3b": "llama3.2:3b",
    "llama-3.2-3b-instruct": "llama3.2:3b",
    "mistral-7b": "mistral:7b",
    "mistral-7b-instruct": "mistral:7b",
    "gemma-2-2b": "gemma2:2b",
    "gemma-2-2b-it": "gemma2:2b",
}
QUANTIZATIONS = ("dynamic", "auto", *GGUF_QUANTIZATIONS, *ONNX_QUANTIZATIONS)

_KEYS: dict[str, tuple[str, ...]] = {
    "": ("model", "hardware", "optimization", "api", "performance"),
    "hardware": ("preferred", "fallback"),
    "optimization": ("quantization", "batch_size", "max_context"),
    "api": ("port", "openai_compatible"),
    "performance": ("parallel_requests",),
}
_WHY_NOT: dict[str, str] = {
    "performance.batch_processing": "requests are always batched (continuous batching); remove the key",
    "performance.memory_optimization": "set spec.optimization.kvCacheType (f16, q8_0, q4_0) instead",
    "performance.hardware_scheduling": "batching is continuous; set optimization.batch_size (concurrent "
    "requests) instead",
}


def load_document(text: str, where: str) -> Mapping[str, Any]:
    try:
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise CliError(f"{where}: not valid JSON or YAML ({error}); fix the file") from error
    if not isinstance(document, Mapping):
        raise CliError(f'{where}: expected an object with a "deployment" key')
    return document


def resolve_model(name: str, catalog: Catalog) -> str:
    """A Foundry Local model name, a catalog name, or a source → what spec.model takes."""
    if name.lower().startswith(REMOTE_SCHEMES):
        return name
    if catalog.lookup(name) is not None:
        return name
    short = name.strip().lower().rsplit("/", 1)[-1]
    for candidate in (short, re.sub(r"-(generic|cuda|npu|cpu|gpu)(-\w+)?$", "", short)):
        if candidate in FOUNDRY_MODELS:
            return FOUNDRY_MODELS[candidate]
    close = suggest(name, [*catalog.names(), *FOUNDRY_MODELS])
    hint = f" (did you mean {close}?)" if close else ""
    raise CliError(
        f"deployment.model {name!r} is neither in the catalog nor a known Foundry Local model{hint}: "
        "run `slm models list`, or give an hf:// or https:// source"
    )


def _check_keys(block: Mapping[str, Any], path: str, problems: list[str]) -> None:
    allowed = _KEYS[path]
    for key in block:
        full = f"{path}.{key}" if path else str(key)
        if key in allowed:
            continue
        why = _WHY_NOT.get(full, f"it has no SLMDeployment equivalent; the keys are {', '.join(allowed)}")
        problems.append(f"unknown key deployment.{full}: {why}")


def _block(document: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any]:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"deployment.{key} must be an object")
        return {}
    _check_keys(value, key, problems)
    return value


def _int(value: Any, where: str, problems: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where} must be an integer, got {value!r}")
        return None
    return value


def to_spec(document: Mapping[str, Any], catalog: Catalog) -> dict[str, Any]:
    """The spec fields (camelCase) for a Foundry Local deployment configuration."""
    problems: list[str] = []
    deployment = document.get("deployment", document) if isinstance(document, Mapping) else {}
    if "deployment" in document:
        extra = [k for k in document if k not in ("deployment", "performance")]
        for key in extra:
            problems.append(f"unknown top-level key {key}: the file holds `deployment` (and `performance`)")
        if "performance" in document:
            deployment = {**deployment, "performance": document["performance"]}
    if not isinstance(deployment, Mapping):
        raise CliError("deployment must be an object")
    _check_keys(deployment, "", problems)
    spec: dict[str, Any] = {}
    model = deployment.get("model")
    if not isinstance(model, str) or not model:
        problems.append('deployment.model is required: a model name such as "microsoft/phi-4-mini"')
    else:
        try:
            resolved = resolve_model(model, catalog)
            key = "source" if resolved.lower().startswith(REMOTE_SCHEMES) else "name"
            spec["model"] = {key: resolved}
        except CliError as error:
            problems.append(error.message)

    hardware = _block(deployment, "hardware", problems)
    if hardware:
        out: dict[str, Any] = {}
        preferred = hardware.get("preferred")
        if preferred is not None:
            if preferred not in TIERS:
                problems.append(f"deployment.hardware.preferred {preferred!r} must be npu, gpu or cpu")
            else:
                out["preferred"] = preferred
        fallback = hardware.get("fallback")
        if fallback is not None:
            if not isinstance(fallback, list) or any(t not in TIERS for t in fallback):
                problems.append(f"deployment.hardware.fallback {fallback!r} must be a list of npu, gpu, cpu")
            elif preferred in fallback:
                problems.append(
                    f"deployment.hardware.fallback repeats the preferred tier {preferred}: remove it"
                )
            else:
                out["fallback"] = list(fallback)
        spec["hardware"] = out

    optimization = _block(deployment, "optimization", problems)
    opt: dict[str, Any] = {}
    if "quantization" in optimization:
        quantization = str(optimization["quantization"]).lower()
        if quantization not in QUANTIZATIONS:
            problems.append(
                f"deployment.optimization.quantization {optimization['quantization']!r}: use dynamic "
                f"(= auto: the best that fits the hardware), or one of {', '.join(QUANTIZATIONS[2:])}"
            )
        else:
            spec.setdefault("model", {})["quantization"] = (
                "auto" if quantization == "dynamic" else quantization
            )
    if "batch_size" in optimization:
        value = _int(optimization["batch_size"], "deployment.optimization.batch_size", problems)
        if value is not None:
            opt["parallelRequests"] = value  # Foundry's batch = requests served together
    if "max_context" in optimization:
        value = _int(optimization["max_context"], "deployment.optimization.max_context", problems)
        if value is not None:
            opt["maxContext"] = value
    performance = _block(deployment, "performance", problems)
    if "parallel_requests" in performance:
        value = _int(performance["parallel_requests"], "performance.parallel_requests", problems)
        if value is not None:
            if "parallelRequests" in opt and opt["parallelRequests"] != value:
                problems.append(
                    "optimization.batch_size and performance.parallel_requests disagree: both set the "
                    "requests served together per replica; keep one"
                )
            opt["parallelRequests"] = value
    if opt:
        spec["optimization"] = opt

    api = _block(deployment, "api", problems)
    api_out: dict[str, Any] = {}
    if "port" in api:
        value = _int(api["port"], "deployment.api.port", problems)
        if value is not None:
            api_out["port"] = value
    if "openai_compatible" in api:
        if not isinstance(api["openai_compatible"], bool):
            problems.append("deployment.api.openai_compatible must be true or false")
        else:
            api_out["openai"] = api["openai_compatible"]
    if api_out:
        spec["api"] = api_out
    if problems:
        raise CliError(f"the deployment configuration has {len(problems)} problem(s)", details=problems)
    return spec


def default_name(spec: Mapping[str, Any]) -> str:
    """A resource name from the model: phi4:mini → phi4-mini, hf://o/r/x.gguf → x."""
    model = spec.get("model") or {}
    text = str(model.get("name") or model.get("source") or "model")
    return slug(text)


def slug(text: str) -> str:
    base = text.rsplit("/", 1)[-1] if "://" in text else text
    base = re.sub(r"\.(gguf|onnx)$", "", base.lower())
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    if not base or not base[0].isalpha():
        base = f"m-{base}".rstrip("-")
    return base[:48].rstrip("-")
