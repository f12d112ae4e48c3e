"""`slm bench --record` on the real node: SmolLM2 measured through the port-forward to the real pod.

The result lands in status.benchmark (written with the user's credentials), survives the operator's
own status writes, and `slm ps -o wide` and `slm show` read it back; a user without RBAC `patch` on
slmdeployments/status gets the measurement and one line naming the permission.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slm_dev import cluster as localcluster
from slm_dev import realpods
from slm_dev.cluster import LocalCluster
from slm_operator.cli import bench_status
from slm_operator.cli.__main__ import main
from tests.k8s.conftest import wait_for
from tests.k8s.test_real_node import E2E, operator_namespace

pytestmark = [pytest.mark.k8s, pytest.mark.realnode, pytest.mark.slow]

RELEASE = "slm-bench"
NAME = "bench"


@pytest.fixture(scope="module")
def e2e(cluster: LocalCluster, crds: list[str]) -> Iterator[E2E]:
    with operator_namespace(cluster, "bench", RELEASE) as env:
        env.apply(NAME, realpods.real_node_spec())
        try:
            env.wait_ready(NAME)
        except BaseException:
            print(env.describe())
            raise
        yield env


def slm(
    e2e: E2E, *args: str, kubeconfig: Path | None = None, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a pipe, not a terminal
    out, err = io.StringIO(), io.StringIO()
    config = kubeconfig or e2e.cluster.kubeconfig
    code = main([*args, "--kubeconfig", str(config), "-n", e2e.namespace], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def ready_since(obj: dict[str, Any]) -> str:
    return str(realpods.conditions(obj)["Ready"]["lastTransitionTime"])


def test_bench_records_and_the_operator_keeps_it(e2e: E2E, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = slm(
        e2e, "bench", NAME, "--warmup", "1", "--epochs", "1", "--prompt-tokens", "64", "--max-tokens", "16",
        "--concurrency", "1,2", "--record", "-o", "json", "--timeout", "300", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    obj = e2e.get(NAME)
    placement, model = obj["status"]["placement"], obj["status"]["model"]
    assert (data["tier"], data["accelerator"], data["quantization"]) == (
        placement["tier"], placement["accelerator"], placement["quantization"],
    )  # fmt: skip
    assert (data["tier"], data["quantization"]) == ("cpu", "q4_1")
    assert data["model"] == realpods.MODEL_NAME and data["modelSha256"] == model["sha256"]
    assert data["loadSeconds"] > 0  # the runtime pod's /readyz
    assert 40 <= data["promptTokens"] <= 96, data["promptTokens"]  # SmolLM2's own count, sized to 64
    assert [(lv["concurrency"], lv["requests"], lv["errors"]) for lv in data["levels"]] == [
        (1, 1, 0),
        (2, 2, 0),
    ]
    for level in data["levels"]:
        assert 0 < level["generatedTokens"] <= 16 * level["requests"]
        assert level["ttftMs"] > 0 and level["prefillTokensPerSecond"] > 0
        assert level["decodeTokensPerSecond"] > 0 and level["aggregateTokensPerSecond"] > 0
    assert err.splitlines()[-1].startswith(f"recorded in status.benchmark of {NAME} for cpu/")

    [stored] = obj["status"]["benchmark"]
    assert stored["levels"] == [{k: v for k, v in lv.items() if k != "wallSeconds"} for lv in data["levels"]]
    assert (stored["modelSha256"], stored["promptTokens"], stored["maxTokens"]) == (
        model["sha256"], data["promptTokens"], 16,
    )  # fmt: skip

    expected = bench_status.ps_cells(bench_status.current_entry(obj))
    assert all(cell.text != "-" for cell in expected.values())
    code, out, err = slm(e2e, "ps", "-o", "wide", monkeypatch=monkeypatch)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[-4:] == ["TTFT", "TOK/S@1", "TOK/S@MAX", "ENDPOINT"]
    assert row.split()[-4:-1] == [cell.text for cell in expected.values()]
    code, out, err = slm(e2e, "show", NAME, monkeypatch=monkeypatch)
    assert code == 0, err
    shown = "\n".join(bench_status.show_lines(obj))
    assert shown.startswith("  Benchmark\n    CPU q4_1, where it runs now: recorded ") and shown in out

    # The operator writes the whole status when the serving pod goes and comes back: it keeps the
    # benchmark it did not compute.
    before = ready_since(obj)
    [pod] = e2e.runtime_pods(NAME)
    e2e.cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", e2e.namespace, "--wait=false")
    wait_for(
        lambda: ready_since(e2e.get(NAME)) != before and realpods.conditions(e2e.get(NAME))["Ready"]["status"] == "True",
        timeout=300, interval=1, what="Ready again after the runtime pod was replaced",
    )  # fmt: skip
    assert e2e.get(NAME)["status"]["benchmark"] == [stored]


def test_record_needs_patch_on_the_status_subresource(
    e2e: E2E, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = e2e.namespace
    user = f"{NAME}-user"
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["slm.dev"], "resources": ["slmdeployments"], "verbs": ["get", "list", "watch"]},
        # What the port-forward needs.
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
    ]
    e2e.cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": user, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": user, "namespace": namespace}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": user, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
         "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}]},
    ])  # fmt: skip
    token = e2e.cluster.kubectl("create", "token", user, "-n", namespace, "--duration=1h").stdout.strip()
    kubeconfig = localcluster.token_kubeconfig(e2e.cluster, tmp_path / "user.kubeconfig", token, namespace)
    argv = (
        "bench",
        NAME,
        "--warmup",
        "0",
        "--epochs",
        "1",
        "--max-tokens",
        "4",
        "--concurrency",
        "1",
        "--record",
    )

    code, out, err = slm(e2e, *argv, "-o", "json", kubeconfig=kubeconfig, monkeypatch=monkeypatch)
    assert code == 1
    assert json.loads(out)["levels"][0]["requests"] == 1  # measured, then refused
    assert err.splitlines()[-1] == (
        f"error: cannot write the status of SLMDeployment {namespace}/{NAME}: forbidden; it needs RBAC "
        f"`patch` on slmdeployments/status (API group slm.dev) in namespace {namespace}"
    )

    rules.append({"apiGroups": ["slm.dev"], "resources": ["slmdeployments/status"], "verbs": ["patch"]})
    e2e.cluster.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": user, "namespace": namespace}, "rules": rules},
    ])  # fmt: skip

    def recorded() -> str | None:
        code, _, err = slm(e2e, *argv, "-o", "csv", kubeconfig=kubeconfig, monkeypatch=monkeypatch)
        return err if code == 0 else None  # a changed Role applies within moments

    wait_for(recorded, timeout=60, interval=2, what="the bench to record with patch on slmdeployments/status")
    [stored] = e2e.get(NAME)["status"]["benchmark"]  # the same device and quantization: replaced
    assert stored["maxTokens"] == 4 and [lv["concurrency"] for lv in stored["levels"]] == [1]
