"""Fixtures for the operator's pure core: a small catalog and node factories."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from slm_operator.catalog import Catalog, parse_catalog
from slm_operator.facts import Facts, NodeFacts, Taint
from slm_operator.plan import Owner
from slm_operator.settings import OperatorSettings

FIXTURE_CATALOG = Path(__file__).with_name("fixture_catalog.yaml")
GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return parse_catalog(yaml.safe_load(FIXTURE_CATALOG.read_text()))


@pytest.fixture(scope="session")
def settings() -> OperatorSettings:
    return OperatorSettings()


@pytest.fixture
def owner() -> Owner:
    return Owner(name="assistant", namespace="ai", uid="0b9d2b8e-uid")


def cpu_node(name: str = "cpu-0", memory: str = "32Gi", **kwargs: object) -> NodeFacts:
    return NodeFacts(
        name=name,
        labels={"kubernetes.io/os": "linux", "kubernetes.io/hostname": name},
        allocatable={"cpu": "8", "memory": memory},
        **kwargs,  # type: ignore[arg-type]
    )


def nvidia_node(
    name: str, memory_mib: int, gpus: int = 1, taints: tuple[Taint, ...] = (GPU_TAINT,), **kwargs: object
) -> NodeFacts:
    return NodeFacts(
        name=name,
        labels={
            "kubernetes.io/os": "linux",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "Test-GPU",
            "nvidia.com/gpu.memory": str(memory_mib),
        },
        allocatable={"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": str(gpus)},
        taints=taints,
        **kwargs,  # type: ignore[arg-type]
    )


def intel_npu_node(name: str = "npu-0") -> NodeFacts:
    return NodeFacts(
        name=name,
        labels={"kubernetes.io/os": "linux", "intel.feature.node.kubernetes.io/npu": "true"},
        allocatable={"cpu": "16", "memory": "32Gi", "npu.intel.com/npu": "1"},
    )


def make_facts(catalog: Catalog, settings: OperatorSettings, *nodes: NodeFacts, **extra: object) -> Facts:
    return Facts(catalog=catalog, nodes=list(nodes), settings=settings, **extra)  # type: ignore[arg-type]


def spec_dict(model: Mapping[str, object], **fields: object) -> dict[str, object]:
    return {"model": dict(model), **fields}
