"""The local control plane itself: what every later cluster test stands on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from slm_dev.cluster import LocalCluster
from tests.k8s.conftest import FakeNodes, wait_for

pytestmark = pytest.mark.k8s

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"

RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def get(cluster: LocalCluster, *args: str) -> Any:
    return cluster.kubectl_json("get", *args)


def deployment(name: str, replicas: int = 2, **pod_spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    container = {"name": "main", "image": PAUSE_IMAGE, **pod_spec.pop("container", {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container], **pod_spec}},
        },
    }


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(get(cluster, "pods", "-n", namespace, "-l", selector)["items"])


def test_default_nodes_are_a_mixed_cluster(cluster: LocalCluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get(cluster, "nodes")["items"]}
    allocatable = {name: n["status"]["allocatable"] for name, n in nodes.items()}
    cpu_only = [
        name
        for name, alloc in allocatable.items()
        if not any("/" in resource for resource in alloc) and name.startswith("cpu-")
    ]
    assert len(cpu_only) >= 2
    nvidia = {n: nodes[n] for n, a in allocatable.items() if "nvidia.com/gpu" in a}
    memories = sorted(int(n["metadata"]["labels"]["nvidia.com/gpu.memory"]) for n in nvidia.values())
    assert len(memories) >= 2 and memories[0] <= 16384 < 40960 <= memories[-1]
    for node in nvidia.values():
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.present"] == "true" and labels["nvidia.com/gpu.product"]
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert any(
        "amd.com/gpu" in a and "amd.com/gpu.vram" in nodes[n]["metadata"]["labels"]
        for n, a in allocatable.items()
    )
    assert any(
        "npu.intel.com/npu" in a
        and nodes[n]["metadata"]["labels"].get("intel.feature.node.kubernetes.io/npu") == "true"
        for n, a in allocatable.items()
    )
    assert any(
        "huawei.com/Ascend310P" in a
        and nodes[n]["metadata"]["labels"].get("accelerator") == "huawei-Ascend310P"
        for n, a in allocatable.items()
    )
    for name, node in nodes.items():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", name
        assert int(node["status"]["capacity"]["pods"]) > 0


def test_deployment_pods_reach_running(cluster: LocalCluster, namespace: str) -> None:
    cluster.apply([deployment("web", replicas=3)], "-n", namespace)

    def all_running() -> list[dict[str, Any]] | None:
        items = pods(cluster, namespace, "app=web")
        running = [p for p in items if p["status"].get("phase") == "Running"]
        return items if len(running) == 3 else None

    items = wait_for(all_running, what="3 Running pods")
    assert all(p["spec"]["nodeName"] for p in items)
    wait_for(
        lambda: get(cluster, "deployment", "web", "-n", namespace)["status"].get("readyReplicas") == 3,
        what="Deployment readyReplicas == 3",
    )


def test_job_completes_and_failing_job_fails(cluster: LocalCluster, namespace: str) -> None:
    def job(name: str, annotations: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"annotations": annotations},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": PAUSE_IMAGE}],
                    },
                },
            },
        }

    cluster.apply([job("ok", {}), job("broken", {"kwok.slm.dev/fail": "checksum mismatch"})], "-n", namespace)

    def condition(name: str, kind: str) -> bool:
        status = get(cluster, "job", name, "-n", namespace).get("status", {})
        return any(c["type"] == kind and c["status"] == "True" for c in status.get("conditions", []))

    wait_for(lambda: condition("ok", "Complete"), what="Job ok Complete")
    wait_for(lambda: condition("broken", "Failed"), what="Job broken Failed")
    failed_pod = pods(cluster, namespace, "job-name=broken")[0]
    terminated = failed_pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1
    assert terminated["message"] == "checksum mismatch"


@pytest.mark.parametrize("access_mode", ["ReadWriteOnce", "ReadWriteMany"])
def test_pvc_binds_from_the_default_storage_class(
    cluster: LocalCluster, namespace: str, access_mode: str
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "cache"},
        "spec": {"accessModes": [access_mode], "resources": {"requests": {"storage": "5Gi"}}},
    }
    cluster.apply([claim], "-n", namespace)
    bound = wait_for(
        lambda: (c := get(cluster, "pvc", "cache", "-n", namespace))["status"].get("phase") == "Bound" and c,
        what="PVC Bound",
    )
    assert bound["spec"]["storageClassName"] == "standard"
    volume = get(cluster, "pv", bound["spec"]["volumeName"])
    assert volume["spec"]["accessModes"] == [access_mode]


def test_owned_object_is_garbage_collected(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner_uid = get(cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner_uid,
                    "controller": True,
                }
            ],
        },
    }
    cluster.apply([child], "-n", namespace)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
        what="child ConfigMap garbage-collected",
    )


def test_service_account_without_permissions_is_denied(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    user = f"system:serviceaccount:{namespace}:nobody"
    denied = cluster.kubectl("get", "configmaps", "-n", namespace, f"--as={user}", check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "nobody" in denied.stderr
    assert cluster.kubectl("auth", "can-i", "create", "deployments", "-n", namespace, f"--as={user}",
                           check=False).stdout.strip() == "no"  # fmt: skip

    # Granting exactly one permission allows exactly that.
    cluster.kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "read-cm", "--role=read-cm", f"--serviceaccount={namespace}:nobody",
                    "-n", namespace)  # fmt: skip
    wait_for(
        lambda: (
            cluster.kubectl("get", "configmaps", "-n", namespace, f"--as={user}", check=False).returncode == 0
        ),
        what="RoleBinding to take effect",
    )
    assert (
        cluster.kubectl("delete", "configmap", "x", "-n", namespace, f"--as={user}", check=False).returncode
        != 0
    )


def test_custom_resource_definition_is_served(cluster: LocalCluster, namespace: str) -> None:
    group = f"g{namespace[-6:]}.foundation.test"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                    "required": ["size"],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.apply([crd])
    try:
        wait_for(
            lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in get(cluster, "crd", f"widgets.{group}").get("status", {}).get("conditions", [])
            ),
            what="CRD Established",
        )
        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 3},
        }
        wait_for(
            lambda: (
                cluster.kubectl(
                    "apply", "-n", namespace, "-f", "-", input=json.dumps(widget), check=False
                ).returncode
                == 0
            ),
            what="the new kind to be served",
        )
        assert get(cluster, f"widgets.{group}", "w", "-n", namespace)["spec"] == {"size": 3}
        invalid = dict(widget, metadata={"name": "bad"}, spec={"size": 0})
        rejected = cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(invalid), check=False
        )
        assert rejected.returncode != 0 and "spec.size" in rejected.stderr
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_gpu_pods_land_only_on_gpu_nodes(cluster: LocalCluster, namespace: str) -> None:
    gpu_nodes = {
        n["metadata"]["name"]
        for n in get(cluster, "nodes")["items"]
        if "nvidia.com/gpu" in n["status"]["allocatable"]
    }
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    wants_gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    cluster.apply(
        [deployment("cuda", replicas=3, container=wants_gpu, tolerations=[toleration])], "-n", namespace
    )
    items = wait_for(
        lambda: (
            (p := pods(cluster, namespace, "app=cuda"))
            and all(x["status"].get("phase") == "Running" for x in p)
            and len(p) == 3
            and p
        ),
        what="3 GPU pods Running",
    )
    assert {p["spec"]["nodeName"] for p in items} <= gpu_nodes

    # Without the toleration the tainted GPU nodes refuse it; a pod asking for more
    # GPUs than any node has stays Pending with the scheduler saying why.
    too_big = {"resources": {"limits": {"nvidia.com/gpu": "8"}}}
    cluster.apply(
        [deployment("huge", replicas=1, container=too_big, tolerations=[toleration])], "-n", namespace
    )
    pending = wait_for(
        lambda: (
            (p := pods(cluster, namespace, "app=huge"))
            and any(c.get("reason") == "Unschedulable" for c in p[0]["status"].get("conditions", []))
            and p[0]
        ),
        what="unschedulable condition",
    )
    assert pending["status"]["phase"] == "Pending"
    assert "nvidia.com/gpu" in json.dumps(pending["status"]["conditions"])


def test_pod_security_restricted_rejects_privileged_pods(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root"},
        "spec": {
            "containers": [{"name": "main", "image": PAUSE_IMAGE, "securityContext": {"privileged": True}}]
        },
    }
    rejected = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted' in rejected.stderr
    good = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ok"},
        "spec": {
            "containers": [
                {"name": "main", "image": PAUSE_IMAGE, "securityContext": RESTRICTED_CONTAINER_SECURITY}
            ]
        },
    }
    cluster.apply([good], "-n", namespace)


def test_fake_nodes_come_and_go(cluster: LocalCluster, namespace: str, fake_nodes: FakeNodes) -> None:
    wants_npu = {"resources": {"limits": {"example.com/npu": "1"}}}
    cluster.apply([deployment("npu", replicas=1, container=wants_npu)], "-n", namespace)
    wait_for(
        lambda: (
            (p := pods(cluster, namespace, "app=npu"))
            and p[0]["status"].get("phase") == "Pending"
            and any(c.get("reason") == "Unschedulable" for c in p[0]["status"].get("conditions", []))
        ),
        what="pod Unschedulable while no node has the device",
    )
    fake_nodes.add("edge-npu-0", labels={"example.com/npu": "true"}, allocatable={"example.com/npu": "1"})
    running = wait_for(
        lambda: (
            (p := pods(cluster, namespace, "app=npu")) and p[0]["status"].get("phase") == "Running" and p[0]
        ),
        timeout=90,
        what="pod Running after the node appeared",
    )
    assert running["spec"]["nodeName"] == "edge-npu-0"

    fake_nodes.relabel("edge-npu-0", {"example.com/npu": None, "zone": "edge"})
    labels = get(cluster, "node", "edge-npu-0")["metadata"]["labels"]
    assert labels["zone"] == "edge" and "example.com/npu" not in labels

    fake_nodes.remove("edge-npu-0")
    assert cluster.kubectl("get", "node", "edge-npu-0", check=False).returncode != 0
