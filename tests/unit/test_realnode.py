"""The real node's configuration and the host-state bookkeeping, without starting anything."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

from slm_dev import hoststate, realnode
from slm_dev.image_parts import PAUSE_IMAGE


def test_kubelet_config_has_what_these_machines_need(tmp_path: Path) -> None:
    config = realnode._kubelet_config(tmp_path, {"kubelet": 1, "kubelet_healthz": 2}, tmp_path / "ca.crt")
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False  # 1.35+ refuses cgroup v1 without it
    assert config["failSwapOn"] is False
    assert config["address"] == realnode.NODE_IP  # never 0.0.0.0: only the bridge
    assert config["readOnlyPort"] == 0
    assert config["registerWithTaints"] == [
        {"key": "slm.dev/real-node", "value": "true", "effect": "NoSchedule"}
    ]
    assert config["containerRuntimeEndpoint"] == f"unix://{realnode.socket_path(tmp_path)}"
    # Pods' resolv.conf names no DNS server, so no query leaves the machine.
    assert config["resolvConf"] == str(tmp_path / "kubelet" / "resolv.conf")
    assert "clusterDNS" not in config
    # Imported images are never garbage-collected (nothing could pull them back).
    assert config["imageGCHighThresholdPercent"] == 100


def test_containerd_config_lets_runc_start_and_uses_the_local_pause_image(tmp_path: Path) -> None:
    text = realnode._containerd_config(tmp_path)
    assert "restrict_oom_score_adj = true" in text
    assert f'sandbox_image = "{PAUSE_IMAGE}"' in text
    assert "SystemdCgroup = false" in text
    assert f'address = "{realnode.socket_path(tmp_path)}"' in text
    assert f'root = "{tmp_path / "containerd" / "root"}"' in text
    assert f'conf_dir = "{tmp_path / "cni" / "net.d"}"' in text


def test_cni_bridge_never_masquerades_pod_traffic(tmp_path: Path) -> None:
    plugin = realnode._cni_config(tmp_path)["plugins"][0]
    assert plugin["type"] == "bridge"
    assert plugin["bridge"] == realnode.BRIDGE
    assert plugin["ipMasq"] is False
    assert plugin["ipam"]["ranges"] == [[{"subnet": realnode.POD_SUBNET, "gateway": realnode.NODE_IP}]]
    assert plugin["ipam"]["dataDir"] == str(tmp_path / "cni" / "ipam")


def test_kube_proxy_leaves_conntrack_sysctls_and_opens_node_ports_only_on_the_bridge(tmp_path: Path) -> None:
    config = realnode._kube_proxy_config(tmp_path / "kubeconfig", {"proxy_healthz": 1, "proxy_metrics": 2})
    assert config["mode"] == "iptables"
    assert config["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }
    assert config["nodePortAddresses"] == [f"{realnode.NODE_IP}/32"]
    assert config["clusterCIDR"] == realnode.POD_SUBNET


def _snapshot() -> dict[str, Any]:
    return {
        "sysctls": {"net/ipv4/ip_forward": "0"},
        "iptables": {"iptables": {"filter": ["-P FORWARD ACCEPT"]}},
        "mounts": ["/"],
        "cgroups": [],
        "links": ["eth0", "lo"],
        "routes": ["default via 192.0.2.1 dev eth0"],
        "paths": {"/run/containerd": False},
    }


def test_differences_is_empty_for_the_same_machine() -> None:
    assert hoststate.differences(_snapshot(), _snapshot()) == []


def test_differences_names_every_kind_of_leftover() -> None:
    after = copy.deepcopy(_snapshot())
    after["sysctls"]["net/ipv4/ip_forward"] = "1"
    after["iptables"]["iptables"]["filter"].append("-N KUBE-FIREWALL")
    after["mounts"].append("/tmp/x/kubelet")
    after["cgroups"].append("/sys/fs/cgroup/memory/kubepods")
    after["links"].append("slm0")
    after["paths"]["/run/containerd"] = True
    assert hoststate.differences(_snapshot(), after) == [
        "sysctl net/ipv4/ip_forward: 0 -> 1",
        "iptables -t filter: added -N KUBE-FIREWALL",
        "mounts: added /tmp/x/kubelet",
        "cgroups: added /sys/fs/cgroup/memory/kubepods",
        "links: added slm0",
        "path /run/containerd: absent before, not now",
    ]


def test_real_node_pods_opt_in_with_a_toleration_and_a_selector() -> None:
    assert realnode.toleration() == {"key": "slm.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
    assert realnode.node_selector() == {"slm.dev/real-node": "true"}


def test_sockets_stay_within_the_unix_socket_limit() -> None:
    short = Path("/tmp/slm-test-cluster-abc123/real-node")  # what the test fixtures make
    assert realnode.socket_path(short) == short / "containerd" / "containerd.sock"
    assert realnode.kubelet_root(short) == short / "kubelet" / "root"
    deep = Path("/tmp/pytest-of-root/pytest-19/test_demo_serves_smollm2_on_a_0/demo/cluster/real-node")
    root = realnode.socket_root(deep)
    assert root.parent == Path("/run") and root.name.startswith("slm-node-")
    assert realnode.socket_root(deep) == root  # the same folder for the same state, at start and stop
    assert realnode.socket_root(deep / "other") != root
    # containerd's ".ttrpc" socket and kubelet's deepest ones fit in 107 bytes.
    assert len(f"{realnode.socket_path(deep)}.ttrpc") <= 107
    assert len(f"{realnode.kubelet_root(deep)}/plugins_registry/kubernetes.io-csi-123456789.sock") <= 107
    assert len(f"{realnode.kubelet_root(short)}/plugins_registry/kubernetes.io-csi-123456789.sock") <= 107
    assert f'address = "{realnode.socket_path(deep)}"' in realnode._containerd_config(deep)


def test_a_failed_start_leaves_pid_files_that_stop_finds(tmp_path: Path) -> None:
    import subprocess
    import sys

    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--config={tmp_path}/x"])
    try:
        # Until the child has exec'd, /proc shows the parent's command line (a busy machine).
        cmdline = Path(f"/proc/{ours.pid}/cmdline")
        for _ in range(500):
            if f"--config={tmp_path}/x".encode() in cmdline.read_bytes():
                break
            time.sleep(0.01)
        (tmp_path / "kubelet.pid").write_text(str(ours.pid))
        (tmp_path / "kube-proxy.pid").write_text(str(os.getpid()))  # a live PID that is not ours
        (tmp_path / "containerd.pid").write_text("999999999")  # long gone
        assert realnode._recorded_pids(tmp_path, {}) == {"kubelet": ours.pid}
        assert realnode._recorded_pids(tmp_path, {"kubelet": ours.pid}) == {"kubelet": ours.pid}
    finally:
        ours.kill()
        ours.wait()
