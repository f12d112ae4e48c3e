"""What `resolve` reads about the cluster: Nodes, the existing cache claim, catalog and settings (pure data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slm_operator.catalog import Catalog
from slm_operator.settings import OperatorSettings

# Well-known node labels (every kubelet sets them), and the OS label's value on Linux.
LINUX = "linux"
OS_LABEL = "kubernetes.io/os"
HOSTNAME_LABEL = "kubernetes.io/hostname"


@dataclass(frozen=True)
class Taint:
    """One taint of a Node."""

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
    """Everything `resolve` reads besides the spec."""

    catalog: Catalog
    nodes: Sequence[NodeFacts]
    settings: OperatorSettings
    existing_claim: ExistingClaim | None = None
    # Size of a direct-source model once the fetch Job reported it (status.model.sizeBytes), and
    # the source it belongs to (status.model.source): a size recorded for another source is ignored.
    fetched_model_bytes: int | None = None
    fetched_model_source: str = ""
