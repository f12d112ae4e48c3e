"""cluster-down leaves the machine as it found it, after a real node ran a real pod.

This test starts and stops a cluster of its own, so it runs before any test that
uses the shared `cluster` (conftest orders it first): there is one real node per
machine.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from slm_dev import cluster as localcluster
from slm_dev import hoststate, realnode
from slm_dev.image_parts import PAUSE_IMAGE
from slm_dev.processes import pid_alive

pytestmark = [pytest.mark.k8s, pytest.mark.realnode, pytest.mark.slow]
OWN_CLUSTER = True  # conftest runs this module before the shared cluster starts


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def test_cluster_down_undoes_everything_the_real_node_did() -> None:
    reason = realnode.unavailable_reason()
    if reason:
        _unavailable(reason)
    if realnode.LOCK_FILE.exists():
        _unavailable(f"another local cluster holds the real node ({realnode.LOCK_FILE.read_text().strip()})")
    before = hoststate.snapshot()
    state_dir = Path(tempfile.mkdtemp(prefix="slm-lifecycle-"))
    cluster = localcluster.up(state_dir, localcluster.DEFAULT_NODES_FILE, real_node=True)
    try:
        pid_names = set(cluster.real_node_pids)
        assert pid_names == set(realnode.COMPONENTS)
        cluster.wait_default_service_account("default")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "namespace": "default"},
            "spec": {
                "nodeSelector": realnode.node_selector(),
                "tolerations": [realnode.toleration()],
                "containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}],
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        deadline = time.monotonic() + 120
        while True:
            live = cluster.kubectl_json("get", "pod", "sleeper", "-n", "default")
            statuses = live.get("status", {}).get("containerStatuses", [])
            if statuses and statuses[0].get("state", {}).get("running"):
                break
            assert time.monotonic() < deadline, live.get("status")
            time.sleep(0.5)
        assert statuses[0]["containerID"].startswith("containerd://")
        assert live["status"]["podIP"].startswith(realnode.NODE_IP.rsplit(".", 1)[0] + ".")
        during = hoststate.snapshot()
        changed = hoststate.differences(before, during)
        # The node really changed the machine (so the comparison below means something).
        assert any(realnode.BRIDGE in line for line in changed), changed
        assert any("KUBE-" in line for line in changed), changed
    finally:
        localcluster.down(state_dir)
    assert hoststate.differences(before, hoststate.snapshot()) == []
    assert not state_dir.exists()
    assert not realnode.LOCK_FILE.exists()
    for pid in cluster.real_node_pids.values():
        assert not pid_alive(pid)
