"""The pure parts of the local control plane (slm_dev.cluster): node data, storage pool, binary cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_dev import cluster as localcluster
from slm_dev import cluster_objects
from slm_dev.paths import HACK_DIR


def test_default_node_file_is_valid_and_mixed() -> None:
    nodes = localcluster.load_node_file(localcluster.DEFAULT_NODES_FILE)
    names = [n["metadata"]["name"] for n in nodes]
    assert len(names) == len(set(names)) >= 7
    resources = {name: set(n["status"]["allocatable"]) for name, n in zip(names, nodes, strict=True)}
    assert sum(1 for r in resources.values() if not any("/" in x for x in r)) >= 2
    assert sum(1 for r in resources.values() if "nvidia.com/gpu" in r) >= 2
    for wanted in ("amd.com/gpu", "npu.intel.com/npu", "huawei.com/Ascend310P"):
        assert any(wanted in r for r in resources.values()), wanted


def test_node_file_rejects_other_kinds(tmp_path: Path) -> None:
    bad = tmp_path / "nodes.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    with pytest.raises(localcluster.ClusterError, match="every document must be a Node"):
        localcluster.load_node_file(bad)


def test_node_defaults_fill_what_a_kubelet_reports() -> None:
    node = cluster_objects.with_node_defaults(
        {
            "metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}},
            "status": {"capacity": {"cpu": "4"}},
        }
    )
    assert node["metadata"]["labels"] == {
        "kubernetes.io/arch": "arm64",
        "kubernetes.io/hostname": "n1",
        "kubernetes.io/os": "linux",
        "type": "kwok",
    }
    assert node["metadata"]["annotations"] == {
        "kwok.x-k8s.io/node": "fake",
        "node.alpha.kubernetes.io/ttl": "0",
    }
    assert node["status"]["allocatable"] == {"cpu": "4"}
    assert node["status"]["nodeInfo"]["architecture"] == "arm64"


def test_node_is_schedulable_needs_ready_and_no_not_ready_taint() -> None:
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert cluster_objects.node_is_schedulable(ready)
    tainted = {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}
    assert not cluster_objects.node_is_schedulable(tainted)
    assert not cluster_objects.node_is_schedulable(
        {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )


def test_pool_volume_shape(tmp_path: Path) -> None:
    pv = cluster_objects.persistent_volume("ReadWriteMany", "20Gi", tmp_path)
    assert pv["metadata"]["labels"] == {"slm.dev/pool": "rwx-20gi"}
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["storageClassName"] == cluster_objects.STORAGE_CLASS
    folder = Path(pv["spec"]["hostPath"]["path"])
    assert str(folder).startswith(str(tmp_path))
    # fsGroup does not apply to hostPath: the folder itself must let the runtime's uid write.
    assert folder.is_dir()
    assert folder.stat().st_mode & 0o777 == 0o777


def test_build_script_uses_given_binaries_without_building(tmp_path: Path) -> None:
    for name in (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kubelet",
        "kube-proxy",
        "kwok",
        "helm",
    ):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (tmp_path / "kwok-stages.yaml").write_text("---\n")
    env = {**os.environ, "SLM_KUBE_BIN_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}  # no Go on PATH
    result = subprocess.run(
        ["bash", str(localcluster.BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path)
    assert "using existing binaries" in result.stderr


def test_down_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(localcluster.ClusterError, match="does not look like"):
        localcluster.down(tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_status_and_down_need_only_the_standard_library(tmp_path: Path) -> None:
    # `make cluster-down` and `make cluster-status` run without the virtual environment (-S: no
    # site-packages, so an import of PyYAML or anything else outside the standard library fails).
    env = {**os.environ, "PYTHONPATH": str(HACK_DIR)}
    for command, code, said in (("status", 1, "not running"), ("down", 0, "stopped and removed")):
        result = subprocess.run(
            [sys.executable, "-S", "-m", "slm_dev.cluster", command, "--state-dir", str(tmp_path / "none")],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code, result.stderr
        assert said in result.stdout + result.stderr
