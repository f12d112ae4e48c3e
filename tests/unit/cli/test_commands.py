"""The commands' pure parts (tables, `slm why`, show) and main()'s behaviour without a cluster."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.cli.__main__ import main
from slm_operator.cli.commands import list_table, ps_table, why_text
from slm_operator.cli.errors import CliError
from slm_operator.cli.output import Table, human_ago, human_size
from slm_operator.cli.resources import build

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
SHA = "b179c952" + "0" * 56
REASON = (
    "npu: npu runs ONNX only; phi4:mini has no ONNX variant for npu; gpu: 2 node(s) with nvidia.com/gpu, "
    "largest 81920 MiB per device; f16 fits (9.6 GiB) on gpu-nvidia-a100-0"
)


def sample(name: str = "assistant", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {
            "name": name,
            "namespace": "ai",
            "generation": 2,
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "managedFields": [
                {"manager": "slm-cli", "operation": "Apply", "time": "2026-12-06T11:55:00Z"},
                {"manager": "slm-operator", "subresource": "status", "time": "2026-12-06T11:59:59Z"},
            ],
        },
        "spec": {
            "model": {"name": "phi4:mini"},
            "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
            "replicas": 1,
            "optimization": {"maxContext": 8192},
        },
        "status": {
            "conditions": [
                {
                    "type": "Placed",
                    "status": "True",
                    "reason": "Placed",
                    "message": REASON,
                    "observedGeneration": 2,
                },
                {
                    "type": "ModelCached",
                    "status": "True",
                    "reason": "Cached",
                    "message": "cached",
                    "observedGeneration": 2,
                },
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Available",
                    "message": "1 replica(s) serving",
                    "observedGeneration": 2,
                },
            ],
            "placement": {
                "tier": "gpu",
                "accelerator": "nvidia",
                "quantization": "f16",
                "format": "gguf",
                "backend": "llama-cpp",
                "memoryEstimateBytes": 10_300_000_000,
                "reason": REASON,
            },
            "model": {
                "name": "phi4:mini",
                "format": "gguf",
                "quantization": "f16",
                "sha256": SHA,
                "sizeBytes": 7_670_000_000,
            },
            "replicas": 1,
            "readyReplicas": 1,
            "selector": "app.kubernetes.io/instance=assistant,app.kubernetes.io/name=slm-runtime",
            **status,
        },
    }


def test_list_table() -> None:
    other = sample("tiny")
    other["status"]["model"] = {"sizeBytes": 98_362_432, "quantization": "q4_1", "format": "gguf"}
    other["status"]["placement"]["tier"] = "cpu"
    table = list_table([sample(), other], all_namespaces=False, now=NOW)
    table.sort("size")
    assert table.render() == (
        "NAME        ID             SIZE     QUANT   FORMAT   TIER   MODIFIED\n"
        "tiny        -              98 MB    q4_1    gguf     cpu    5 minutes ago\n"
        "assistant   b179c9520000   7.7 GB   f16     gguf     gpu    5 minutes ago\n"
    )


def test_ps_table() -> None:
    pods = {("ai", "assistant"): [{"spec": {"nodeName": "gpu-nvidia-a100-0"}}]}
    table = ps_table([sample()], pods, all_namespaces=True)
    assert table.render() == (
        "NAMESPACE   NAME        PROCESSOR      NODE                CONTEXT   READY   REPLICAS   UNTIL\n"
        "ai          assistant   GPU (nvidia)   gpu-nvidia-a100-0   8192      1/1     1          Forever\n"
    )
    assert "MEMORY" in table.render(wide=True)


def test_why_names_each_tier_and_the_events() -> None:
    events = [
        {
            "type": "Normal",
            "reason": "Placed",
            "message": "phi4:mini on gpu (nvidia, f16)",
            "lastTimestamp": "2026-12-06T11:58:00Z",
        }
    ]
    assert why_text(sample(), events, now=NOW) == (
        "assistant: phi4:mini runs on GPU (nvidia) as gguf f16 (llama-cpp); quantization asked: auto\n"
        "Tiers tried, in order npu -> gpu -> cpu:\n"
        "  npu  passed over npu runs ONNX only; phi4:mini has no ONNX variant for npu\n"
        "  gpu  chosen      2 node(s) with nvidia.com/gpu, largest 81920 MiB per device; f16 fits (9.6 GiB) "
        "on gpu-nvidia-a100-0\n"
        "ModelCached=True Cached: cached\n"
        "Ready=True Available: 1 replica(s) serving\n"
        "Events:\n"
        "  2 minutes ago           Normal   Placed            phi4:mini on gpu (nvidia, f16)\n"
    )


def test_why_when_nothing_fits_reads_the_stalled_condition() -> None:
    obj = sample()
    del obj["status"]["placement"]
    message = "no tier can run phi4:mini: npu: no node advertises an NPU; gpu: no GPU node; cpu: too big"
    obj["status"]["conditions"] = [
        {
            "type": "Stalled",
            "status": "True",
            "reason": "Unplaceable",
            "message": message,
            "observedGeneration": 2,
        }
    ]
    text = why_text(obj, [], now=NOW)
    assert text.splitlines()[:5] == [
        "assistant: phi4:mini is not placed yet (quantization asked: auto)",
        "Tiers tried, in order npu -> gpu -> cpu:",
        "  npu  passed over no node advertises an NPU",
        "  gpu  passed over no GPU node",
        "  cpu  passed over too big",
    ]


def test_output_helpers() -> None:
    assert [human_size(n) for n in (0, 512, 98_362_432, 2_500_000_000, 12_000_000_000)] == [
        "-",
        "512 B",
        "98 MB",
        "2.5 GB",
        "12 GB",
    ]
    assert human_ago(datetime(2026, 12, 6, 10, 0, tzinfo=UTC), NOW) == "2 hours ago"
    assert human_ago(None) == "-"
    table = Table(headers=["NAME"])
    with pytest.raises(CliError, match="cannot sort by 'size': the columns are name"):
        table.sort("size")


def test_build_validates_through_the_api_model() -> None:
    with pytest.raises(CliError, match=r"invalid name 'Bad_Name'.*e\.g\. bad-name"):
        build("Bad_Name", "ns", {"model": {"name": "phi4:mini"}})
    with pytest.raises(CliError) as caught:
        build("ok", "ns", {"model": {"name": "phi4:mini"}, "replicas": -1})
    assert caught.value.details == ["spec.replicas: Input should be greater than or equal to 0"]


# --- main() ---------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_create_dry_run_prints_the_resource(tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM qwen2.5:0.5b\nPARAMETER temperature 0.2\nSYSTEM Be brief.\n")
    code, out, err = run("create", "brief", "-f", str(modelfile), "--dry-run", "-n", "ai")
    assert (code, err) == (0, "")
    assert yaml.safe_load(out) == {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "brief", "namespace": "ai"},
        "spec": {
            "model": {"name": "qwen2.5:0.5b"},
            "prompt": {"system": "Be brief.", "parameters": {"temperature": 0.2}},
        },
    }
    code, out, _ = run("-n", "ai", "create", "brief", "-f", str(modelfile), "--dry-run", "-o", "json")
    assert json.loads(out)["metadata"] == {"name": "brief", "namespace": "ai"}


def test_deploy_dry_run(tmp_path: Path) -> None:
    config = tmp_path / "deploy.json"
    config.write_text(
        json.dumps({"deployment": {"model": "microsoft/phi-4-mini", "api": {"openai_compatible": False}}})
    )
    code, out, err = run("deploy", "--config", str(config), "--dry-run", "-n", "ai", "--name", "phi")
    assert (code, err) == (0, "")
    assert yaml.safe_load(out)["spec"] == {"model": {"name": "phi4:mini"}, "api": {"openai": False}}


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM qwen2.5:0.5b\nFILE ./notes.txt\n")
    code, out, err = run("create", "x", "-f", str(modelfile), "--dry-run", "-n", "ai")
    assert code == 1 and out == ""
    assert err.splitlines()[0] == "error: the Modelfile has 1 problem(s)"
    assert err.splitlines()[1].startswith("  line 2: FILE ./notes.txt cannot be honoured")
    code, _, err = run("create", "x", "-f", str(tmp_path / "missing"), "--dry-run", "-n", "ai")
    assert (code, err) == (
        1,
        f"error: Modelfile {tmp_path / 'missing'} does not exist: pass the file with -f/--config\n",
    )
    code, _, err = run("list", "-o", "xml")
    assert code == 1 and err.count("\n") == 1 and "invalid choice: 'xml'" in err
    code, _, err = run("--kubeconfig", str(tmp_path / "nope"), "list")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: cannot load the kubeconfig {tmp_path / 'nope'}")


def unreachable_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_unreachable_cluster(tmp_path: Path) -> None:
    kubeconfig = unreachable_kubeconfig(tmp_path)
    code, _, err = run("list", "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert err == (
        "error: cannot reach the cluster at http://127.0.0.1:9 (MaxRetryError) while trying to list "
        "SLMDeployments: check that it runs and that --kubeconfig/--context point at it\n"
    )
    # models list still lists, saying in one line why FITS is missing.
    code, out, err = run("models", "list", "--kubeconfig", str(kubeconfig), "--filter", "task=embedding")
    assert code == 0
    assert err.startswith("no cluster to check against (cannot reach the cluster at http://127.0.0.1:9")
    assert out.splitlines() == [
        "NAME                    PARAMS   SIZE    TYPE        DEVICES   VARIANTS",
        "nomic-embed-text:v1.5   137M     small   embedding   gpu,cpu   q4_k_m,q8_0,f16,onnx-int8-cpu,onnx-fp32-cpu",
    ]


def test_models_list_filters(tmp_path: Path) -> None:
    kubeconfig = str(unreachable_kubeconfig(tmp_path))
    code, out, _ = run("models", "list", "--kubeconfig", kubeconfig, "--filter", "device=npu")
    assert (code, out) == (0, "No catalog model matches these filters.\n")
    code, out, _ = run("models", "list", "--kubeconfig", kubeconfig, "--size", "large", "-o", "json")
    assert [item["name"] for item in json.loads(out)["items"]] == ["mistral:7b"]
    code, out, _ = run("models", "list", "--kubeconfig", kubeconfig, "--size", "small", "--sort-by", "params")
    assert [line.split()[0] for line in out.splitlines()[1:]][:2] == ["smollm2:135m", "smollm2:135m-f16"]
    code, _, err = run("models", "list", "--kubeconfig", kubeconfig, "--filter", "device=tpu")
    assert (code, err) == (1, "error: --filter device=tpu: device is one of npu, gpu, cpu\n")


def test_namespace_defaults_to_the_contexts_then_default(tmp_path: Path) -> None:
    from slm_operator.cli.kube import Kube

    kubeconfig = str(unreachable_kubeconfig(tmp_path))
    assert Kube(kubeconfig).namespace == "team"
    assert Kube(kubeconfig, namespace="other").namespace == "other"
    document = json.loads(Path(kubeconfig).read_text())
    del document["contexts"][0]["context"]["namespace"]
    Path(kubeconfig).write_text(json.dumps(document))
    assert Kube(kubeconfig).namespace == "default"
