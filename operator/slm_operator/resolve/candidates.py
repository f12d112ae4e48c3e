"""The model to place (catalog entry or direct source) and its candidate (format, quantization)s per tier."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from slm_operator.api.v1alpha1 import GGUF_QUANTIZATIONS, ONNX_QUANTIZATIONS, SLMDeploymentSpec, Tier
from slm_operator.catalog import CatalogModel, CatalogVariant
from slm_operator.facts import Facts
from slm_operator.plan import MemoryEstimate
from slm_operator.resolve.errors import ResolveError
from slm_operator.resolve.memory import (
    BITS_PER_WEIGHT,
    KV_CACHE_BYTES_PER_ELEMENT,
    bits_per_weight,
    estimate_memory,
)
from slm_operator.resolve.sources import detect_format, detect_quantization, source_basename
from slm_operator.settings import OperatorSettings, TierSettings

# What `slm_runtime fetch --quantize` can produce, and the GGUF precisions it can start from.
REQUANTIZE_TARGETS: tuple[str, ...] = ("q8_0", "q4_k_m")
REQUANTIZE_SOURCES: tuple[str, ...] = ("f16", "bf16", "f32")


@dataclass(frozen=True)
class Candidate:
    """A (format, quantization) the tier may serve, with the weights it implies."""

    format: Literal["gguf", "onnx"]
    quantization: str
    source: str
    sha256: str
    size_bytes: int | None
    weights_bytes: int
    requantize: str
    tiny_rule: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """The model the spec names: a catalog entry, or a direct source and what its name says."""

    display_name: str
    catalog_name: str
    entry: CatalogModel | None
    direct_format: Literal["gguf", "onnx"] | None
    direct_quantization: str
    embedding: bool | None


def model_info(spec: SLMDeploymentSpec, facts: Facts) -> ModelInfo:
    """Look the model up in the catalog, or read its format and quantization from the source."""
    model = spec.model
    if model.name:
        found = facts.catalog.lookup(model.name)
        if found is None:
            known = ", ".join(facts.catalog.names()[:20]) or "none"
            raise ResolveError(
                "ModelNotFound",
                f"model {model.name!r} is not in the catalog (known: {known}); set model.source to a URI instead "
                "or add it to the operator's catalog settings",
            )
        name, entry = found
        return ModelInfo(name, name, entry, None, "", entry.embedding)
    detected_format = detect_format(model.source)
    direct_format = detected_format if model.format == "auto" else model.format
    if model.format != "auto" and model.format != detected_format and detected_format == "gguf":
        raise ResolveError(
            "InvalidModel", f"source {model.source} is a .gguf file but format is {model.format}"
        )
    stem = source_basename(model.source)
    for suffix in (".gguf", ".onnx"):
        stem = stem.removesuffix(suffix)
    display = stem if ":" in stem else f"{stem}:latest"
    return ModelInfo(display, "", None, direct_format, detect_quantization(model.source, direct_format), None)


def catalog_candidates(
    info: ModelInfo, spec: SLMDeploymentSpec, tier: Tier, tier_settings: TierSettings, formats: Sequence[str]
) -> tuple[list[Candidate], list[str]]:
    """Candidates best first, and notes on requested quantizations the catalog cannot provide."""
    entry = info.entry
    assert entry is not None
    wanted = spec.model.quantization
    candidates: list[Candidate] = []
    missing: list[str] = []
    for fmt in formats:
        if wanted != "auto":
            ladder = (
                [wanted] if wanted in (GGUF_QUANTIZATIONS if fmt == "gguf" else ONNX_QUANTIZATIONS) else []
            )
            tiny: list[str] = []
        else:
            ladder = list(tier_settings.auto_quantization.get(fmt, []))  # type: ignore[call-overload]
            rule = tier_settings.tiny_model
            tiny_ladder: list[str] = list(rule.quantizations.get(fmt, [])) if rule else []  # type: ignore[call-overload]
            tiny = tiny_ladder if rule and entry.parameters <= rule.max_parameters else []
        found: list[Candidate] = []
        for quantization, is_tiny in [*((q, True) for q in tiny), *((q, False) for q in ladder)]:
            candidate = _catalog_candidate(entry, fmt, quantization, tier, is_tiny)
            if candidate is None:
                if wanted != "auto":
                    missing.append(f"no {fmt} {quantization} variant for {tier} and none to requantize from")
                continue
            found.append(candidate)
        if wanted == "auto" and not found:
            # No variant on the ladder (e.g. a catalog entry pinned to q8_0): take what there is,
            # best quality first.
            others = {v.quantization for v in entry.variants if v.format == fmt and v.runs_on(tier)}
            for quantization in sorted(others, key=lambda q: (-BITS_PER_WEIGHT.get(q, 0.0), q)):
                candidate = _catalog_candidate(entry, fmt, quantization, tier, False)
                if candidate is not None:
                    found.append(candidate)
        candidates += found
    return candidates, missing


def _catalog_candidate(
    entry: CatalogModel, fmt: str, quantization: str, tier: Tier, tiny: bool
) -> Candidate | None:
    variant = entry.variant(fmt, quantization, tier)
    if variant is not None:
        return _from_variant(entry, variant, tiny)
    if fmt == "gguf" and quantization in REQUANTIZE_TARGETS:
        for source_quantization in REQUANTIZE_SOURCES:
            origin = entry.variant("gguf", source_quantization, tier)
            if origin is not None:
                return Candidate(
                    format="gguf",
                    quantization=quantization,
                    source=origin.source,
                    sha256=origin.sha256,
                    size_bytes=origin.size_bytes,
                    weights_bytes=math.ceil(entry.parameters * BITS_PER_WEIGHT[quantization] / 8),
                    requantize=quantization,
                    tiny_rule=tiny,
                )
    return None


def _from_variant(entry: CatalogModel, variant: CatalogVariant, tiny: bool) -> Candidate:
    weights = variant.size_bytes or math.ceil(entry.parameters * bits_per_weight(variant.quantization) / 8)
    return Candidate(
        format=variant.format,
        quantization=variant.quantization,
        source=variant.source,
        sha256=variant.sha256,
        size_bytes=variant.size_bytes,
        weights_bytes=weights,
        requantize="",
        tiny_rule=tiny,
    )


def direct_candidates(
    info: ModelInfo, spec: SLMDeploymentSpec, facts: Facts
) -> tuple[list[Candidate], list[str]]:
    """The direct source as one candidate (requantized when asked and possible), or why it cannot be."""
    fmt = info.direct_format
    assert fmt is not None
    detected = info.direct_quantization
    wanted = spec.model.quantization
    stale = bool(facts.fetched_model_source) and facts.fetched_model_source != spec.model.source
    known_size = None if stale else facts.fetched_model_bytes
    weights = known_size if known_size else facts.settings.unknown_model_bytes
    requantize = ""
    quantization = detected
    if wanted != "auto" and wanted != detected:
        if fmt == "onnx" and detected:
            return [], [f"the ONNX source is {detected}; ONNX models cannot be requantized to {wanted}"]
        if fmt == "gguf" and wanted not in REQUANTIZE_TARGETS:
            return [], [
                f"the source is {detected or 'of unknown quantization'} and can only be requantized to "
                f"{', '.join(REQUANTIZE_TARGETS)}, not {wanted}"
            ]
        if fmt == "gguf":
            requantize = wanted
            if known_size and detected in BITS_PER_WEIGHT:
                weights = math.ceil(known_size * BITS_PER_WEIGHT[wanted] / BITS_PER_WEIGHT[detected])
        quantization = wanted
    return [
        Candidate(
            format=fmt,
            quantization=quantization,
            source=spec.model.source,
            sha256=spec.model.sha256,
            size_bytes=known_size,
            weights_bytes=weights,
            requantize=requantize,
        )
    ], []


def candidate_memory(
    candidate: Candidate, info: ModelInfo, spec: SLMDeploymentSpec, settings: OperatorSettings
) -> MemoryEstimate:
    """Memory the candidate needs: from the catalog's architecture, else the settings' guesses."""
    opt = spec.optimization
    entry = info.entry
    # ONNX Runtime GenAI keeps its KV cache in fp16; llama.cpp honours kvCacheType.
    kv_type = opt.kv_cache_type if candidate.format == "gguf" else "f16"
    if entry is not None:
        context = min(opt.max_context, entry.context_length)
        return estimate_memory(
            weights_bytes=candidate.weights_bytes,
            layers=entry.layers,
            kv_heads=entry.kv_heads,
            head_dim=entry.head_dim,
            context=context,
            parallel=opt.parallel_requests,
            kv_cache_type=kv_type,
            overhead_bytes=settings.memory_overhead_bytes,
        )
    kv = settings.unknown_kv_bytes_per_token * opt.max_context * opt.parallel_requests
    kv = math.ceil(kv * KV_CACHE_BYTES_PER_ELEMENT[kv_type] / 2.0)
    return MemoryEstimate(candidate.weights_bytes, kv, settings.memory_overhead_bytes)
