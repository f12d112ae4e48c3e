"""Peering: two operator replicas never fight over the same SLMDeployment.

As the chart does with ``replicas > 1``: Kopf's peering CRDs (charts/slm-operator/crds), a
KopfPeering object in the served namespace, and every replica running ``--peering`` with a
priority of its own (from ``SLM_OPERATOR_POD_NAME``). The highest priority reconciles, the other
pauses; when the active one stops, the standby takes over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_dev.cluster import LocalCluster
from slm_dev.operator_process import OperatorProcess
from tests.k8s.conftest import REPO_ROOT, wait_for

pytestmark = pytest.mark.k8s

PEERING_CRDS = REPO_ROOT / "charts" / "slm-operator" / "crds" / "kopf.dev_peerings.yaml"
PEERING = "slm-operator"
NAME = "peered"
PAUSED = "Pausing operations"
RESUMED = "Resuming operations after the pause"


class PeeredOperator(OperatorProcess):
    """`python -m slm_operator --namespace NS --peering NAME`, as one replica of the chart."""

    def __init__(
        self,
        cluster: LocalCluster,
        namespace: str,
        env: dict[str, str],
        log_path: Path,
        *,
        name: str,
        peering: str,
    ) -> None:
        super().__init__(
            cluster.kubeconfig, log_path, ["--namespace", namespace, "--peering", peering], env=env
        )
        self.name = name
        self.peering = peering

    def state(self) -> str:
        """Returns "active" when Kopf's last word on peering was resuming, else "paused" (peered
        operators start paused and stay so, silently, while a higher priority is alive)."""
        last = "paused"
        for line in self.log().splitlines():
            if PAUSED in line:
                last = "paused"
            elif RESUMED in line:
                last = "active"
        return last

    def reconciles(self) -> float:
        """Reconciles this replica ran (ok or error), from its /metrics; 0 before the first."""
        total = 0.0
        for line in self.metrics().splitlines():
            match = re.match(r'slm_operator_reconciles_total\{result="(ok|error)"\} (\S+)', line)
            if match:
                total += float(match.group(2))
        return total


@pytest.fixture
def peering_crds(cluster: LocalCluster) -> Iterator[None]:
    """Kopf's peering CRDs; removed afterwards when this test brought them."""
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(PEERING_CRDS.read_text()) if doc]
    missing = [n for n in names if cluster.kubectl("get", "crd", n, check=False).returncode != 0]
    cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    yield
    for name in missing:
        cluster.kubectl("delete", "crd", name, "--wait=false", check=False)


@pytest.fixture
def replicas(
    cluster: LocalCluster, crds: list[str], peering_crds: None, namespace: str, tmp_path: Path
) -> Iterator[list[PeeredOperator]]:
    # The peering object the chart creates per served namespace (templates/peering.yaml).
    cluster.apply(
        [{"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}}], "-n", namespace
    )
    processes = [
        PeeredOperator(
            cluster,
            namespace,
            # As the chart's Pods: a name of their own, which sets the operator's priority;
            # POD_ID names the replica in the peering object.
            {"SLM_OPERATOR_POD_NAME": f"slm-operator-{suffix}", "POD_ID": f"slm-operator-{suffix}"},
            tmp_path / f"operator-{suffix}.log",
            name=f"slm-operator-{suffix}",
            peering=PEERING,
        )
        for suffix in ("a", "b")
    ]
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()
            print(f"--- {process.log_path.name} ---\n{process.log()[-5000:]}")


def slm_obj(cluster: LocalCluster, namespace: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "slm", NAME, "-n", namespace))


def ready_at(cluster: LocalCluster, namespace: str, generation: int) -> dict[str, Any] | None:
    obj = slm_obj(cluster, namespace)
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == "Ready" and c["status"] == "True" and c.get("observedGeneration") == generation:
            return obj
    return None


def children(cluster: LocalCluster, namespace: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind in ("deployments", "services", "jobs", "persistentvolumeclaims"):
        items = cluster.kubectl_json("get", kind, "-n", namespace)["items"]
        out[kind] = sorted(i["metadata"]["name"] for i in items)
    return out


def test_one_replica_reconciles_the_other_stands_by_then_takes_over(
    cluster: LocalCluster, namespace: str, replicas: list[PeeredOperator]
) -> None:
    for process in replicas:
        process.start()

    # Both announce themselves in the peering object (POD_ID is Kopf's identity), with
    # different priorities ...
    def peers() -> dict[str, Any] | None:
        status = cluster.kubectl_json("get", "kopfpeering", PEERING, "-n", namespace).get("status") or {}
        return status if set(status) == {p.name for p in replicas} else None

    status = wait_for(peers, timeout=60, what="both replicas in the KopfPeering status")
    assert status[replicas[0].name]["priority"] != status[replicas[1].name]["priority"], status
    active, standby = sorted(replicas, key=lambda p: status[p.name]["priority"], reverse=True)
    # ... every peered replica starts paused; only the highest priority resumes.
    wait_for(lambda: active.state() == "active", timeout=60, what=f"{active.name} resuming")
    wait_for(lambda: standby.state() == "paused", timeout=60, what=f"{standby.name} paused")
    standby_process = standby

    spec = {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}
    cluster.apply(
        [
            {
                "apiVersion": "slm.dev/v1alpha1",
                "kind": "SLMDeployment",
                "metadata": {"name": NAME},
                "spec": spec,
            }
        ],
        "-n",
        namespace,
    )
    wait_for(lambda: ready_at(cluster, namespace, 1), timeout=120, what=f"{NAME} Ready")
    assert f"reconciled {namespace}/{NAME}" in active.log()
    assert f"reconciled {namespace}/{NAME}" not in standby_process.log()
    assert standby_process.reconciles() == 0
    assert active.state() == "active" and standby.state() == "paused"

    # One of each child, and one writer of the Deployment: the operator's field manager.
    found = children(cluster, namespace)
    assert found["deployments"] == [NAME] and found["services"] == [NAME], found
    assert len(found["jobs"]) == 1 and len(found["persistentvolumeclaims"]) == 1, found
    deployment = cluster.kubectl_json("get", "deployment", NAME, "-n", namespace, "--show-managed-fields")
    writers = {
        (m["manager"], m["operation"])
        for m in deployment["metadata"]["managedFields"]
        if not m.get("subresource")
    }
    assert writers == {("slm-operator", "Apply")}, deployment["metadata"]["managedFields"]

    # Another event on the resource: the active replica reconciles it again (its counter
    # moves), finds nothing to change, and the standby still does nothing.
    rv = deployment["metadata"]["resourceVersion"]
    before = active.reconciles()
    cluster.kubectl("label", "slm", NAME, "-n", namespace, "touched=yes")
    wait_for(lambda: active.reconciles() > before, timeout=60, what="the active replica's next reconcile")
    assert (
        cluster.kubectl_json("get", "deployment", NAME, "-n", namespace)["metadata"]["resourceVersion"] == rv
    )
    assert standby_process.reconciles() == 0

    # The active replica goes away: the standby resumes and reconciles a spec change.
    active.stop()
    wait_for(lambda: standby.state() == "active", timeout=120, what="the standby resuming")
    cluster.kubectl(
        "patch", "slm", NAME, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"optimization": {"maxContext": 2048}}}),
    )  # fmt: skip
    wait_for(lambda: ready_at(cluster, namespace, 2), timeout=120, what=f"{NAME} Ready at generation 2")
    assert f"reconciled {namespace}/{NAME}" in standby_process.log()
    assert "2048" in json.dumps(
        cluster.kubectl_json("get", "deployment", NAME, "-n", namespace)["spec"]["template"]
    )
    assert children(cluster, namespace)["deployments"] == [NAME]
