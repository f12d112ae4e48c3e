"""The Plan for the tier taken: model file and cache folder, placement, resources, cache claim."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from typing import Any

from slm_operator.api.v1alpha1 import SLMDeploymentSpec, Tier
from slm_operator.facts import HOSTNAME_LABEL, OS_LABEL, Facts
from slm_operator.naming import cache_claim_name
from slm_operator.plan import CachePlan, ModelChoice, Owner, Placement, Plan, RuntimeSettings
from slm_operator.resolve.candidates import REQUANTIZE_SOURCES, Candidate, ModelInfo
from slm_operator.resolve.errors import ResolveError
from slm_operator.resolve.quantities import gi_quantity, mi_quantity, parse_quantity
from slm_operator.resolve.sources import source_basename
from slm_operator.resolve.tiers import TierChoice
from slm_operator.resolve.tolerations import placement_tolerations
from slm_operator.settings import MiB, OperatorSettings

BACKENDS: dict[str, str] = {"gguf": "llama-cpp", "onnx": "onnxruntime-genai"}


def assemble_plan(
    owner: Owner,
    spec: SLMDeploymentSpec,
    facts: Facts,
    info: ModelInfo,
    tier: Tier,
    choice: TierChoice,
    reason: str,
) -> Plan:
    """The Plan for `choice`, the candidate `tier` took; `reason` names every tier tried."""
    settings = facts.settings
    candidate = choice.candidate
    accelerator = choice.accelerator
    if spec.image and not settings.image_allowed(spec.image):
        raise ResolveError(
            "ConfigurationError",
            f"spec.image {spec.image!r} matches none of the operator's allowedImages "
            f"({', '.join(settings.allowed_images)}): use an allowed image, or leave spec.image empty "
            "for the operator's own",
        )
    image = spec.image or settings.images.get(accelerator.runtime, "")
    if not image:
        raise ResolveError(
            "ConfigurationError", f"no runtime image configured for {accelerator.runtime!r} (settings images)"
        )
    if spec.model.sha256:
        # The user's digest pins the file actually downloaded, catalog or not.
        candidate = dataclasses.replace(candidate, sha256=spec.model.sha256.lower())
    model = _model_choice(info, candidate)
    count = spec.hardware.count if accelerator.resource_name else 0
    node_selector = {**accelerator.node_selector, **spec.hardware.node_selector}
    placement = Placement(
        tier=tier,
        accelerator=accelerator.name,
        resource_name=accelerator.resource_name,
        device_count=count,
        node_selector=node_selector,
        tolerations=tuple(placement_tolerations(accelerator, spec)),
        node_affinity=tuple(_affinity(choice, count)),
        nodes=tuple(e.node.name for e in choice.nodes),
        runtime=accelerator.runtime,
        image=image,
        backend=BACKENDS[candidate.format],
        execution_provider=accelerator.execution_provider if candidate.format == "onnx" else "",
        runtime_class_name=accelerator.runtime_class_name,
        memory=choice.memory,
        device_memory=choice.device_memory,
        reason=reason,
    )
    requests, limits = _resources(spec, settings, placement)
    return Plan(
        owner=owner,
        spec=spec,
        model=model,
        placement=placement,
        cache=_cache(owner, spec, facts, candidate),
        requests=requests,
        limits=limits,
        runtime=RuntimeSettings(
            container_port=settings.container_port,
            image_pull_policy=settings.image_pull_policy,
            fetch_image=settings.effective_fetch_image(),
            fetch_backoff_limit=settings.fetch_backoff_limit,
            fetch_active_deadline_seconds=settings.fetch_active_deadline_seconds,
            log_level=settings.log_level,
            image_pull_secrets=tuple(settings.defaults.image_pull_secrets),
        ),
    )


def _model_choice(info: ModelInfo, candidate: Candidate) -> ModelChoice:
    file_name = ""
    if candidate.format == "gguf":
        file_name = source_basename(candidate.source)
        if candidate.requantize:
            stem = file_name.removesuffix(".gguf")
            for precision in REQUANTIZE_SOURCES:
                stem = re.sub(rf"[-_.]{precision}$", "", stem, flags=re.IGNORECASE)
            file_name = f"{stem}-{candidate.requantize}.gguf"
    display = info.display_name
    key_label = (
        display if not candidate.quantization else f"{display.replace(':', '-')}-{candidate.quantization}"
    )
    return ModelChoice(
        name=display,
        catalog_name=info.catalog_name,
        source=candidate.source,
        format=candidate.format,
        quantization=candidate.quantization,
        sha256=candidate.sha256,
        size_bytes=candidate.size_bytes,
        requantize=candidate.requantize,
        file_name=file_name,
        cache_key=_cache_key(key_label, candidate.source, candidate.requantize, candidate.sha256),
        embedding=info.embedding,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "model"


def _cache_key(display: str, source: str, requantize: str, sha256: str) -> str:
    digest = hashlib.sha256(f"{source}\n{requantize}\n{sha256}".encode()).hexdigest()[:8]
    return f"{_slug(display)[:40]}-{digest}"


def _affinity(choice: TierChoice, count: int) -> list[dict[str, Any]]:
    """Required node affinity: never Windows; and, when the model fits only some nodes' devices, those."""
    expressions: list[dict[str, Any]] = [{"key": OS_LABEL, "operator": "NotIn", "values": ["windows"]}]
    if not choice.device_memory or len(choice.nodes) == len(choice.all_nodes):
        # Node memory is enforced by the scheduler through the memory request; device memory is not.
        return expressions
    label = choice.accelerator.memory_label
    plain = [e.node.labels.get(label, "") for e in choice.all_nodes]
    if choice.accelerator.memory_label_unit == "MiB" and all(v.isdigit() for v in plain):
        # `Gt` compares integers, so a MiB label selects every device large enough, now and later.
        needed_mib = math.ceil(choice.memory.total_bytes / count / MiB)
        expressions.append({"key": label, "operator": "Gt", "values": [str(needed_mib - 1)]})
    else:
        expressions.append(
            {"key": HOSTNAME_LABEL, "operator": "In", "values": sorted(e.node.name for e in choice.nodes)}
        )
    return expressions


def _resources(
    spec: SLMDeploymentSpec, settings: OperatorSettings, placement: Placement
) -> tuple[dict[str, str], dict[str, str]]:
    memory = placement.memory
    if placement.device_memory:
        # Weights and KV cache live on the device; the host holds the runtime and, while loading,
        # the file's pages (reclaimable page cache, hence only in the limit).
        request_bytes = memory.overhead_bytes
        limit_bytes = memory.overhead_bytes + memory.weights_bytes
    else:
        request_bytes = memory.total_bytes
        limit_bytes = math.ceil(memory.total_bytes * settings.memory_limit_factor)
    threads = spec.optimization.threads
    requests: dict[str, str] = {
        "cpu": str(threads) if threads > 0 else settings.default_cpu_request,
        "memory": mi_quantity(request_bytes),
    }
    limits: dict[str, str] = {"memory": mi_quantity(limit_bytes)}
    if placement.resource_name:
        # Extended resources must be equal in requests and limits.
        requests[placement.resource_name] = str(placement.device_count)
        limits[placement.resource_name] = str(placement.device_count)
    requests.update({k: str(v) for k, v in spec.resources.requests.items()})
    limits.update({k: str(v) for k, v in spec.resources.limits.items()})
    return requests, limits


def _cache(owner: Owner, spec: SLMDeploymentSpec, facts: Facts, candidate: Candidate) -> CachePlan:
    settings = facts.settings
    existing = facts.existing_claim
    if spec.cache.size:
        size = spec.cache.size
    else:
        needed = candidate.size_bytes or candidate.weights_bytes
        if candidate.requantize:
            needed += candidate.weights_bytes  # the download and the requantized file side by side
        size = gi_quantity(
            max(math.ceil(needed * (1 + settings.defaults.cache_headroom)), settings.cache_min_bytes)
        )
    if existing is not None and existing.storage and parse_quantity(existing.storage) > parse_quantity(size):
        size = existing.storage  # claims can grow but never shrink
    if existing is not None and existing.access_mode:
        access_mode = existing.access_mode
    else:
        access_mode = spec.cache.access_mode or ("ReadWriteMany" if spec.replicas > 1 else "ReadWriteOnce")
    if existing is not None:
        storage_class = existing.storage_class_name
    else:
        storage_class = spec.cache.storage_class_name or settings.defaults.storage_class_name
    return CachePlan(
        claim_name=cache_claim_name(owner.name),
        size=size,
        storage_class_name=storage_class,
        access_mode=access_mode,
        retain=spec.cache.retain,
    )
