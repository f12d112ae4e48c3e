"""A real local Kubernetes control plane without Docker: start it, stop it, and the handle on it.

Over 400 lines: the handle, start, stop and command line share one state file and one error; the
components' commands, the certificates, the objects and the process helpers live beside it.

Starts etcd, kube-apiserver (TLS, RBAC, admission with PodSecurity), kube-controller-manager,
kube-scheduler and kwok (``controlplane``) on loopback, on free ports, from the binaries that
``hack/build-k8s-bins.sh`` builds. Registers fake nodes from a data file, a default StorageClass
and a pool of PersistentVolumes (``cluster_objects``), so that Deployments run, Jobs complete and
PVCs bind.

    python -m slm_dev.cluster up [--state-dir DIR] [--nodes FILE] [--real-node|--no-real-node]
    python -m slm_dev.cluster down [--state-dir DIR]
    python -m slm_dev.cluster status [--state-dir DIR]
    python -m slm_dev.cluster bins

With a real node (``realnode``: containerd, kubelet, kube-proxy on a fenced bridge; the default
wherever it can run, and always with ``CI=true``), the apiserver listens on the bridge address so
pods reach it. ``SLM_REAL_NODE=0`` starts the kwok nodes alone.

Standard library only, but for PyYAML to read node files: ``make cluster-down`` runs it without
the virtual environment. The test fixtures (``tests/k8s/conftest.py``), the demo and the scale
benchmark use ``up``, ``down``, ``load`` and ``LocalCluster``.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_dev import auth, controlplane, realnode
from slm_dev.cluster_objects import (
    POOL_KINDS,
    fresh_volume_dir,
    node_is_schedulable,
    persistent_volume,
    pool_kind,
    storage_class,
    with_node_defaults,
)
from slm_dev.controlplane import COMPONENTS, Ports
from slm_dev.paths import HACK_DIR, REPO_ROOT
from slm_dev.processes import pid_alive, start_process, stop_pid, tail

DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"
DEFAULT_NODES_FILE = HACK_DIR / "nodes" / "default.yaml"
BUILD_SCRIPT = HACK_DIR / "build-k8s-bins.sh"


def log(message: str) -> None:
    print(f"[localcluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    """The control plane could not be started or reached; the message says why."""


@dataclass
class LocalCluster:
    """Handle on a started (or reused) control plane."""

    state_dir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    pids: dict[str, int] = field(default_factory=dict)
    # The real node's processes (containerd, kubelet, kube-proxy); empty without one.
    real_node_pids: dict[str, int] = field(default_factory=dict)

    @property
    def real_node(self) -> str | None:
        """The name of the real node, or None when this cluster has only kwok nodes."""
        return realnode.NODE_NAME if self.real_node_pids else None

    # --- kubectl -----------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, manifests: str | Sequence[dict[str, Any]], *extra: str) -> None:
        text = manifests if isinstance(manifests, str) else "\n---\n".join(json.dumps(m) for m in manifests)
        self.kubectl("apply", "-f", "-", *extra, input=text)

    def wait_default_service_account(self, namespace: str, timeout: float = 60) -> None:
        """Pods are admitted (ServiceAccount admission) once the namespace's default account exists."""
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the default ServiceAccount of {namespace} never appeared "
                    "(is kube-controller-manager running?)"
                )
            time.sleep(0.2)

    # --- fake nodes ----------------------------------------------------------------
    def add_nodes(self, nodes: Sequence[dict[str, Any]]) -> None:
        """Create fake nodes; kwok takes them over and marks them Ready."""
        for node in nodes:
            self.kubectl("create", "-f", "-", input=json.dumps(with_node_defaults(node)))

    def wait_nodes_ready(self, names: Sequence[str], timeout: float = 90) -> None:
        """Wait until kwok reports each node Ready and the not-ready taint is gone."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for item in self.kubectl_json("get", "nodes")["items"]:
                name = item["metadata"]["name"]
                if name in pending and node_is_schedulable(item):
                    pending.discard(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes not Ready after {timeout:.0f}s: {sorted(pending)}")
            time.sleep(0.5)

    # --- storage -------------------------------------------------------------------
    def ensure_volume_pool(self, per_kind: int = 12) -> None:
        """Keep at least ``per_kind`` Available PVs of each access mode and size.

        There is no provisioner, so pre-created PVs stand in for one. A released PV
        (its claim deleted) is recycled by clearing its claimRef, as a real
        provisioner would delete it and make a fresh one.
        """
        pvs = self.kubectl_json("get", "pv")["items"]
        counts: dict[str, int] = {}
        recycled: list[str] = []
        for pv in pvs:
            kind = pv["metadata"].get("labels", {}).get("slm.dev/pool")
            if not kind:
                continue
            phase = pv.get("status", {}).get("phase")
            if phase == "Released":
                recycled.append(pv["metadata"]["name"])
                counts[kind] = counts.get(kind, 0) + 1
            elif phase in ("Available", "Pending", None):
                counts[kind] = counts.get(kind, 0) + 1
        for name in recycled:
            pv = next(p for p in pvs if p["metadata"]["name"] == name)
            # A provisioner would hand out a fresh volume: empty the folder for the next claim.
            fresh_volume_dir(Path(pv["spec"]["hostPath"]["path"]))
            self.kubectl(
                "patch",
                "pv",
                name,
                "--type=json",
                "-p",
                '[{"op":"remove","path":"/spec/claimRef"}]',
                check=False,
            )
        new: list[dict[str, Any]] = []
        for mode, size in POOL_KINDS:
            kind = pool_kind(mode, size)
            missing = per_kind - counts.get(kind, 0)
            new.extend(persistent_volume(mode, size, self.state_dir) for _ in range(max(missing, 0)))
        if new:
            self.kubectl("create", "-f", "-", input="\n---\n".join(json.dumps(pv) for pv in new))


def token_kubeconfig(cluster: LocalCluster, path: Path, token: str, namespace: str = "default") -> Path:
    """A kubeconfig for ``cluster`` that authenticates with a bearer token (e.g. a ServiceAccount's)."""
    return auth.write_token_kubeconfig(path, cluster.server, cluster.state_dir / "pki", token, namespace)


def load_node_file(path: Path) -> list[dict[str, Any]]:
    """Read a multi-document YAML file of Nodes."""
    import yaml  # from the project's environment; imported here so `down` needs nothing

    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    except (OSError, yaml.YAMLError) as error:
        raise ClusterError(f"cannot read node file {path}: {error}") from error
    for doc in documents:
        if doc.get("kind") != "Node" or not doc.get("metadata", {}).get("name"):
            raise ClusterError(
                f"{path}: every document must be a Node with metadata.name, got {doc.get('kind')!r}"
            )
    return documents


# --- start -----------------------------------------------------------------------------
def ensure_binaries() -> Path:
    """Build or reuse the control-plane binaries; returns their folder."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(
            f"building the control-plane binaries failed (exit {result.returncode}); see above"
        )
    return Path(result.stdout.strip().splitlines()[-1])


def wait_http_ok(
    name: str, url: str, state_dir: Path, pid: int, context: ssl.SSLContext | None, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ClusterError(
                f"{name} exited during start-up; last lines of its log:\n{tail(state_dir, name)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.3)
    raise ClusterError(
        f"{name} not healthy at {url} after {timeout:.0f}s ({last_error}); log:\n{tail(state_dir, name)}"
    )


def want_real_node() -> bool:
    """SLM_REAL_NODE=1/0 decides; otherwise a real node wherever one can run, and always in CI."""
    value = os.environ.get("SLM_REAL_NODE", "").strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    return os.environ.get("CI") == "true" or realnode.unavailable_reason() is None


def _start_control_plane(cluster: LocalCluster, ports: Ports, host: str, real_node: bool) -> None:
    """Start the five components in order, each recorded in the state file as it starts (so that
    `down` finds it after a failed start), and wait until each is healthy."""
    state_dir, bin_dir = cluster.state_dir, cluster.bin_dir

    def start(name: str, argv: list[str]) -> int:
        cluster.pids[name] = start_process(name, argv, state_dir)
        save(cluster, ports)
        return cluster.pids[name]

    log(f"starting etcd on 127.0.0.1:{ports.etcd_client}")
    pid = start("etcd", controlplane.etcd_command(bin_dir, state_dir, ports))
    wait_http_ok("etcd", f"{ports.etcd_url}/health", state_dir, pid, None)

    log(f"starting kube-apiserver on {cluster.server}")
    pid = start("kube-apiserver", controlplane.apiserver_command(bin_dir, state_dir, ports, host, real_node))
    context = auth.client_ssl_context(state_dir / "pki")
    wait_http_ok("kube-apiserver", f"{cluster.server}/readyz", state_dir, pid, context, timeout=180)

    log("starting kube-controller-manager")
    start("kube-controller-manager", controlplane.controller_manager_command(bin_dir, state_dir, ports))
    log("starting kube-scheduler")
    start("kube-scheduler", controlplane.scheduler_command(bin_dir, state_dir, ports))
    log("starting kwok")
    start("kwok", controlplane.kwok_command(bin_dir, state_dir, ports, realnode.FAKE_POD_CIDR))
    insecure = auth.insecure_ssl_context()
    for name, url, tls in (
        ("kube-controller-manager", f"https://127.0.0.1:{ports.controller_manager}/healthz", insecure),
        ("kube-scheduler", f"https://127.0.0.1:{ports.scheduler}/healthz", insecure),
        ("kwok", f"http://127.0.0.1:{ports.kwok}/healthz", None),
    ):
        wait_http_ok(name, url, state_dir, cluster.pids[name], tls)


def up(
    state_dir: Path, nodes_file: Path, bin_dir: Path | None = None, real_node: bool | None = None
) -> LocalCluster:
    """Start every component, register nodes and storage; return a handle."""
    started = time.monotonic()
    state_dir = state_dir.resolve()
    if real_node is None:
        real_node = want_real_node()
    if (state_dir / "cluster.json").exists():
        existing = load(state_dir)
        if existing is not None and all(pid_alive(pid) for pid in existing.pids.values()):
            log(f"already running ({state_dir}); reusing it")
            return existing
        log("found a stale state folder; stopping what is left of it")
        down(state_dir)
    if real_node:
        reason = realnode.unavailable_reason()
        if reason:
            raise ClusterError(f"{reason}; set SLM_REAL_NODE=0 for kwok nodes only")
        try:
            realnode.ensure_host_tools()
        except realnode.RealNodeError as error:
            raise ClusterError(str(error)) from error
    bin_dir = bin_dir or ensure_binaries()
    state_dir.mkdir(parents=True, exist_ok=True)
    ports = Ports.pick()
    host = "127.0.0.1"
    if real_node:
        try:
            host = realnode.prepare_network(state_dir)
        except realnode.RealNodeError as error:
            realnode.restore_host(state_dir)
            raise ClusterError(str(error)) from error
    server = f"https://{host}:{ports.apiserver}"
    kubeconfig = state_dir / "kubeconfig"
    cluster = LocalCluster(state_dir=state_dir, bin_dir=bin_dir, kubeconfig=kubeconfig, server=server)
    try:
        log("writing certificates")
        auth.make_pki(state_dir / "pki", realnode.NODE_IP)
        auth.write_kubeconfig(kubeconfig, server, state_dir / "pki")
        save(cluster, ports)
        _start_control_plane(cluster, ports, host, real_node)

        log("registering storage and fake nodes")
        cluster.apply([storage_class()])
        cluster.ensure_volume_pool()
        nodes = load_node_file(nodes_file)
        cluster.add_nodes(nodes)
        cluster.wait_nodes_ready([n["metadata"]["name"] for n in nodes])
        cluster.wait_default_service_account("default")
        if real_node:
            node_started = time.monotonic()
            realnode.start(cluster, cluster.real_node_pids)  # filled as each process starts
            save(cluster, ports)
            cluster.wait_nodes_ready([realnode.NODE_NAME], timeout=120)
            log(f"real node {realnode.NODE_NAME} Ready in {time.monotonic() - node_started:.1f}s")
    except BaseException as error:
        log(f"start-up failed; logs are in {state_dir / 'logs'}; stopping what was started")
        if real_node:
            realnode.stop(state_dir, cluster.real_node_pids, bin_dir)
        stop_processes(cluster.pids)
        if real_node:
            realnode.restore_host(state_dir)
        if isinstance(error, realnode.RealNodeError):
            raise ClusterError(str(error)) from error
        raise
    extra = f" + real node {realnode.NODE_NAME}" if real_node else ""
    log(
        f"control plane up in {time.monotonic() - started:.1f}s: {len(nodes)} kwok nodes{extra}, state in {state_dir}"
    )
    return cluster


# --- state file, stop --------------------------------------------------------------------
def save(cluster: LocalCluster, ports: Ports) -> None:
    data = {
        "bin_dir": str(cluster.bin_dir),
        "kubeconfig": str(cluster.kubeconfig),
        "server": cluster.server,
        "pids": cluster.pids,
        "real_node_pids": cluster.real_node_pids,
        "ports": ports.__dict__,
    }
    (cluster.state_dir / "cluster.json").write_text(json.dumps(data, indent=2))


def load(state_dir: Path) -> LocalCluster | None:
    """The handle on the cluster whose state is in ``state_dir``, or None when there is none."""
    path = state_dir / "cluster.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return LocalCluster(
        state_dir=state_dir,
        bin_dir=Path(data["bin_dir"]),
        kubeconfig=Path(data["kubeconfig"]),
        server=data["server"],
        pids={k: int(v) for k, v in data["pids"].items()},
        real_node_pids={k: int(v) for k, v in data.get("real_node_pids", {}).items()},
    )


def stop_processes(pids: dict[str, int], timeout: float = 20) -> None:
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        if pid is not None and stop_pid(pid, timeout):
            log(f"{name} (pid {pid}) ignored SIGTERM; killed it")


def down(state_dir: Path) -> None:
    state_dir = state_dir.resolve()
    cluster = load(state_dir)
    if cluster is None:
        pid_files = list(state_dir.glob("*.pid")) if state_dir.exists() else []
        pids = {p.stem: int(p.read_text()) for p in pid_files}
    else:
        pids = cluster.pids
    real_node = (state_dir / "host-before.json").exists()
    if real_node:
        log("stopping the real node: kube-proxy, kubelet, its containers, containerd")
        realnode.stop(
            state_dir, cluster.real_node_pids if cluster else {}, cluster.bin_dir if cluster else None
        )
    if pids:
        log(f"stopping {', '.join(name for name in reversed(COMPONENTS) if name in pids)}")
        stop_processes(pids)
    if real_node:
        log("undoing the real node's changes to this machine")
        realnode.restore_host(state_dir)
    if state_dir.exists():
        # Only a folder this script made: never remove anything else by mistake.
        if not ((state_dir / "cluster.json").exists() or (state_dir / "pki").exists() or pids):
            raise ClusterError(
                f"{state_dir} does not look like a local cluster state folder; not removing it"
            )
        subprocess.run(["rm", "-rf", str(state_dir)], check=True)
    log("stopped and removed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slm_dev.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("up", "down", "status", "bins"))
    parser.add_argument(
        "--state-dir", type=Path, default=Path(os.environ.get("SLM_CLUSTER_DIR", DEFAULT_STATE_DIR))
    )
    parser.add_argument("--nodes", type=Path, default=DEFAULT_NODES_FILE, help="multi-document YAML of Nodes")
    parser.add_argument(
        "--real-node",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also start a real node (default: where it can run; SLM_REAL_NODE=0/1 decides too)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "bins":
            print(ensure_binaries())
        elif args.command == "up":
            started = up(args.state_dir, args.nodes, real_node=args.real_node)
            print(f"KUBECONFIG={started.kubeconfig}")
        elif args.command == "down":
            down(args.state_dir)
        else:
            found = load(args.state_dir.resolve())
            if found is None:
                print("not running")
                return 1
            for name, pid in {**found.pids, **found.real_node_pids}.items():
                print(f"{name:26} pid {pid:<8} {'running' if pid_alive(pid) else 'STOPPED'}")
            print(f"KUBECONFIG={found.kubeconfig}")
    except ClusterError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
