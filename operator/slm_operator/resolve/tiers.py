"""Trying one tier: the first candidate that fits an eligible node, and the reason line either way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slm_operator.api.v1alpha1 import SLMDeploymentSpec, Tier
from slm_operator.facts import Facts
from slm_operator.plan import MemoryEstimate
from slm_operator.resolve.candidates import (
    Candidate,
    ModelInfo,
    candidate_memory,
    catalog_candidates,
    direct_candidates,
)
from slm_operator.resolve.quantities import format_gib
from slm_operator.resolve.sources import source_basename
from slm_operator.resolve.survey import EligibleNode, NodeSurvey, survey_nodes, usable_memory
from slm_operator.settings import AcceleratorSettings, MiB


@dataclass(frozen=True)
class TierChoice:
    """What a tier took: the candidate, the accelerator, and the nodes it fits on."""

    candidate: Candidate
    accelerator: AcceleratorSettings
    nodes: tuple[EligibleNode, ...]  # every eligible node of the accelerator the model fits on
    all_nodes: tuple[EligibleNode, ...]  # every eligible node of the accelerator
    memory: MemoryEstimate
    device_memory: bool


def try_tier(
    tier: Tier, info: ModelInfo, spec: SLMDeploymentSpec, facts: Facts
) -> tuple[TierChoice | None, str]:
    """The first candidate that fits an eligible node of the tier, best first; and the reason line."""
    settings = facts.settings
    tier_settings = settings.tiers[tier]
    accelerators = list(tier_settings.accelerators)
    wanted_accelerator = spec.hardware.accelerator
    if wanted_accelerator and tier != "cpu":
        accelerators = [a for a in accelerators if a.name == wanted_accelerator]
        if not accelerators:
            return None, f"no accelerator named {wanted_accelerator!r} in this tier"
    # Formats the tier's runtimes run, in preference order (GGUF first where both run).
    tier_formats = [fmt for fmt in ("gguf", "onnx") if any(fmt in a.formats for a in accelerators)]
    if spec.model.format != "auto":
        tier_formats = [f for f in tier_formats if f == spec.model.format]
    model_formats = (
        {v.format for v in info.entry.variants if v.runs_on(tier)}
        if info.entry
        else {info.direct_format or ""}
    )
    formats = [f for f in tier_formats if f in model_formats]
    if not formats:
        runs = " and ".join(f.upper() for f in tier_formats)
        if not runs:
            return None, f"no {spec.model.format.upper()} runtime on {tier}"
        if info.entry is not None:
            return None, f"{tier} runs {runs} only; {info.display_name} has no {runs} variant for {tier}"
        return None, f"{tier} runs {runs} only; the source is {(info.direct_format or '').upper()}"

    survey = survey_nodes(accelerators, spec, facts.nodes)
    if not survey.eligible:
        if tier == "cpu":
            base = "no Ready schedulable Linux node"
        elif survey.advertising == 0:
            resources = ", ".join(a.resource_name for a in accelerators)
            base = f"no Ready schedulable node advertises {resources}"
        else:
            base = f"{survey.advertising} node(s) with the device, none usable"
        return None, "; ".join([base, *survey.problems]) if survey.problems else base

    if info.entry is not None:
        candidates, missing = catalog_candidates(info, spec, tier, tier_settings, formats)
    else:
        candidates, missing = direct_candidates(info, spec, facts)
    if not candidates:
        return None, "; ".join(missing) or f"no {'/'.join(formats)} variant runs on {tier}"

    count = spec.hardware.count if tier != "cpu" else 1
    too_big: list[str] = []
    for candidate in candidates:
        memory = candidate_memory(candidate, info, spec, settings)
        for accelerator in accelerators:
            of_accelerator = tuple(e for e in survey.eligible if e.accelerator.name == accelerator.name)
            if not of_accelerator or candidate.format not in accelerator.formats:
                continue
            factor = 1.0
            if candidate.tiny_rule and tier_settings.tiny_model is not None:
                factor = tier_settings.tiny_model.memory_factor
            fitting = tuple(
                e for e in of_accelerator if usable_memory(e, count)[0] >= memory.total_bytes * factor
            )
            if fitting:
                device_memory = usable_memory(fitting[0], count)[1]
                return (
                    TierChoice(candidate, accelerator, fitting, of_accelerator, memory, device_memory),
                    _describe_success(tier, survey, candidate, memory, fitting, too_big, count),
                )
        if not candidate.tiny_rule:
            too_big.append(_describe_too_big(candidate, memory, survey, count))
    return None, _describe_nodes(tier, survey, count) + "; " + "; ".join(too_big)


def _largest(survey: NodeSurvey, count: int) -> tuple[int, bool, str]:
    best = max(survey.eligible, key=lambda e: usable_memory(e, count)[0])
    size, is_device = usable_memory(best, count)
    return size, is_device, best.node.name


def _describe_nodes(tier: Tier, survey: NodeSurvey, count: int) -> str:
    if tier == "cpu":
        size, _, _ = _largest(survey, count)
        return f"{len(survey.eligible)} Linux node(s), largest {format_gib(size)} allocatable"
    groups: list[str] = []
    for resource in dict.fromkeys(e.accelerator.resource_name for e in survey.eligible):
        nodes = [e for e in survey.eligible if e.accelerator.resource_name == resource]
        best = max(nodes, key=lambda e: usable_memory(e, count)[0])
        size, is_device = usable_memory(best, count)
        memory = (
            f"largest {best.device_memory_bytes // MiB} MiB per device"
            if is_device and best.device_memory_bytes is not None
            else f"largest node {format_gib(size)} (no device memory label)"
        )
        groups.append(f"{len(nodes)} node(s) with {resource}, {memory}")
    return ", ".join(groups)


def _describe_too_big(candidate: Candidate, memory: MemoryEstimate, survey: NodeSurvey, count: int) -> str:
    size, _, node = _largest(survey, count)
    label = candidate.quantization or candidate.format
    return f"{label} needs {format_gib(memory.total_bytes)}, more than {format_gib(size)} on {node}"


def _describe_success(
    tier: Tier,
    survey: NodeSurvey,
    candidate: Candidate,
    memory: MemoryEstimate,
    fitting: Sequence[EligibleNode],
    too_big: Sequence[str],
    count: int,
) -> str:
    label = candidate.quantization or candidate.format
    requantized = f" (requantized from {source_basename(candidate.source)})" if candidate.requantize else ""
    names = ", ".join(e.node.name for e in fitting[:3]) + (
        f" and {len(fitting) - 3} more" if len(fitting) > 3 else ""
    )
    parts = [_describe_nodes(tier, survey, count), *too_big]
    arrow = " → " if too_big else "; "
    return (
        "; ".join(parts) + f"{arrow}{label}{requantized} fits ({format_gib(memory.total_bytes)}) on {names}"
    )
