"""The `slm` CLI against the real control plane and the operator (objects placed on kwok nodes)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from slm_dev.cluster import LocalCluster
from slm_dev.operator_process import OperatorProcess
from slm_operator.catalog import load_builtin_catalog
from slm_operator.cli.__main__ import main
from slm_operator.cli.modelfile import render
from tests.k8s.conftest import wait_for
from tests.unit.cli.test_modelfile import SEED_MODELFILE as SEED_WITH_FILES

pytestmark = [pytest.mark.k8s]

# The seed's enterprise Modelfile without its FILE lines (which `slm create` refuses, see the unit tests).
SEED_MODELFILE = SEED_WITH_FILES.split("# Custom model knowledge")[0]

SEED_JSON = {
    "deployment": {
        "model": "microsoft/phi-4-mini",
        "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
        "optimization": {"quantization": "dynamic", "batch_size": 4, "max_context": 4096},
        "api": {"port": 8080, "openai_compatible": True},
    }
}


def slm(cluster: LocalCluster, namespace: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*args, "--kubeconfig", str(cluster.kubeconfig), "-n", namespace], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def ok(cluster: LocalCluster, namespace: str, *args: str) -> str:
    code, out, err = slm(cluster, namespace, *args)
    assert code == 0, err
    assert err == ""
    return out


def get(cluster: LocalCluster, namespace: str, *what: str) -> Any:
    return cluster.kubectl_json("get", *what, "-n", namespace)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def wait_ready(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "slmdeployments", name)
        ready = condition(obj, "Ready")
        current = ready.get("observedGeneration") == obj["metadata"]["generation"]
        return dict(obj) if ready.get("status") == "True" and current else None

    return wait_for(probe, timeout=120, what=f"{name} Ready")


def test_create_deploy_list_ps_show_why_stop_cp_rm(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess, tmp_path: Path
) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(SEED_MODELFILE)
    code, out, err = slm(cluster, namespace, "create", "assistant", "-f", str(modelfile))
    assert code == 0, err
    # The seed's `num_gpu 1` keeps Ollama's meaning (layers), and the user is told so.
    assert err == (
        f"note: {modelfile} line 6: PARAMETER num_gpu 1 puts 1 layer(s) on the GPU, as in Ollama "
        "(spec.optimization.gpuLayers); for a number of GPUs per replica set spec.hardware.count "
        "instead, and for every layer on the GPU remove the line\n"
    )
    assert out.startswith(f"slmdeployment.slm.dev/assistant serverside-applied in namespace {namespace}")
    obj = get(cluster, namespace, "slmdeployments", "assistant")
    assert obj["spec"]["model"] == {"name": "qwen2.5:3b", "format": "auto", "quantization": "auto"}
    assert obj["spec"]["optimization"]["maxContext"] == 4096
    assert obj["spec"]["optimization"]["gpuLayers"] == 1
    assert obj["spec"]["optimization"]["threads"] == 8
    assert obj["spec"]["prompt"]["parameters"] == {"temperature": 0.7, "top_p": 0.9}
    assert obj["spec"]["prompt"]["system"].startswith("You are an enterprise assistant for Contoso")
    fields = get(cluster, namespace, "slmdeployments", "assistant", "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in fields["metadata"]["managedFields"]}
    assert ("slm-cli", "Apply") in managers

    config = tmp_path / "foundry.json"
    config.write_text(json.dumps(SEED_JSON))
    out = ok(cluster, namespace, "deploy", "--config", str(config))
    assert out.startswith("slmdeployment.slm.dev/phi4-mini serverside-applied")
    phi = get(cluster, namespace, "slmdeployments", "phi4-mini")
    assert phi["spec"]["hardware"]["preferred"] == "npu"
    assert phi["spec"]["hardware"]["fallback"] == ["gpu", "cpu"]
    assert phi["spec"]["optimization"]["parallelRequests"] == 4
    assert phi["spec"]["api"] == {"port": 8080, "openai": True, "ollama": True}

    assistant = wait_ready(cluster, namespace, "assistant")
    phi = wait_ready(cluster, namespace, "phi4-mini")
    placement = phi["status"]["placement"]
    assert placement["tier"] == "gpu"  # no NPU variant of phi4:mini: npu is passed over

    listing = ok(cluster, namespace, "list")
    print(listing)
    lines = listing.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "QUANT", "FORMAT", "TIER", "MODIFIED"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"assistant", "phi4-mini"}
    sha = assistant["status"].get("model", {}).get("sha256", "")
    assert rows["assistant"].split()[1] == (sha[:12] or "-")
    assert " gpu " in rows["phi4-mini"]
    as_json = json.loads(ok(cluster, namespace, "list", "-o", "json", "--sort-by", "name"))
    assert [i["metadata"]["name"] for i in as_json["items"]] == ["assistant", "phi4-mini"]

    ps = ok(cluster, namespace, "ps")
    print(ps)
    header, *ps_rows = ps.splitlines()
    assert header.split() == ["NAME", "PROCESSOR", "NODE", "CONTEXT", "READY", "REPLICAS", "UNTIL"]
    pods = get(
        cluster,
        namespace,
        "pods",
        "-l",
        "app.kubernetes.io/instance=phi4-mini,app.kubernetes.io/name=slm-runtime",
    )
    nodes = {p["spec"]["nodeName"] for p in pods["items"]}
    phi_row = next(r for r in ps_rows if r.startswith("phi4-mini"))
    assert f"GPU ({placement['accelerator']})" in phi_row
    assert all(node in phi_row for node in nodes) and nodes
    assert "4096" in phi_row and "Forever" in phi_row

    regenerated = ok(cluster, namespace, "show", "assistant", "--modelfile")
    assert regenerated == render(
        get(cluster, namespace, "slmdeployments", "assistant")["spec"],
        {},
        origin=f"SLMDeployment {namespace}/assistant",
    )
    assert "PARAMETER temperature 0.7" in regenerated and "PARAMETER num_gpu 1" in regenerated
    assert ok(cluster, namespace, "show", "assistant", "--parameters").splitlines() == [
        f"{'temperature':<20}0.7",
        f"{'top_p':<20}0.9",
    ]
    assert "Placement" in ok(cluster, namespace, "show", "phi4-mini")

    why = ok(cluster, namespace, "why", "phi4-mini")
    print(why)
    assert why.startswith(f"phi4-mini: phi4:mini runs on GPU ({placement['accelerator']})")
    assert "Tiers tried, in order npu -> gpu -> cpu:" in why
    assert "  npu  passed over" in why and "  gpu  chosen" in why
    assert "Events:" in why

    code, _, err = slm(cluster, namespace, "why", "phi4-mimi")
    assert code == 1
    assert err == (
        f"error: SLMDeployment 'phi4-mimi' not found in namespace {namespace}: did you mean phi4-mini?\n"
    )

    ok(cluster, namespace, "cp", "assistant", "assistant-copy")
    copy = get(cluster, namespace, "slmdeployments", "assistant-copy")
    assert copy["spec"] == get(cluster, namespace, "slmdeployments", "assistant")["spec"]

    assert ok(cluster, namespace, "stop", "phi4-mini").startswith("stopped phi4-mini")
    assert get(cluster, namespace, "slmdeployments", "phi4-mini")["spec"]["replicas"] == 0
    ps_after = ok(cluster, namespace, "ps")
    wait_for(
        lambda: "phi4-mini" not in ok(cluster, namespace, "ps"),
        timeout=60,
        what="phi4-mini gone from slm ps",
    )
    assert "assistant" in ps_after

    claim = "assistant-copy-model-cache"
    wait_for(
        lambda: cluster.kubectl("get", "pvc", claim, "-n", namespace, check=False).returncode == 0, what=claim
    )
    assert (
        ok(cluster, namespace, "rm", "assistant-copy")
        == f"deleted assistant-copy and its model cache {claim}\n"
    )
    out = ok(cluster, namespace, "rm", "assistant", "--keep-cache")
    assert out == "deleted assistant; the model cache assistant-model-cache is kept\n"
    wait_for(
        lambda: (
            cluster.kubectl("get", "slmdeployment", "assistant", "-n", namespace, check=False).returncode != 0
        ),
        what="assistant deleted",
    )
    kept = get(cluster, namespace, "pvc", "assistant-model-cache")
    assert kept["metadata"].get("deletionTimestamp") is None
    assert get(cluster, namespace, "slmdeployments", "phi4-mini")["spec"]["replicas"] == 0


def test_pull_waits_for_the_model_to_be_cached(
    cluster: LocalCluster, namespace: str, slm_operator: OperatorProcess
) -> None:
    out = ok(cluster, namespace, "pull", "qwen2.5:0.5b", "--timeout", "120")
    print(out)
    lines = out.splitlines()
    assert lines[0] == "pulling qwen2.5:0.5b into qwen2-5-0-5b (an SLMDeployment with replicas 0)"
    assert lines[-1].startswith("success: qwen2.5:0.5b is cached in qwen2-5-0-5b-model-cache")
    obj = get(cluster, namespace, "slmdeployments", "qwen2-5-0-5b")
    assert obj["spec"]["replicas"] == 0
    assert condition(obj, "ModelCached")["status"] == "True"
    # Pulling again finds it cached at once, and never scales anything.
    again = ok(cluster, namespace, "pull", "qwen2.5:0.5b", "--timeout", "30")
    assert again.splitlines()[0] == "qwen2-5-0-5b already holds qwen2.5:0.5b"
    assert get(cluster, namespace, "slmdeployments", "qwen2-5-0-5b")["spec"]["replicas"] == 0
    code, _, err = slm(cluster, namespace, "pull", "qwen2.5:0.6b")
    assert code == 1 and "did you mean" in err and err.count("\n") == 1


def test_models_list_marks_what_fits_the_kwok_nodes(cluster: LocalCluster, namespace: str) -> None:
    out = ok(cluster, namespace, "models", "list", "--size", "small", "--type", "instruct")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "PARAMS", "SIZE", "TYPE", "DEVICES", "VARIANTS", "FITS"]
    qwen = next(r for r in rows if r.startswith("qwen2.5:0.5b "))
    assert "gpu/nvidia f16" in qwen and "cpu q8_0" in qwen
    assert all(" small " in r for r in rows)
    assert load_builtin_catalog().lookup("qwen2.5:0.5b") is not None
