"""What `resolve` decides: the Plan every builder reads, or the ResolveFailure status reports (pure data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from slm_operator.api.v1alpha1 import API_VERSION, KIND, SLMDeploymentSpec, Tier

# Where the cache volume is mounted in the runtime and fetch containers.
MODELS_MOUNT_PATH = "/models"

# Condition reasons of a ResolveFailure.
FailureReason = Literal["ModelNotFound", "InvalidModel", "Unplaceable", "ConfigurationError"]


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


@dataclass(frozen=True)
class MemoryEstimate:
    """What the model needs at run time, in bytes."""

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
    """Where the model runs, on what, and why (`reason` names every tier tried)."""

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
    """The PersistentVolumeClaim the model is cached on."""

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
    """Everything the builders need to write the children of one SLMDeployment."""

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
