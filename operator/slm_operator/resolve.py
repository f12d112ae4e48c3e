"""Placement and quantization: `resolve(owner, spec, facts) -> Plan | ResolveFailure` (pure).

Walks the spec's tiers (preferred, then fallback) against the node inventory. A tier takes the
model when a Ready, schedulable Linux node of one of its accelerators has the device resource in
allocatable, tolerable taints, and enough memory (device memory from labels, else node memory)
for the model at a quantization that tier's runtime supports. Every tier tried leaves a line in
the human reason, whether it was taken or passed over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from slm_operator.api.v1alpha1 import (
    API_VERSION,
    GGUF_QUANTIZATIONS,
    KIND,
    ONNX_QUANTIZATIONS,
    SLMDeploymentSpec,
    Tier,
)
from slm_operator.catalog import Catalog, CatalogModel, CatalogVariant
from slm_operator.naming import cache_claim_name
from slm_operator.settings import AcceleratorSettings, GiB, MiB, OperatorSettings, TierSettings

MODELS_MOUNT_PATH = "/models"
LINUX = "linux"
OS_LABEL = "kubernetes.io/os"
HOSTNAME_LABEL = "kubernetes.io/hostname"

# Effective bits per weight, block scales included (llama.cpp's quantize table; ONNX int4 has
# one fp16 scale per 32-weight block).
BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32.0,
    "bf16": 16.0,
    "f16": 16.0,
    "q8_0": 8.5,
    "q6_k": 6.5625,
    "q5_k_m": 5.69,
    "q5_k_s": 5.54,
    "q5_1": 6.0,
    "q5_0": 5.5,
    "q4_k_m": 4.89,
    "q4_k_s": 4.58,
    "q4_1": 5.0,
    "q4_0": 4.5,
    "q3_k_m": 3.91,
    "q3_k_s": 3.5,
    "q2_k": 3.35,
    "fp32": 32.0,
    "fp16": 16.0,
    "int8": 8.5,
    "int4": 4.5,
}
KV_CACHE_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 1.0625, "q4_0": 0.5625}
# What `slm_runtime fetch --quantize` can produce, and the GGUF precisions it can start from.
REQUANTIZE_TARGETS: tuple[str, ...] = ("q8_0", "q4_k_m")
REQUANTIZE_SOURCES: tuple[str, ...] = ("f16", "bf16", "f32")
BACKENDS: dict[str, str] = {"gguf": "llama-cpp", "onnx": "onnxruntime-genai"}

FailureReason = Literal["ModelNotFound", "InvalidModel", "Unplaceable", "ConfigurationError"]


# ---------------------------------------------------------------------------------------------
# Facts


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class NodeFacts:
    """What placement needs to know about one Node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    allocatable: Mapping[str, str] = field(default_factory=dict)
    capacity: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeFacts:
        """Simplify a core/v1 Node (as a dict from the API) into facts."""
        metadata = node.get("metadata") or {}
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        conditions = status.get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            name=str(metadata.get("name", "")),
            labels=dict(metadata.get("labels") or {}),
            allocatable={k: str(v) for k, v in (status.get("allocatable") or {}).items()},
            capacity={k: str(v) for k, v in (status.get("capacity") or {}).items()},
            taints=tuple(
                Taint(
                    key=str(t.get("key", "")),
                    value=str(t.get("value") or ""),
                    effect=str(t.get("effect", "")),
                )
                for t in spec.get("taints") or []
            ),
            ready=ready,
            unschedulable=bool(spec.get("unschedulable", False)),
        )


@dataclass(frozen=True)
class ExistingClaim:
    """The cache claim as it exists; access mode and class are immutable and size only grows."""

    access_mode: str = ""
    storage: str = ""  # spec.resources.requests.storage, a quantity
    storage_class_name: str = ""

    @classmethod
    def from_pvc(cls, pvc: Mapping[str, Any]) -> ExistingClaim:
        """The immutable and grow-only parts of a PersistentVolumeClaim (as a dict from the API)."""
        spec = pvc.get("spec") or {}
        modes = spec.get("accessModes") or [""]
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "")
        return cls(
            access_mode=str(modes[0]),
            storage=str(storage),
            storage_class_name=str(spec.get("storageClassName") or ""),
        )


@dataclass(frozen=True)
class Facts:
    catalog: Catalog
    nodes: Sequence[NodeFacts]
    settings: OperatorSettings
    existing_claim: ExistingClaim | None = None
    # Size of a direct-source model once the fetch Job reported it (status.model.sizeBytes), and
    # the source it belongs to (status.model.source): a size recorded for another source is ignored.
    fetched_model_bytes: int | None = None
    fetched_model_source: str = ""


@dataclass(frozen=True)
class Owner:
    """The SLMDeployment the children belong to."""

    name: str
    namespace: str
    uid: str
    api_version: str = API_VERSION
    kind: str = KIND

    @classmethod
    def from_resource(cls, resource: Mapping[str, Any]) -> Owner:
        """The owner identity of an SLMDeployment body (a dict, or Kopf's body)."""
        metadata = resource.get("metadata") or {}
        return cls(
            name=str(metadata["name"]),
            namespace=str(metadata.get("namespace") or "default"),
            uid=str(metadata.get("uid") or ""),
            api_version=str(resource.get("apiVersion") or API_VERSION),
            kind=str(resource.get("kind") or KIND),
        )


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes


@dataclass(frozen=True)
class ModelChoice:
    """The concrete model to fetch and serve."""

    name: str  # served name (catalog name, or derived from the source)
    catalog_name: str  # "" for direct sources
    source: str
    format: Literal["gguf", "onnx"]
    quantization: str  # "" when a direct source does not say
    sha256: str
    size_bytes: int | None  # known file size (catalog or fetch result)
    requantize: str  # target quantization for `fetch --quantize`, "" when none
    file_name: str  # GGUF file name inside the cache folder; "" for ONNX folders
    cache_key: str  # folder under the cache mount
    embedding: bool | None  # known from the catalog; None for direct sources

    @property
    def cache_dir(self) -> str:
        return f"{MODELS_MOUNT_PATH}/{self.cache_key}"

    @property
    def path(self) -> str:
        """What SLM_MODEL points at: the GGUF file, or the ONNX folder."""
        return f"{self.cache_dir}/{self.file_name}" if self.file_name else self.cache_dir


@dataclass(frozen=True)
class Placement:
    tier: Tier
    accelerator: str
    resource_name: str  # "" on cpu
    device_count: int  # 0 on cpu
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    # Required node affinity matchExpressions (all in one term).
    node_affinity: tuple[Mapping[str, Any], ...]
    nodes: tuple[str, ...]  # nodes the model fits on
    runtime: str  # runtime image variant (cpu, cuda, ...)
    image: str
    backend: str
    execution_provider: str
    runtime_class_name: str
    memory: MemoryEstimate
    device_memory: bool  # whether the weights live in device memory (gpu with a memory label)
    reason: str


@dataclass(frozen=True)
class CachePlan:
    claim_name: str
    size: str  # quantity
    storage_class_name: str  # "" = cluster default
    access_mode: str
    retain: bool


@dataclass(frozen=True)
class RuntimeSettings:
    """Operator settings the builders need, copied so builders read only the plan."""

    container_port: int
    image_pull_policy: str
    fetch_image: str
    fetch_backoff_limit: int
    fetch_active_deadline_seconds: int
    log_level: str
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    owner: Owner
    spec: SLMDeploymentSpec
    model: ModelChoice
    placement: Placement
    cache: CachePlan
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    runtime: RuntimeSettings


@dataclass(frozen=True)
class ResolveFailure:
    """Why no plan exists; `reason` is a condition reason, `message` names every tier tried."""

    reason: FailureReason
    message: str
    model_name: str = ""


class ResolveError(Exception):
    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------
# Small pure helpers (public: tests and status use them)


def format_gib(size_bytes: int | float) -> str:
    return f"{size_bytes / GiB:.1f} GiB"


def bits_per_weight(quantization: str) -> float:
    try:
        return BITS_PER_WEIGHT[quantization]
    except KeyError:
        raise ResolveError("InvalidModel", f"unknown quantization {quantization!r}") from None


def estimate_memory(
    *,
    weights_bytes: int,
    layers: int,
    kv_heads: int,
    head_dim: int,
    context: int,
    parallel: int,
    kv_cache_type: str,
    overhead_bytes: int,
) -> MemoryEstimate:
    """weights + KV cache (2 x layers x context x kv_heads x head_dim x bytes x sequences) + overhead."""
    kv_bytes = (
        2 * layers * context * kv_heads * head_dim * KV_CACHE_BYTES_PER_ELEMENT[kv_cache_type] * parallel
    )
    return MemoryEstimate(
        weights_bytes=weights_bytes, kv_cache_bytes=math.ceil(kv_bytes), overhead_bytes=overhead_bytes
    )


_SUFFIX_BYTES: dict[str, int] = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "p": 1000**5,
    "e": 1000**6,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
    "pi": 1 << 50,
    "ei": 1 << 60,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_quantity(value: str) -> float:
    """A Kubernetes quantity (memory 62Gi, cpu 7910m, devices 2) as a number of base units."""
    match = _QUANTITY.match(str(value))
    if not match:
        return 0.0
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":  # milli (cpu); never "mega" in Kubernetes quantities
        return number / 1000
    return number * _SUFFIX_BYTES.get(suffix.lower(), 0 if suffix else 1)


_LABEL_MEMORY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_LABEL_UNITS: dict[str, int] = {"bytes": 1, "MiB": MiB, "GiB": GiB}


def parse_device_memory(value: str, plain_unit: str) -> int | None:
    """Device memory from a node label: a plain number is in `plain_unit`; 64G, 16Gi, 80GB are binary.

    Device vendors label memory as marketed (AMD's labeller writes `64G` for 64 GiB of VRAM), so
    decimal-looking suffixes are read as binary here, unlike Kubernetes quantities.
    """
    match = _LABEL_MEMORY.match(value)
    if not match:
        return None
    number, suffix = float(match.group(1)), (match.group(2) or "").upper().rstrip("I")
    if not suffix:
        return int(number * _LABEL_UNITS[plain_unit])
    return int(number * {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[suffix])


def _quantity_mi(size_bytes: int) -> str:
    return f"{math.ceil(size_bytes / MiB)}Mi"


def _quantity_gi(size_bytes: int) -> str:
    return f"{math.ceil(size_bytes / GiB)}Gi"


def _source_path(source: str) -> str:
    """The path part of a source URI, without query, fragment or @revision."""
    path = source.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0].rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if "@" in last:
        path = path[: len(path) - len(last)] + last.split("@", 1)[0]
    return path


def source_basename(source: str) -> str:
    return _source_path(source).rsplit("/", 1)[-1]


def detect_format(source: str) -> Literal["gguf", "onnx"]:
    """A `.gguf` file is GGUF; anything else (a folder, a .onnx file) is an ONNX model."""
    return "gguf" if source_basename(source).lower().endswith(".gguf") else "onnx"


def detect_quantization(source: str, format: str) -> str:
    """The quantization named in the file or folder name (e.g. ...-q4_k_m.gguf, cpu-int4-rtn), or ""."""
    stem = _source_path(source).lower()
    known = GGUF_QUANTIZATIONS if format == "gguf" else ONNX_QUANTIZATIONS
    for quantization in sorted(known, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(quantization)}($|[^a-z0-9])", stem):
            return quantization
    return ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "model"


def _cache_key(display: str, source: str, requantize: str, sha256: str) -> str:
    digest = hashlib.sha256(f"{source}\n{requantize}\n{sha256}".encode()).hexdigest()[:8]
    return f"{_slug(display)[:40]}-{digest}"


def _toleration_matches(toleration: Mapping[str, Any], taint: Taint) -> bool:
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    if key != taint.key:
        return False
    return operator == "Exists" or (toleration.get("value") or "") == taint.value


def untolerated_taints(node: NodeFacts, tolerations: Sequence[Mapping[str, Any]]) -> list[Taint]:
    """Taints that keep Pods with `tolerations` off `node` (PreferNoSchedule only discourages)."""
    return [
        taint
        for taint in node.taints
        if taint.effect in ("NoSchedule", "NoExecute")
        and not any(_toleration_matches(tol, taint) for tol in tolerations)
    ]


# ---------------------------------------------------------------------------------------------
# The model: catalog entry or direct source


@dataclass(frozen=True)
class _Candidate:
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
class _ModelInfo:
    display_name: str
    catalog_name: str
    entry: CatalogModel | None
    direct_format: Literal["gguf", "onnx"] | None
    direct_quantization: str
    embedding: bool | None


def _model_info(spec: SLMDeploymentSpec, facts: Facts) -> _ModelInfo:
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
        return _ModelInfo(name, name, entry, None, "", entry.embedding)
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
    return _ModelInfo(
        display, "", None, direct_format, detect_quantization(model.source, direct_format), None
    )


def _catalog_candidates(
    info: _ModelInfo, spec: SLMDeploymentSpec, tier: Tier, tier_settings: TierSettings, formats: Sequence[str]
) -> tuple[list[_Candidate], list[str]]:
    """Candidates best first, and notes on requested quantizations the catalog cannot provide."""
    entry = info.entry
    assert entry is not None
    wanted = spec.model.quantization
    candidates: list[_Candidate] = []
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
        found: list[_Candidate] = []
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
) -> _Candidate | None:
    variant = entry.variant(fmt, quantization, tier)
    if variant is not None:
        return _from_variant(entry, variant, tiny)
    if fmt == "gguf" and quantization in REQUANTIZE_TARGETS:
        for source_quantization in REQUANTIZE_SOURCES:
            origin = entry.variant("gguf", source_quantization, tier)
            if origin is not None:
                return _Candidate(
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


def _from_variant(entry: CatalogModel, variant: CatalogVariant, tiny: bool) -> _Candidate:
    weights = variant.size_bytes or math.ceil(entry.parameters * bits_per_weight(variant.quantization) / 8)
    return _Candidate(
        format=variant.format,
        quantization=variant.quantization,
        source=variant.source,
        sha256=variant.sha256,
        size_bytes=variant.size_bytes,
        weights_bytes=weights,
        requantize="",
        tiny_rule=tiny,
    )


def _direct_candidates(
    info: _ModelInfo, spec: SLMDeploymentSpec, facts: Facts
) -> tuple[list[_Candidate], list[str]]:
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
        _Candidate(
            format=fmt,
            quantization=quantization,
            source=spec.model.source,
            sha256=spec.model.sha256,
            size_bytes=known_size,
            weights_bytes=weights,
            requantize=requantize,
        )
    ], []


def _estimate(
    candidate: _Candidate, info: _ModelInfo, spec: SLMDeploymentSpec, settings: OperatorSettings
) -> MemoryEstimate:
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


# ---------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True)
class _EligibleNode:
    node: NodeFacts
    accelerator: AcceleratorSettings
    device_memory_bytes: int | None  # per device, from the memory label
    node_memory_bytes: int


@dataclass
class _Survey:
    """Nodes of one tier: the eligible ones, and why the others are not."""

    eligible: list[_EligibleNode] = field(default_factory=list)
    advertising: int = 0  # nodes with the device resource (or Linux nodes on cpu)
    problems: list[str] = field(default_factory=list)


def _is_linux(node: NodeFacts) -> bool:
    # kubelets always set kubernetes.io/os; a node without it (hand-made) is taken as Linux.
    return node.labels.get(OS_LABEL, LINUX) == LINUX


def _placement_tolerations(accelerator: AcceleratorSettings, spec: SLMDeploymentSpec) -> list[dict[str, Any]]:
    tolerations: list[dict[str, Any]] = []
    for tol in accelerator.tolerations:
        item: dict[str, Any] = {"key": tol.key, "operator": tol.operator}
        if tol.operator == "Equal":
            item["value"] = tol.value
        if tol.effect:
            item["effect"] = tol.effect
        tolerations.append(item)
    for user in spec.hardware.tolerations:
        item = {"key": user.key, "operator": user.operator} if user.key else {"operator": user.operator}
        if user.operator == "Equal":
            item["value"] = user.value
        if user.effect:
            item["effect"] = user.effect
        if user.toleration_seconds is not None:
            item["tolerationSeconds"] = user.toleration_seconds
        if item not in tolerations:
            tolerations.append(item)
    return tolerations


def _survey(
    tier: Tier,
    accelerators: Sequence[AcceleratorSettings],
    spec: SLMDeploymentSpec,
    nodes: Sequence[NodeFacts],
) -> _Survey:
    survey = _Survey()
    count = spec.hardware.count
    not_ready: list[str] = []
    tainted: list[str] = []
    too_few: list[str] = []
    selector_mismatch: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not _is_linux(node):
            continue
        for accelerator in accelerators:
            resource = accelerator.resource_name
            if resource:
                have = parse_quantity(node.allocatable.get(resource, "0"))
                if have <= 0:
                    continue
            if any(node.labels.get(k) != v for k, v in accelerator.node_selector.items()):
                if resource:
                    selector_mismatch.append(node.name)
                continue
            survey.advertising += 1
            if not node.ready or node.unschedulable:
                not_ready.append(node.name)
                break
            if resource and have < count:
                too_few.append(f"{node.name} has {int(have)} {resource}")
                break
            if any(node.labels.get(k) != v for k, v in spec.hardware.node_selector.items()):
                selector_mismatch.append(node.name)
                break
            blocking = untolerated_taints(node, _placement_tolerations(accelerator, spec))
            if blocking:
                tainted.append(f"{node.name} ({', '.join(str(t) for t in blocking)})")
                break
            device_memory = None
            if accelerator.memory_label and accelerator.memory_label in node.labels:
                device_memory = parse_device_memory(
                    node.labels[accelerator.memory_label], accelerator.memory_label_unit
                )
            survey.eligible.append(
                _EligibleNode(
                    node=node,
                    accelerator=accelerator,
                    device_memory_bytes=device_memory,
                    node_memory_bytes=int(parse_quantity(node.allocatable.get("memory", "0"))),
                )
            )
            break
    # Report and choose in the settings' accelerator order, nodes by name within one.
    survey.eligible.sort(key=lambda e: (list(accelerators).index(e.accelerator), e.node.name))
    if not_ready:
        survey.problems.append(f"not Ready or cordoned: {', '.join(not_ready)}")
    if too_few:
        survey.problems.append(f"{count} device(s) per replica requested but {'; '.join(too_few)}")
    if selector_mismatch:
        survey.problems.append(f"node selector not matched by {', '.join(sorted(set(selector_mismatch)))}")
    if tainted:
        survey.problems.append(f"untolerated taints on {'; '.join(tainted)}")
    return survey


def _capacity(eligible: _EligibleNode, count: int) -> tuple[int, bool]:
    """Memory the model may use on this node, and whether it is device memory."""
    if eligible.accelerator.resource_name and eligible.device_memory_bytes is not None:
        return eligible.device_memory_bytes * count, True
    return eligible.node_memory_bytes, False


# ---------------------------------------------------------------------------------------------
# Tiers


@dataclass(frozen=True)
class _Choice:
    candidate: _Candidate
    accelerator: AcceleratorSettings
    nodes: tuple[_EligibleNode, ...]  # every eligible node of the accelerator the model fits on
    all_nodes: tuple[_EligibleNode, ...]  # every eligible node of the accelerator
    memory: MemoryEstimate
    device_memory: bool


def _try_tier(
    tier: Tier, info: _ModelInfo, spec: SLMDeploymentSpec, facts: Facts
) -> tuple[_Choice | None, str]:
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

    survey = _survey(tier, accelerators, spec, facts.nodes)
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
        candidates, missing = _catalog_candidates(info, spec, tier, tier_settings, formats)
    else:
        candidates, missing = _direct_candidates(info, spec, facts)
    if not candidates:
        return None, "; ".join(missing) or f"no {'/'.join(formats)} variant runs on {tier}"

    count = spec.hardware.count if tier != "cpu" else 1
    too_big: list[str] = []
    for candidate in candidates:
        memory = _estimate(candidate, info, spec, settings)
        for accelerator in accelerators:
            of_accelerator = tuple(e for e in survey.eligible if e.accelerator.name == accelerator.name)
            if not of_accelerator or candidate.format not in accelerator.formats:
                continue
            factor = 1.0
            if candidate.tiny_rule and tier_settings.tiny_model is not None:
                factor = tier_settings.tiny_model.memory_factor
            fitting = tuple(
                e for e in of_accelerator if _capacity(e, count)[0] >= memory.total_bytes * factor
            )
            if fitting:
                device_memory = _capacity(fitting[0], count)[1]
                return (
                    _Choice(candidate, accelerator, fitting, of_accelerator, memory, device_memory),
                    _describe_success(tier, survey, candidate, memory, fitting, too_big, count),
                )
        if not candidate.tiny_rule:
            too_big.append(_describe_too_big(candidate, memory, survey, count))
    return None, _describe_nodes(tier, survey, count) + "; " + "; ".join(too_big)


def _largest(survey: _Survey, count: int) -> tuple[int, bool, str]:
    best = max(survey.eligible, key=lambda e: _capacity(e, count)[0])
    size, is_device = _capacity(best, count)
    return size, is_device, best.node.name


def _describe_nodes(tier: Tier, survey: _Survey, count: int) -> str:
    if tier == "cpu":
        size, _, _ = _largest(survey, count)
        return f"{len(survey.eligible)} Linux node(s), largest {format_gib(size)} allocatable"
    groups: list[str] = []
    for resource in dict.fromkeys(e.accelerator.resource_name for e in survey.eligible):
        nodes = [e for e in survey.eligible if e.accelerator.resource_name == resource]
        best = max(nodes, key=lambda e: _capacity(e, count)[0])
        size, is_device = _capacity(best, count)
        memory = (
            f"largest {best.device_memory_bytes // MiB} MiB per device"
            if is_device and best.device_memory_bytes is not None
            else f"largest node {format_gib(size)} (no device memory label)"
        )
        groups.append(f"{len(nodes)} node(s) with {resource}, {memory}")
    return ", ".join(groups)


def _describe_too_big(candidate: _Candidate, memory: MemoryEstimate, survey: _Survey, count: int) -> str:
    size, _, node = _largest(survey, count)
    label = candidate.quantization or candidate.format
    return f"{label} needs {format_gib(memory.total_bytes)}, more than {format_gib(size)} on {node}"


def _describe_success(
    tier: Tier,
    survey: _Survey,
    candidate: _Candidate,
    memory: MemoryEstimate,
    fitting: Sequence[_EligibleNode],
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


# ---------------------------------------------------------------------------------------------
# The plan


def resolve(owner: Owner, spec: SLMDeploymentSpec, facts: Facts) -> Plan | ResolveFailure:
    """Choose model variant, tier, accelerator, quantization and resources for `spec`."""
    try:
        info = _model_info(spec, facts)
        notes: list[str] = []
        for tier in spec.tier_order():
            choice, note = _try_tier(tier, info, spec, facts)
            notes.append(f"{tier}: {note}")
            if choice is not None:
                return _plan(owner, spec, facts, info, tier, choice, "; ".join(notes))
        return ResolveFailure(
            "Unplaceable",
            f"no tier can run {info.display_name}: " + "; ".join(notes),
            info.display_name,
        )
    except ResolveError as error:
        return ResolveFailure(error.reason, error.message, spec.model.name or spec.model.source)


def _plan(
    owner: Owner,
    spec: SLMDeploymentSpec,
    facts: Facts,
    info: _ModelInfo,
    tier: Tier,
    choice: _Choice,
    reason: str,
) -> Plan:
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
        tolerations=tuple(_placement_tolerations(accelerator, spec)),
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


def _model_choice(info: _ModelInfo, candidate: _Candidate) -> ModelChoice:
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


def _affinity(choice: _Choice, count: int) -> list[dict[str, Any]]:
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
        "memory": _quantity_mi(request_bytes),
    }
    limits: dict[str, str] = {"memory": _quantity_mi(limit_bytes)}
    if placement.resource_name:
        # Extended resources must be equal in requests and limits.
        requests[placement.resource_name] = str(placement.device_count)
        limits[placement.resource_name] = str(placement.device_count)
    requests.update({k: str(v) for k, v in spec.resources.requests.items()})
    limits.update({k: str(v) for k, v in spec.resources.limits.items()})
    return requests, limits


def _cache(owner: Owner, spec: SLMDeploymentSpec, facts: Facts, candidate: _Candidate) -> CachePlan:
    settings = facts.settings
    existing = facts.existing_claim
    if spec.cache.size:
        size = spec.cache.size
    else:
        needed = candidate.size_bytes or candidate.weights_bytes
        if candidate.requantize:
            needed += candidate.weights_bytes  # the download and the requantized file side by side
        size = _quantity_gi(
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
