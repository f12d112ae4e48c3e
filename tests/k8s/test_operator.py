"""The operator against the real control plane: placement, quantization, children, status.

Each test runs its own operator process, scoped to the test's namespace. Tests that need
a particular set of nodes restrict the deployment to a node pool of their own
(``hardware.nodeSelector: {slm.dev/test-pool: <namespace>}``) and add fake nodes to it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from slm_dev.cluster import LocalCluster
from slm_dev.operator_process import OperatorProcess
from tests.k8s.conftest import FakeNodes, wait_for

pytestmark = pytest.mark.k8s

POOL_LABEL = "slm.dev/test-pool"
NVIDIA_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def slm(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def get(cluster: LocalCluster, namespace: str, *what: str) -> Any:
    return cluster.kubectl_json("get", *what, "-n", namespace)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in obj.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    return {}


def wait_condition(
    cluster: LocalCluster, namespace: str, name: str, type_: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "slm", name)
        current = condition(obj, type_)
        generation = obj["metadata"]["generation"]
        if current.get("status") == status and current.get("observedGeneration") == generation:
            return dict(obj)
        return None

    return wait_for(probe, timeout=timeout, what=f"{name}: {type_}={status}")


def add_pool_node(fake_nodes: FakeNodes, pool: str, name: str, kind: str) -> None:
    labels = {POOL_LABEL: pool}
    allocatable: dict[str, str] = {"cpu": "16", "memory": "64Gi"}
    taints: list[dict[str, str]] = []
    if kind == "t4":
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "Tesla-T4",
            "nvidia.com/gpu.memory": "15360",
        }
        allocatable["nvidia.com/gpu"] = "1"
        taints = [NVIDIA_TAINT]
    elif kind == "a100":
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
            "nvidia.com/gpu.memory": "81920",
        }
        allocatable["nvidia.com/gpu"] = "1"
        taints = [NVIDIA_TAINT]
    fake_nodes.add(name, labels=labels, allocatable=allocatable, taints=taints)


def pool(namespace: str) -> dict[str, Any]:
    return {"nodeSelector": {POOL_LABEL: namespace}}


def events(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    items = get(cluster, namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return list(items)


def test_preferred_tier_present_is_used(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    cluster.apply(
        [slm("chat", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "gpu"}})], "-n", namespace
    )
    obj = wait_condition(cluster, namespace, "chat", "Ready", "True")
    placement = obj["status"]["placement"]
    assert placement["tier"] == "gpu"
    assert placement["reason"].startswith("gpu: ")
    deployment = get(cluster, namespace, "deployment", "chat")
    pod_spec = deployment["spec"]["template"]["spec"]
    limits = pod_spec["containers"][0]["resources"]["limits"]
    assert limits.get(placement["resourceName"]) == "1"
    if placement["resourceName"] == "nvidia.com/gpu":
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec[
            "tolerations"
        ]
    pods = get(cluster, namespace, "pods", "-l", obj["status"]["selector"])["items"]
    gpu_nodes = {
        n["metadata"]["name"]
        for n in cluster.kubectl_json("get", "nodes")["items"]
        if placement["resourceName"] in n["status"]["allocatable"]
    }
    assert pods and all(p["spec"]["nodeName"] in gpu_nodes for p in pods)
    assert obj["status"]["endpoint"] == f"http://chat.{namespace}.svc.cluster.local:8080"
    placed = [e for e in events(cluster, namespace, "chat") if e["reason"] == "Placed"]
    assert placed and "gpu" in placed[0]["message"]
    printed = cluster.kubectl("get", "slm", "chat", "-n", namespace).stdout.split()
    assert printed[:7] == ["NAME", "READY", "TIER", "QUANT", "MODEL", "ENDPOINT", "AGE"]
    assert printed[7:12] == ["chat", "True", "gpu", placement["quantization"], "qwen2.5:0.5b"]


def test_fallback_when_the_preferred_tier_is_absent(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess, fake_nodes: FakeNodes
) -> None:
    add_pool_node(fake_nodes, namespace, f"{namespace[-6:]}-cpu", "cpu")
    spec = {
        "model": {"name": "qwen2.5:0.5b"},
        "hardware": {"preferred": "gpu", "fallback": ["cpu"], **pool(namespace)},
    }
    cluster.apply([slm("fb", spec)], "-n", namespace)
    obj = wait_condition(cluster, namespace, "fb", "Ready", "True")
    placement = obj["status"]["placement"]
    assert placement["tier"] == "cpu"
    assert placement["reason"].startswith("gpu: ") and "; cpu: " in placement["reason"]
    assert condition(obj, "Placed")["message"] == placement["reason"]
    pod_spec = get(cluster, namespace, "deployment", "fb")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(pod_spec["containers"][0]["resources"])
    assert pod_spec["nodeSelector"][POOL_LABEL] == namespace


def test_nothing_fits_stalls_naming_each_tier_then_a_new_node_places_it(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess, fake_nodes: FakeNodes
) -> None:
    spec = {
        "model": {"name": "qwen2.5:0.5b"},
        "hardware": {"preferred": "gpu", "fallback": ["cpu"], **pool(namespace)},
    }
    cluster.apply([slm("wait", spec)], "-n", namespace)
    obj = wait_condition(cluster, namespace, "wait", "Stalled", "True")
    stalled = condition(obj, "Stalled")
    assert "gpu: " in stalled["message"] and "cpu: " in stalled["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Placed")["status"] == "False"
    assert cluster.kubectl("get", "deployment", "wait", "-n", namespace, check=False).returncode != 0
    warnings = [e for e in events(cluster, namespace, "wait") if e["type"] == "Warning"]
    assert warnings and "gpu: " in warnings[0]["message"]

    add_pool_node(fake_nodes, namespace, f"{namespace[-6:]}-late-cpu", "cpu")
    obj = wait_condition(cluster, namespace, "wait", "Ready", "True")
    assert obj["status"]["placement"]["tier"] == "cpu"
    assert condition(obj, "Stalled")["status"] == "False"


def test_a_more_preferred_tier_appearing_moves_the_deployment(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess, fake_nodes: FakeNodes
) -> None:
    """Policy: placement follows the preference order whenever the inventory changes; the
    move is a rolling update, so the old replicas serve until the new ones are Ready."""
    add_pool_node(fake_nodes, namespace, f"{namespace[-6:]}-cpu", "cpu")
    spec = {
        "model": {"name": "qwen2.5:0.5b"},
        "hardware": {"preferred": "gpu", "fallback": ["cpu"], **pool(namespace)},
    }
    cluster.apply([slm("up", spec)], "-n", namespace)
    assert wait_condition(cluster, namespace, "up", "Ready", "True")["status"]["placement"]["tier"] == "cpu"
    first_hash = get(cluster, namespace, "deployment", "up")["spec"]["template"]["metadata"]["annotations"]

    add_pool_node(fake_nodes, namespace, f"{namespace[-6:]}-t4", "t4")
    wait_for(
        lambda: get(cluster, namespace, "slm", "up")["status"]["placement"]["tier"] == "gpu",
        what="placement to move to gpu",
    )
    obj = wait_condition(cluster, namespace, "up", "Ready", "True")
    deployment = get(cluster, namespace, "deployment", "up")
    assert deployment["spec"]["template"]["metadata"]["annotations"] != first_hash
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    assert obj["status"]["placement"]["reason"].startswith("gpu: ")


def test_auto_quantization_follows_device_memory(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    def on_gpu(product: str) -> dict[str, Any]:
        return {
            "model": {"name": "mistral:7b"},
            "hardware": {
                "preferred": "gpu",
                "fallback": [],
                "nodeSelector": {"nvidia.com/gpu.product": product},
            },
        }

    cluster.apply(
        [slm("small", on_gpu("Tesla-T4")), slm("large", on_gpu("NVIDIA-A100-SXM4-80GB"))], "-n", namespace
    )
    small = wait_condition(cluster, namespace, "small", "Placed", "True")["status"]["placement"]
    large = wait_condition(cluster, namespace, "large", "Placed", "True")["status"]["placement"]
    assert large["quantization"] == "f16"
    assert small["quantization"] in ("q8_0", "q4_k_m")
    assert small["memoryEstimateBytes"] < large["memoryEstimateBytes"] <= 81920 * 2**20
    assert small["memoryEstimateBytes"] <= 15360 * 2**20
    assert "f16" in small["reason"]  # it says why f16 was passed over


def test_explicit_quantization_that_cannot_fit_stalls(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    spec = {
        "model": {"name": "mistral:7b", "quantization": "f16"},
        "hardware": {
            "preferred": "gpu",
            "fallback": [],
            "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
        },
    }
    cluster.apply([slm("toobig", spec)], "-n", namespace)
    obj = wait_condition(cluster, namespace, "toobig", "Stalled", "True")
    message = condition(obj, "Stalled")["message"]
    assert "gpu: " in message and "f16" in message
    assert condition(obj, "Placed")["reason"] == "Unplaceable"


def test_fetch_job_success(cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess) -> None:
    cluster.apply(
        [slm("good", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}})], "-n", namespace
    )
    good = wait_condition(cluster, namespace, "good", "ModelCached", "True")
    assert good["status"]["cache"]["phase"] == "Ready"
    jobs = get(cluster, namespace, "jobs", "-l", "app.kubernetes.io/instance=good")["items"]
    assert len(jobs) == 1
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:4] == ["python", "-m", "slm_runtime", "fetch"]
    assert command[command.index("--source") + 1] == good["status"]["model"]["source"]
    # The runtime Deployment only exists once the model is cached, and mounts it read-only.
    deployment = get(cluster, namespace, "deployment", "good")
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/models" and m.get("readOnly") for m in mounts)


FAST_RETRIES = {"SLM_OPERATOR_FETCH_BACKOFF_LIMIT": "0", "SLM_OPERATOR_FETCH_RETRY_BASE_SECONDS": "2"}


@pytest.mark.parametrize("operator_env", [FAST_RETRIES])
def test_fetch_failure_is_reported_and_retried_with_backoff(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    source = "https://models.kwok-fail.invalid/tiny.gguf"  # kwok fails pods that fetch from it
    cluster.apply(
        [slm("bad", {"model": {"source": source}, "hardware": {"preferred": "cpu"}})], "-n", namespace
    )
    wait_for(
        lambda: (
            condition(get(cluster, namespace, "slm", "bad"), "ModelCached").get("reason") == "FetchFailed"
        ),
        timeout=90,
        what="ModelCached reason FetchFailed",
    )
    bad = get(cluster, namespace, "slm", "bad")
    cached = condition(bad, "ModelCached")
    assert cached["status"] == "False"
    assert "cannot reach the source" in cached["message"] and source in cached["message"]
    assert bad["status"]["cache"]["phase"] == "Failed"
    assert condition(bad, "Stalled")["status"] == "True"
    assert condition(bad, "Ready")["status"] == "False"
    assert cluster.kubectl("get", "deployment", "bad", "-n", namespace, check=False).returncode != 0

    # The failed Job is replaced after a backoff that doubles per attempt (2 s, 4 s, ...).
    def retry_notices() -> list[str] | None:
        notices = sorted(
            e["message"] for e in events(cluster, namespace, "bad") if e["reason"] == "FetchFailed"
        )
        return notices if len(notices) >= 2 else None

    notices = wait_for(retry_notices, timeout=90, what="two fetch retries")
    assert any("fetch attempt 1 failed" in n and "retrying in 2s" in n for n in notices)
    assert any("fetch attempt 2 failed" in n and "retrying in 4s" in n for n in notices)
    assert len(get(cluster, namespace, "jobs", "-l", "app.kubernetes.io/instance=bad")["items"]) <= 1


def test_drift_is_repaired(cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess) -> None:
    cluster.apply(
        [slm("keep", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}})], "-n", namespace
    )
    wait_condition(cluster, namespace, "keep", "Ready", "True")
    service_uid = get(cluster, namespace, "service", "keep")["metadata"]["uid"]

    cluster.kubectl("delete", "service", "keep", "-n", namespace)
    restored = wait_for(
        lambda: (
            (
                s := cluster.kubectl("get", "service", "keep", "-n", namespace, "-o", "json", check=False)
            ).returncode
            == 0
            and json.loads(s.stdout)
        ),
        what="Service restored",
    )
    assert restored["metadata"]["uid"] != service_uid

    cluster.kubectl(
        "set",
        "env",
        "deployment/keep",
        "-n",
        namespace,
        "SLM_CONTEXT_LENGTH=99999",
        "-c",
        "runtime",
        check=False,
    )
    cluster.kubectl("scale", "deployment/keep", "-n", namespace, "--replicas=3")

    def repaired() -> bool:
        deployment = get(cluster, namespace, "deployment", "keep")
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        return deployment["spec"]["replicas"] == 1 and env.get("SLM_CONTEXT_LENGTH") == "4096"

    wait_for(repaired, what="Deployment repaired")

    cluster.kubectl("delete", "deployment", "keep", "-n", namespace)
    wait_for(
        lambda: cluster.kubectl("get", "deployment", "keep", "-n", namespace, check=False).returncode == 0,
        what="Deployment re-created",
    )
    wait_condition(cluster, namespace, "keep", "Ready", "True")


def test_spec_change_rolls_out(cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess) -> None:
    cluster.apply(
        [slm("roll", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}})], "-n", namespace
    )
    wait_condition(cluster, namespace, "roll", "Ready", "True")
    before = get(cluster, namespace, "deployment", "roll")
    cluster.kubectl(
        "patch", "slm", "roll", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"optimization": {"maxContext": 2048}, "prompt": {"system": "Be brief."}}}),
    )  # fmt: skip
    obj = wait_condition(cluster, namespace, "roll", "Ready", "True")
    assert obj["status"]["observedGeneration"] == 2
    after = get(cluster, namespace, "deployment", "roll")
    env = {e["name"]: e.get("value") for e in after["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SLM_CONTEXT_LENGTH"] == "2048"
    assert env["SLM_SYSTEM_PROMPT"] == "Be brief."
    assert (
        after["spec"]["template"]["metadata"]["annotations"]
        != before["spec"]["template"]["metadata"]["annotations"]
    )
    assert after["metadata"]["generation"] > before["metadata"]["generation"]


def test_deletion_cascades_and_a_retained_cache_is_reused(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    manifest = slm(
        "gone",
        {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}, "cache": {"retain": True}},
    )
    cluster.apply([manifest], "-n", namespace)
    wait_condition(cluster, namespace, "gone", "Ready", "True")
    claim = get(cluster, namespace, "pvc", "gone-model-cache")
    assert not claim["metadata"].get("ownerReferences")
    jobs_before = get(cluster, namespace, "jobs", "-l", "app.kubernetes.io/instance=gone")["items"]
    assert len(jobs_before) == 1

    cluster.kubectl("delete", "slm", "gone", "-n", namespace)

    def children_gone() -> bool:
        return all(
            not get(cluster, namespace, kind, "-l", "app.kubernetes.io/instance=gone")["items"]
            for kind in ("deployments", "services", "jobs")
        )

    wait_for(children_gone, timeout=90, what="owned children garbage-collected")
    assert get(cluster, namespace, "pvc", "gone-model-cache")["metadata"]["uid"] == claim["metadata"]["uid"]

    cluster.apply([manifest], "-n", namespace)
    obj = wait_condition(cluster, namespace, "gone", "Ready", "True")
    assert obj["status"]["cache"]["claimName"] == "gone-model-cache"
    assert get(cluster, namespace, "pvc", "gone-model-cache")["metadata"]["uid"] == claim["metadata"]["uid"]
    # The model is already in the retained cache: nothing is downloaded twice.
    assert not get(cluster, namespace, "jobs", "-l", "app.kubernetes.io/instance=gone")["items"]
    assert condition(obj, "ModelCached")["status"] == "True"


def test_unretained_cache_goes_with_the_deployment(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    spec = {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}, "cache": {"retain": False}}
    cluster.apply([slm("tmp", spec)], "-n", namespace)
    wait_condition(cluster, namespace, "tmp", "Ready", "True")
    owners = get(cluster, namespace, "pvc", "tmp-model-cache")["metadata"]["ownerReferences"]
    assert [o["kind"] for o in owners] == ["SLMDeployment"]
    cluster.kubectl("delete", "slm", "tmp", "-n", namespace)
    wait_for(
        lambda: (
            cluster.kubectl("get", "pvc", "tmp-model-cache", "-n", namespace, check=False).returncode != 0
        ),
        timeout=90,
        what="cache claim garbage-collected",
    )


def test_operator_restart_converges_without_duplicates_or_writes(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    cluster.apply(
        [slm("steady", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}})],
        "-n",
        namespace,
    )
    wait_condition(cluster, namespace, "steady", "Ready", "True")

    def snapshot() -> dict[str, tuple[str, str]]:
        objects: dict[str, tuple[str, str]] = {}
        for kind in ("slm", "deployments", "services", "jobs", "pvc", "replicasets"):
            for item in get(cluster, namespace, kind)["items"]:
                meta = item["metadata"]
                objects[f"{kind}/{meta['name']}"] = (meta["uid"], meta["resourceVersion"])
        return objects

    wait_for(lambda: "slm_operator_reconciles_total" in slm_operator.metrics(), what="operator metrics")
    before = snapshot()
    slm_operator.restart()
    wait_for(
        lambda: 'slm_operator_reconciles_total{result="ok"}' in slm_operator.metrics(),
        what="reconcile after restart",
    )
    assert snapshot() == before  # same objects, not even a status write
    metrics = slm_operator.metrics()
    assert 'slm_operator_api_requests_total{kind="SLMDeployment",verb="PATCH"}' not in metrics
    assert 'verb="PATCH"' not in metrics.replace('kind="SLMDeployment"', "")


def test_pod_security_restricted_namespace(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.apply(
        [slm("secure", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}})],
        "-n",
        namespace,
    )
    wait_condition(cluster, namespace, "secure", "Ready", "True")
    warnings = [e for e in get(cluster, namespace, "events")["items"] if e["reason"] == "FailedCreate"]
    assert warnings == []


INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "both-name-and-source",
        {"model": {"name": "phi4:mini", "source": "hf://a/b/c.gguf"}},
        "exactly one of model.name",
    ),
    ("neither-name-nor-source", {"model": {}}, "exactly one of model.name"),
    (
        "fallback-has-preferred",
        {"model": {"name": "phi4:mini"}, "hardware": {"preferred": "gpu", "fallback": ["gpu", "cpu"]}},
        "hardware.fallback must not contain the preferred tier",
    ),
    (
        "unknown-tier",
        {"model": {"name": "phi4:mini"}, "hardware": {"preferred": "tpu"}},
        "spec.hardware.preferred",
    ),
    (
        "onnx-quant-for-gguf",
        {"model": {"source": "hf://a/b/c.gguf", "format": "gguf", "quantization": "int4"}},
        "format gguf takes a GGUF quantization",
    ),
    (
        "gguf-quant-for-onnx",
        {"model": {"source": "hf://a/b/onnx", "format": "onnx", "quantization": "q4_k_m"}},
        "format onnx takes an ONNX precision",
    ),
    ("unknown-quant", {"model": {"name": "phi4:mini", "quantization": "q1_x"}}, "spec.model.quantization"),
    ("bad-source-scheme", {"model": {"source": "ftp://host/model.gguf"}}, "spec.model.source"),
    ("bad-sha256", {"model": {"name": "phi4:mini", "sha256": "abc"}}, "spec.model.sha256"),
    ("zero-count", {"model": {"name": "phi4:mini"}, "hardware": {"count": 0}}, "spec.hardware.count"),
    ("negative-replicas", {"model": {"name": "phi4:mini"}, "replicas": -1}, "spec.replicas"),
    (
        "tiny-context",
        {"model": {"name": "phi4:mini"}, "optimization": {"maxContext": 16}},
        "spec.optimization.maxContext",
    ),
    (
        "bad-kv-cache",
        {"model": {"name": "phi4:mini"}, "optimization": {"kvCacheType": "q3"}},
        "spec.optimization.kvCacheType",
    ),
    ("port-out-of-range", {"model": {"name": "phi4:mini"}, "api": {"port": 70000}}, "spec.api.port"),
    (
        "no-api-enabled",
        {"model": {"name": "phi4:mini"}, "api": {"openai": False, "ollama": False}},
        "at least one of api.openai and api.ollama",
    ),
    (
        "half-secret-ref",
        {"model": {"name": "phi4:mini"}, "api": {"apiKeySecretRef": {"name": "key"}}},
        "needs both name and key",
    ),
    (
        "rwo-with-replicas",
        {"model": {"name": "phi4:mini"}, "replicas": 2, "cache": {"accessMode": "ReadWriteOnce"}},
        "replicas above 1 need cache.accessMode ReadWriteMany",
    ),
    ("bad-cache-size", {"model": {"name": "phi4:mini"}, "cache": {"size": "ten gigs"}}, "spec.cache.size"),
    (
        "bad-access-mode",
        {"model": {"name": "phi4:mini"}, "cache": {"accessMode": "ReadOnlyMany"}},
        "spec.cache.accessMode",
    ),
    (
        "unknown-field",
        {"model": {"name": "phi4:mini"}, "hardwre": {"preferred": "gpu"}},
        "spec.hardwre: field not declared in schema",
    ),
]


@pytest.mark.parametrize(("name", "spec", "message"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: LocalCluster, crds: list[str], namespace: str, name: str, spec: dict[str, Any], message: str
) -> None:
    result = cluster.kubectl(
        "apply", "--server-side", "--validate=strict", "-n", namespace, "-f", "-",
        input=json.dumps(slm(name, spec)), check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"{name} was accepted"
    assert message in result.stderr, result.stderr


def test_name_too_long_for_child_names_is_rejected(
    cluster: LocalCluster, crds: list[str], namespace: str
) -> None:
    result = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(slm("a" * 49, {"model": {"name": "phi4:mini"}})),
        check=False,
    )
    assert result.returncode != 0
    assert "metadata.name: Too long: may not be more than 48" in result.stderr


def test_kubectl_explain_describes_fields(cluster: LocalCluster, crds: list[str]) -> None:
    explained = cluster.kubectl("explain", "slmdeployment.spec.hardware.fallback").stdout
    assert "Tiers tried in order" in explained
    assert "slmd" in cluster.kubectl("api-resources", "--api-group=slm.dev").stdout


def test_the_operator_writes_only_status_so_gitops_sees_no_drift(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    manifest = slm("gitops", {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}})
    manifest["metadata"]["labels"] = {"app.kubernetes.io/part-of": "assistants"}
    cluster.kubectl("apply", "--server-side", "--field-manager=argocd-controller", "-n", namespace, "-f", "-",
                    input=json.dumps(manifest))  # fmt: skip
    applied = get(cluster, namespace, "slm", "gitops")
    obj = wait_condition(cluster, namespace, "gitops", "Ready", "True")
    assert obj["spec"] == applied["spec"]
    assert obj["metadata"].get("labels") == applied["metadata"].get("labels")
    assert obj["metadata"].get("annotations") == applied["metadata"].get("annotations")
    assert not obj["metadata"].get("finalizers")
    assert obj["metadata"]["generation"] == 1
    fields = get(cluster, namespace, "slm", "gitops", "--show-managed-fields")["metadata"]["managedFields"]
    managers = {(m["manager"], m.get("subresource", "")) for m in fields}
    assert managers == {("argocd-controller", ""), ("slm-operator", "status")}
    # A re-sync of the same manifest changes nothing: the operator added no fields to fight over.
    dry = cluster.kubectl("diff", "--server-side", "--field-manager=argocd-controller", "-n", namespace, "-f", "-",
                          input=json.dumps(manifest), check=False)  # fmt: skip
    assert dry.returncode == 0, dry.stdout
