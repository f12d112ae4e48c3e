"""`slm run` against the real control plane and the operator (kwok's fake pods).

kwok's pods answer no HTTP, so the model's side is a local fake Ollama server and kubectl a
script that records its arguments and 'forwards' to it; what needs the cluster is real:
deploy-on-demand, waiting for Ready, the API-key Secret read with the user's own credentials
(and refused without `get secrets`), and the port-forward command line built for the Service.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from slm_dev import cluster as localcluster
from slm_dev.cluster import LocalCluster
from slm_dev.operator_process import OperatorProcess
from slm_operator.cli import portforward, run
from slm_operator.cli.__main__ import build_parser, main
from slm_operator.cli.commands import Context
from slm_operator.cli.errors import CliError
from tests.k8s.conftest import wait_for
from tests.unit.cli.test_run import STATS, FakeOllama, fake_kubectl, fake_ollama

pytestmark = [pytest.mark.k8s]

ANSWER = "Quantum computing uses qubits.\n"


def slm(
    kubeconfig: Path, namespace: str, *args: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))  # a pipe, not a terminal
    out, err = io.StringIO(), io.StringIO()
    code = main([*args, "--kubeconfig", str(kubeconfig), "-n", namespace], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def get(cluster: LocalCluster, namespace: str, *what: str) -> Any:
    return cluster.kubectl_json("get", *what, "-n", namespace)


def ready(obj: dict[str, Any]) -> bool:
    return run.is_ready(obj)


def test_run_deploys_a_catalog_model_on_demand_and_waits_for_ready(
    cluster: LocalCluster,
    namespace: str,
    slm_operator: OperatorProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with fake_ollama(key=None) as port:
        kubectl, log = fake_kubectl(tmp_path, port)
        # Without a terminal to ask, --yes is needed; nothing is created meanwhile.
        code, out, err = slm(
            cluster.kubeconfig, namespace, "run", "qwen2.5:0.5b", "hi", monkeypatch=monkeypatch
        )
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and "rerun with --yes" in err, err
        assert get(cluster, namespace, "slmdeployments")["items"] == []

        code, out, err = slm(
            cluster.kubeconfig,
            namespace,
            "run",
            "qwen2.5:0.5b",
            "Explain quantum computing",
            "--yes",
            "--verbose",
            "--timeout",
            "120",
            "--kubectl",
            str(kubectl),
            monkeypatch=monkeypatch,
        )
        print(err)
        assert code == 0, err
        assert out == ANSWER
        lines = err.splitlines()
        assert lines[0] == f"deploying qwen2.5:0.5b as SLMDeployment qwen2-5-0-5b in namespace {namespace}"
        assert len(lines) > 9  # the deploying line, at least one waiting line, the stats
        assert all(line.startswith("waiting for qwen2-5-0-5b: ") for line in lines[1:-8])
        assert err.endswith(STATS)
        obj = get(cluster, namespace, "slmdeployments", "qwen2-5-0-5b")
        assert obj["spec"]["model"]["name"] == "qwen2.5:0.5b" and obj["spec"]["replicas"] == 1
        assert ready(obj)
        assert log.read_text().split() == [
            "--kubeconfig",
            str(cluster.kubeconfig),
            "port-forward",
            "-n",
            namespace,
            "svc/qwen2-5-0-5b",
            ":8080",
        ]
        [(path, _, payload)] = FakeOllama.requests
        assert path == "/api/chat"
        assert payload["messages"] == [{"role": "user", "content": "Explain quantum computing"}]

        # The second run finds it (catalog name -> the derived resource) and asks nothing.
        code, out, err = slm(
            cluster.kubeconfig,
            namespace,
            "run",
            "qwen2.5:0.5b",
            "--kubectl",
            str(kubectl),
            stdin="piped prompt",
            monkeypatch=monkeypatch,
        )
        assert (code, out, err) == (0, ANSWER, "")
        assert FakeOllama.requests[-1][2]["messages"] == [{"role": "user", "content": "piped prompt"}]

    # The service and the port-forward that a real run starts, with the kubectl beside the cluster.
    monkeypatch.delenv("SLM_KUBECTL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-dir"))
    args = build_parser().parse_args(["run", "qwen2-5-0-5b", "--kubeconfig", str(cluster.kubeconfig)])
    command = portforward.forward_command(Context(args=args), obj)
    assert command == [
        str(cluster.bin_dir / "kubectl"),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "port-forward",
        "-n",
        namespace,
        "svc/qwen2-5-0-5b",
        ":8080",
    ]
    service = get(cluster, namespace, "service", "qwen2-5-0-5b")
    assert [p["port"] for p in service["spec"]["ports"]] == [8080]
    # The real kubectl resolves svc/NAME to the kwok Pod, and fails on the connection (no kubelet):
    # one line, fast, naming the command.
    with pytest.raises(CliError) as caught, portforward.PortForward(command, timeout=20):
        pass
    assert caught.value.message.startswith("kubectl port-forward failed (error: ")
    assert "upgrad" in caught.value.message and "not found" not in caught.value.message
    assert caught.value.message.endswith(" ".join(command))


def test_run_reads_the_api_key_secret_with_the_users_credentials(
    cluster: LocalCluster,
    namespace: str,
    slm_operator: OperatorProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster.kubectl("create", "secret", "generic", "llm-key", "--from-literal=token=s3cret", "-n", namespace)
    body = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "keyed", "namespace": namespace},
        "spec": {
            "model": {"name": "qwen2.5:0.5b"},
            "api": {"apiKeySecretRef": {"name": "llm-key", "key": "token"}},
        },
    }
    manifest = tmp_path / "keyed.json"
    manifest.write_text(json.dumps(body))
    cluster.kubectl("apply", "-f", str(manifest))
    wait_for(
        lambda: ready(get(cluster, namespace, "slmdeployments", "keyed")), timeout=120, what="keyed Ready"
    )

    # A user who may read SLMDeployments but not Secrets.
    cluster.kubectl("create", "serviceaccount", "viewer", "-n", namespace)
    cluster.kubectl(
        "create", "role", "slm-viewer", "--verb=get,list,watch", "--resource=slmdeployments.slm.dev",
        "-n", namespace,
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "slm-viewer", "--role=slm-viewer",
        f"--serviceaccount={namespace}:viewer", "-n", namespace,
    )  # fmt: skip
    token = cluster.kubectl("create", "token", "viewer", "-n", namespace, "--duration=1h").stdout.strip()
    viewer = localcluster.token_kubeconfig(cluster, tmp_path / "viewer.kubeconfig", token, namespace)

    with fake_ollama(key="s3cret") as port:
        kubectl, log = fake_kubectl(tmp_path, port)
        code, out, err = slm(
            cluster.kubeconfig, namespace, "run", "keyed", "hi", "--kubectl", str(kubectl),
            monkeypatch=monkeypatch,
        )  # fmt: skip
        assert (code, out, err) == (0, ANSWER, "")
        assert FakeOllama.requests[-1][1] == "Bearer s3cret"

        code, out, err = slm(
            viewer, namespace, "run", "keyed", "hi", "--kubectl", str(kubectl), monkeypatch=monkeypatch
        )
        assert code == 1 and out == ""
        assert err == (
            f"error: the model's API needs the key in Secret {namespace}/llm-key (key token), and you cannot "
            "read it: you need RBAC `get secrets` in that namespace, or pass the key with --api-key\n"
        )

        code, out, err = slm(
            viewer, namespace, "run", "keyed", "hi", "--api-key", "s3cret", "--kubectl", str(kubectl),
            monkeypatch=monkeypatch,
        )  # fmt: skip
        assert (code, out, err) == (0, ANSWER, "")
        assert log.read_text().split()[:2] == ["--kubeconfig", str(viewer)]
