"""One real node for the local cluster: containerd, runc, a CNI bridge, kubelet, kube-proxy.

Over 400 lines: one node's lifecycle around one state folder (host tools, network, the four
components' configuration, start, stop, restore), each part short.

The kwok nodes prove placement; this node proves that our images run. It joins the
control plane that ``slm_dev.cluster`` starts, as a CPU node labelled and tainted
``slm.dev/real-node`` so that only workloads asking for it land there (the tests
and the demo do; everything else keeps running on kwok).

Network: a bridge ``slm0`` with a pod range private to this machine. The apiserver
listens on the bridge address, so pods reach it (the operator runs as a pod) and
so do local clients. Pod traffic is fenced: pods reach each other and this host,
nothing beyond it; their resolv.conf names no server; kwok's fake pod addresses
and the Service range are routed nowhere off the machine.

Every side effect is recorded first (``hoststate.snapshot``) and undone by
``stop`` (``hoststate.restore``). One real node per machine: a lock file says
which cluster holds it.

Needs root, cgroups (v1 or v2), and Debian's ``containerd runc
containernetworking-plugins iptables conntrack iproute2`` (installed when missing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm_dev import auth, hoststate
from slm_dev.controlplane import SERVICE_CIDR
from slm_dev.image_cache import load_images
from slm_dev.image_parts import PAUSE_IMAGE
from slm_dev.processes import free_port, http_status, pid_alive, start_process, stop_pid, tail

if TYPE_CHECKING:
    from slm_dev.cluster import LocalCluster

NODE_NAME = "real-cpu-0"
BRIDGE = "slm0"
POD_SUBNET = "10.89.0.0/24"
NODE_IP = "10.89.0.1"
# kwok hands fake pods addresses from this range (its --cidr); nothing answers there.
FAKE_POD_CIDR = "10.244.0.0/16"
REAL_NODE_LABEL = "slm.dev/real-node"
INSTANCE_TYPE = "local-real"
FENCE_CHAIN = "SLM-FENCE"
LOCK_FILE = Path("/run/slm-real-node.lock")
CNI_BIN_DIR = Path("/usr/lib/cni")
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
# Tool -> the Debian package that provides it.
HOST_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    str(CNI_BIN_DIR / "bridge"): "containernetworking-plugins",
    "iptables": "iptables",
    "conntrack": "conntrack",
    "ip": "iproute2",
}


class RealNodeError(RuntimeError):
    """The real node could not be started; the message says why and what to do."""


def log(message: str) -> None:
    print(f"[realnode {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def toleration() -> dict[str, str]:
    """What a pod adds to be allowed on the real node."""
    return {"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}


def node_selector() -> dict[str, str]:
    return {REAL_NODE_LABEL: "true"}


def unavailable_reason() -> str | None:
    """Why a real node cannot run on this machine, or None when it can."""
    if os.uname().sysname != "Linux":
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (kubelet, containerd and the CNI bridge change host state)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "a real node needs cgroups mounted at /sys/fs/cgroup"
    return None


def missing_tools() -> list[str]:
    return sorted(
        {pkg for tool, pkg in HOST_TOOLS.items() if not (Path(tool).exists() or shutil.which(tool))}
    )


def ensure_host_tools() -> None:
    """Install the Debian packages the node needs when they are missing."""
    packages = missing_tools()
    if not packages:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RealNodeError(f"missing packages for the real node: {' '.join(packages)} (install them)")
    log(f"installing {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RealNodeError(
                f"could not install {' '.join(packages)} ({' '.join(argv[:2])} exited {result.returncode}: "
                f"{result.stderr.strip()[-500:]}); install them and retry"
            )
    if missing_tools():
        raise RealNodeError(f"still missing after apt-get: {' '.join(missing_tools())}")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


# --- network -------------------------------------------------------------------------------------
def _claim_lock(state_dir: Path) -> None:
    if LOCK_FILE.exists():
        holder = LOCK_FILE.read_text().strip()
        if Path(holder).exists() and holder != str(state_dir):
            raise RealNodeError(
                f"the real node is held by the local cluster in {holder}; stop it first "
                f"(`python -m slm_dev.cluster down --state-dir {holder}`, or `make demo-down`)"
            )
        log(f"taking over a stale real-node lock of {holder}")
    LOCK_FILE.write_text(str(state_dir))


def prepare_network(state_dir: Path) -> str:
    """Record the host state, then make the bridge and the fence; returns the node address.

    Runs before the apiserver starts, because the apiserver listens on the bridge.
    """
    _claim_lock(state_dir)
    before = state_dir / "host-before.json"
    if not before.exists():
        hoststate.save(before, hoststate.snapshot())
    if BRIDGE in hoststate.snapshot()["links"]:
        log(f"removing a leftover bridge {BRIDGE}")
        _run("ip", "link", "del", BRIDGE, check=False)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/{POD_SUBNET.split('/')[1]}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # Fake pod addresses answer nowhere: drop them here instead of sending them to the gateway.
    _run("ip", "route", "add", "blackhole", FAKE_POD_CIDR)
    # A ClusterIP that kube-proxy has not translated stays on the bridge, never on eth0.
    _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE)
    for binary in ("iptables",):
        _run(binary, "-w", "-N", FENCE_CHAIN)
        # Pods talk to each other; nothing is forwarded from or to the bridge otherwise.
        _run(binary, "-w", "-A", FENCE_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
        _run(binary, "-w", "-A", FENCE_CHAIN, "-i", BRIDGE, "-j", "DROP")
        _run(binary, "-w", "-A", FENCE_CHAIN, "-o", BRIDGE, "-j", "DROP")
        _run(binary, "-w", "-I", "FORWARD", "1", "-j", FENCE_CHAIN)
    # No IPv6 on the bridge at all.
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6").write_text("1")
    return NODE_IP


# --- configuration files -------------------------------------------------------------------------
def _containerd_config(state: Path) -> str:
    root = state / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket_path(state)}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this, runc cannot set oom_score_adj and no pod starts.
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{state / "cni" / "net.d"}"
  [{cri}.registry]
    config_path = ""
"""


def _cni_config(state: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "slm-local",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state / "cni" / "ipam"),
                },
            }
        ],
    }


def _kubelet_config(state: Path, ports: dict[str, int], ca: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet_healthz"],
        # The apiserver has no kubelet client certificate; kubelet listens only on the bridge.
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket_path(state)}",
        # No cluster DNS: pods get a resolv.conf that names no server, so no query leaves.
        "resolvConf": str(state / "kubelet" / "resolv.conf"),
        "podLogsDir": str(state / "kubelet" / "pod-logs"),
        "registerWithTaints": [{"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
        "maxPods": 60,
        "serializeImagePulls": False,
        # Images are imported, never pulled: never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "nodeStatusUpdateFrequency": "5s",
        # Pods are synced (a changed Secret volume rewritten) every 10 s instead of every minute:
        # the end-to-end test of a rotated API key waits for that.
        "syncFrequency": "10s",
        "rotateCertificates": False,
        "staticPodPath": "",
    }


def _kube_proxy_config(kubeconfig: Path, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_SUBNET,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{ports['proxy_healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
        # NodePorts only on the bridge address, never on eth0.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # Replies from a pod reached through a ClusterIP come back through the host even on the
        # same bridge (no br_netfilter here).
        "iptables": {"masqueradeAll": True, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        # 0 = leave the conntrack sysctls as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


# A unix socket's path holds at most 107 bytes. containerd adds ".ttrpc" to its socket's path, and
# kubelet makes sockets up to ~45 characters deep in its root folder (pod-resources/<random>,
# plugins_registry/..., device-plugins/kubelet.sock): both live under a short folder.
_SHORT_STATE_LIMIT = 48


def socket_root(state: Path) -> Path:
    """Where containerd's socket and kubelet's root folder live: the node's state folder, or, when
    its path is too long for their unix sockets (a deep pytest tmp_path), a folder under /run named
    after it (the same at start and at stop; removed by restore_host)."""
    if len(str(state)) <= _SHORT_STATE_LIMIT:
        return state
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    return Path("/run") / f"slm-node-{digest}"


def socket_path(state: Path) -> Path:
    return socket_root(state) / "containerd" / "containerd.sock"


def kubelet_root(state: Path) -> Path:
    return socket_root(state) / "kubelet" / "root"


def node_state(cluster_state: Path) -> Path:
    return cluster_state / "real-node"


# --- start ---------------------------------------------------------------------------------------
def start(cluster: LocalCluster, pids: dict[str, int] | None = None) -> dict[str, int]:
    """Start containerd, kubelet and kube-proxy against ``cluster``; returns their PIDs.

    ``pids`` is filled as each process starts, so a start that fails half-way (and its caller's
    clean-up) still knows what to stop.
    """
    state = node_state(cluster.state_dir)
    pki = cluster.state_dir / "pki"
    for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "kube-proxy"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    socket_path(state).parent.mkdir(parents=True, exist_ok=True)
    kubelet_root(state).mkdir(parents=True, exist_ok=True)
    auth.sign_client_cert(pki, "node", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
    auth.sign_client_cert(pki, "kube-proxy", "/CN=system:kube-proxy")
    node_kubeconfig = state / "kubelet" / "kubeconfig"
    proxy_kubeconfig = state / "kube-proxy" / "kubeconfig"
    auth.write_kubeconfig(node_kubeconfig, cluster.server, pki, user="node")
    auth.write_kubeconfig(proxy_kubeconfig, cluster.server, pki, user="kube-proxy")
    ports = {name: free_port() for name in ("kubelet", "kubelet_healthz", "proxy_healthz", "proxy_metrics")}
    (state / "containerd" / "config.toml").write_text(_containerd_config(state))
    (state / "cni" / "net.d" / "10-slm-local.conflist").write_text(json.dumps(_cni_config(state), indent=2))
    # The pod's own loopback: a query never leaves its network namespace. (A file with no
    # nameserver would not do: containerd then copies the host's resolv.conf.)
    (state / "kubelet" / "resolv.conf").write_text(RESOLV_CONF)
    (state / "kubelet" / "config.json").write_text(
        json.dumps(_kubelet_config(state, ports, pki / "ca.crt"), indent=2)
    )
    (state / "kube-proxy" / "config.json").write_text(
        json.dumps(_kube_proxy_config(proxy_kubeconfig, ports), indent=2)
    )
    (state / "ports.json").write_text(json.dumps(ports))
    if pids is None:
        pids = {}

    log("starting containerd")
    pids["containerd"] = start_process(
        "containerd",
        ["containerd", f"--config={state / 'containerd' / 'config.toml'}", "--log-level=warn"],
        cluster.state_dir,
    )
    _wait(lambda: _containerd_ready(state), 60, "containerd", cluster.state_dir, pids["containerd"])
    started = time.monotonic()
    loaded = load_images(str(socket_path(state)))
    log(
        f"loaded {len(loaded)} image(s) into containerd in {time.monotonic() - started:.1f}s: {', '.join(loaded)}"
    )
    if PAUSE_IMAGE not in loaded:
        raise RealNodeError(f"the sandbox image {PAUSE_IMAGE} is missing; run `make images`")

    log(f"starting kubelet as node {NODE_NAME} ({NODE_IP})")
    pids["kubelet"] = start_process(
        "kubelet",
        [
            str(cluster.bin_dir / "kubelet"),
            f"--config={state / 'kubelet' / 'config.json'}",
            f"--kubeconfig={node_kubeconfig}",
            f"--root-dir={kubelet_root(state)}",
            f"--cert-dir={state / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            f"--node-labels={REAL_NODE_LABEL}=true,node.kubernetes.io/instance-type={INSTANCE_TYPE}",
            "--v=1",
        ],
        cluster.state_dir,
    )
    log("starting kube-proxy")
    pids["kube-proxy"] = start_process(
        "kube-proxy",
        [str(cluster.bin_dir / "kube-proxy"), f"--config={state / 'kube-proxy' / 'config.json'}", "--v=1"],
        cluster.state_dir,
    )
    _wait(
        lambda: http_status(f"http://127.0.0.1:{ports['proxy_healthz']}/healthz") == 200,
        60,
        "kube-proxy",
        cluster.state_dir,
        pids["kube-proxy"],
    )
    return pids


def _containerd_ready(state: Path) -> bool:
    if not socket_path(state).exists():
        return False
    result = subprocess.run(
        ["ctr", "--address", str(socket_path(state)), "version"], capture_output=True, check=False
    )
    return result.returncode == 0


def _wait(probe: Callable[[], bool], timeout: float, name: str, cluster_state: Path, pid: int) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise RealNodeError(f"{name} exited; last lines of its log:\n{tail(cluster_state, name)}")
        if probe():
            return
        time.sleep(0.3)
    raise RealNodeError(f"{name} not ready after {timeout:.0f}s; log:\n{tail(cluster_state, name)}")


# --- stop ----------------------------------------------------------------------------------------
def _ctr(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", str(socket_path(state)), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _shim_pids(state: Path) -> list[int]:
    """containerd-shim processes serving our containerd (they outlive it by design)."""
    found: list[int] = []
    address = str(socket_path(state))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
            found.append(int(proc.name))
    return found


def _recorded_pids(cluster_state: Path, pids: dict[str, int]) -> dict[str, int]:
    """The node's processes: those given, and those whose pid file a start left behind (a start that
    failed before the cluster state was saved). A PID counts only while its command line still
    names this cluster's state folder, so a reused PID is never taken for ours."""
    found: dict[str, int] = {}
    for name in COMPONENTS:
        candidates = [pids[name]] if name in pids else []
        with contextlib.suppress(OSError, ValueError):
            candidates.append(int((cluster_state / f"{name}.pid").read_text().strip()))
        for pid in candidates:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(cluster_state).encode() in argv:
                found[name] = pid
                break
    return found


def stop(cluster_state: Path, pids: dict[str, int], bin_dir: Path | None) -> None:
    """Stop kube-proxy, kubelet, every container and containerd (the host state stays: see restore_host)."""
    state = node_state(cluster_state)
    pids = _recorded_pids(cluster_state, pids)
    if "kube-proxy" in pids:
        stop_pid(pids["kube-proxy"])
        if bin_dir is not None and (bin_dir / "kube-proxy").exists():
            subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, check=False)
    if "kubelet" in pids:
        stop_pid(pids["kubelet"])
    if "containerd" in pids and socket_path(state).exists():
        for line in _ctr(state, "tasks", "ls", "-q").stdout.split():
            _ctr(state, "tasks", "kill", "-s", "SIGKILL", line)
        deadline = time.monotonic() + 20
        while _ctr(state, "tasks", "ls", "-q").stdout.strip() and time.monotonic() < deadline:
            time.sleep(0.3)
    if "containerd" in pids:
        stop_pid(pids["containerd"])
    for pid in _shim_pids(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def restore_host(cluster_state: Path) -> list[str]:
    """Undo every side effect recorded before the node started; returns what is left over.

    Runs after the control plane stopped: the apiserver listens on the bridge this removes.
    """
    left: list[str] = []
    short = socket_root(node_state(cluster_state))
    extra = [short] if short != node_state(cluster_state) else []
    before = hoststate.load(cluster_state / "host-before.json")
    if before is not None:
        left = hoststate.restore(before, cluster_state, extra)  # unmounts under the short folder too
    for folder in extra:
        shutil.rmtree(folder, ignore_errors=True)
    if LOCK_FILE.exists() and LOCK_FILE.read_text().strip() == str(cluster_state):
        LOCK_FILE.unlink()
    if left:
        log("left over after stopping the real node:\n  " + "\n  ".join(left))
    return left
