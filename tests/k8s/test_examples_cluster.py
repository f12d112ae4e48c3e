"""Every example in examples/ applied to the local control plane, with the operator running.

Each file is applied as it is (server-side apply, Secrets included) into the test's namespace.
Each SLMDeployment in it must get a status for its generation and a Placed condition: True on
the tier the example means given the fake nodes of hack/nodes/default.yaml, or, for a model no
node can take, Stalled with a message that names every tier it tried.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_dev.cluster import LocalCluster
from slm_dev.operator_process import OperatorProcess
from tests.k8s.conftest import REPO_ROOT, wait_for

pytestmark = pytest.mark.k8s

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))

# The tier each example's SLMDeployment ends on with the default fake nodes (None: Stalled).
EXPECTED_TIER: dict[str, str | None] = {
    "api-key-protected.yaml": "gpu",
    "enterprise-assistant.yaml": "gpu",
    "nomic-embed-text.yaml": "cpu",
    "onnx-phi4-mini.yaml": "cpu",
    # The seed's Foundry Local scenario means NPU (the fake cluster has an Intel NPU and an Ascend
    # node), but the catalog's phi4:mini has ONNX variants for cpu and gpu only, and the npu tier
    # runs ONNX only: it falls back to gpu, and its reason says why (NPU_PASSED_OVER). When the
    # catalog gains an npu variant of phi4:mini, this becomes "npu".
    "phi4-mini-npu.yaml": "gpu",
    "qwen25-3b-gpu.yaml": "gpu",
}


NPU_PASSED_OVER = {"phi4-mini-npu.yaml": "npu: npu runs ONNX only; phi4:mini has no ONNX variant for npu"}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in obj.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    return {}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES) == sorted(EXPECTED_TIER)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_placed(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess, path: Path
) -> None:
    docs = documents(path)
    deployments = [d for d in docs if d["kind"] == "SLMDeployment"]
    assert len(deployments) == 1, f"{path.name}: one SLMDeployment per example"
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    for doc in docs:
        if doc["kind"] == "Secret":
            assert (
                cluster.kubectl(
                    "get", "secret", doc["metadata"]["name"], "-n", namespace, check=False
                ).returncode
                == 0
            )

    spec = deployments[0]["spec"]
    name = deployments[0]["metadata"]["name"]
    tiers = [spec["hardware"]["preferred"], *spec["hardware"].get("fallback", [])]

    def settled() -> dict[str, Any] | None:
        obj: dict[str, Any] = cluster.kubectl_json("get", "slm", name, "-n", namespace)
        status = obj.get("status", {})
        placed = condition(obj, "Placed")
        if (
            status.get("observedGeneration") == obj["metadata"]["generation"]
            and placed.get("observedGeneration") == obj["metadata"]["generation"]
            and placed.get("status") in ("True", "False")
        ):
            return obj
        return None

    obj = wait_for(settled, timeout=90, what=f"{name}: a status with a Placed condition")
    placed = condition(obj, "Placed")
    expected = EXPECTED_TIER[path.name]
    print(
        f"{path.name}: Placed={placed['status']} tier={obj['status'].get('placement', {}).get('tier')}: {placed.get('message')}"
    )
    if expected is None:
        stalled = condition(obj, "Stalled")
        assert placed["status"] == "False" and stalled.get("status") == "True", obj["status"]
        for tier in tiers:
            assert f"{tier}: " in stalled["message"], stalled["message"]
        return
    assert placed["status"] == "True", obj["status"]
    placement = obj["status"]["placement"]
    assert placement["tier"] == expected, placement
    # The reason says why each more-preferred tier was passed over.
    for tier in tiers[: tiers.index(expected) + 1]:
        assert f"{tier}: " in placement["reason"], placement["reason"]
    if path.name in NPU_PASSED_OVER:
        assert placement["reason"].startswith(NPU_PASSED_OVER[path.name]), placement["reason"]
    # A placed example gets its runtime Deployment on a node of that tier.
    deployment = wait_for(
        lambda: (
            cluster.kubectl_json("get", "deployment", name, "-n", namespace)
            if cluster.kubectl("get", "deployment", name, "-n", namespace, check=False).returncode == 0
            else None
        ),
        timeout=90,
        what=f"{name}: the runtime Deployment",
    )
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    # Secrets of the example reach the runtime by reference only (a secret volume), never copied.
    for doc in docs:
        if doc["kind"] == "Secret":
            assert f'"secretName": "{doc["metadata"]["name"]}"' in json.dumps(
                deployment["spec"]["template"]
            ), doc
            assert json.dumps(doc.get("stringData", {})) not in json.dumps(deployment)
    if expected == "cpu":
        assert not [k for k in limits if k not in ("cpu", "memory")], limits
    else:
        assert limits.get(placement["resourceName"]), (placement, limits)
