#!/usr/bin/env python3
"""A real local Kubernetes control plane without Docker.

Starts etcd, kube-apiserver (TLS, RBAC, admission with PodSecurity),
kube-controller-manager, kube-scheduler and kwok on loopback, on free ports, from
the binaries that ``hack/build-k8s-bins.sh`` builds. Registers fake nodes from a
data file, a default StorageClass and a pool of PersistentVolumes, so that
Deployments run, Jobs complete and PVCs bind.

    python hack/localcluster.py up [--state-dir DIR] [--nodes FILE] [--real-node|--no-real-node]
    python hack/localcluster.py down [--state-dir DIR]
    python hack/localcluster.py status [--state-dir DIR]

With a real node (``realnode.py``: containerd, kubelet, kube-proxy on a fenced
bridge; the default wherever it can run, and always with ``CI=true``), the
apiserver listens on the bridge address so pods reach it. ``SLM_REAL_NODE=0``
starts the kwok nodes alone.

Needs only the standard library and PyYAML (for node files). The test fixtures
import it (``tests/k8s/conftest.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import realnode

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".cluster"
DEFAULT_NODES_FILE = REPO_ROOT / "hack" / "nodes" / "default.yaml"
PROJECT_STAGES_FILE = REPO_ROOT / "hack" / "kwok" / "slm-stages.yaml"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-k8s-bins.sh"
CONTEXT_NAME = "slm-local"
STORAGE_CLASS = "standard"
# Components in start order; stopped in reverse (the real node's, when there is one, first).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# The uid the runtime and fetch images run as; pool volumes must be writable by it.
RUNTIME_UID = 65532


def log(message: str) -> None:
    print(f"[localcluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    """The control plane could not be started or reached; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_binaries() -> Path:
    """Build or reuse the control-plane binaries; returns their folder."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(
            f"building the control-plane binaries failed (exit {result.returncode}); see above"
        )
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*(free_port() for _ in range(6)))


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


POOL_KINDS = (
    ("ReadWriteOnce", "20Gi"),
    ("ReadWriteOnce", "200Gi"),
    ("ReadWriteMany", "20Gi"),
    ("ReadWriteMany", "200Gi"),
)


def pool_kind(mode: str, size: str) -> str:
    return f"{'rwo' if mode == 'ReadWriteOnce' else 'rwx'}-{size.lower()}"


def fresh_volume_dir(path: Path) -> None:
    """An empty folder that the runtime's uid can write (fsGroup does not apply to hostPath)."""
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    path.chmod(0o777)


def persistent_volume(mode: str, size: str, state_dir: Path) -> dict[str, Any]:
    kind = pool_kind(mode, size)
    suffix = os.urandom(4).hex()
    fresh_volume_dir(state_dir / "volumes" / f"{kind}-{suffix}")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pool-{kind}-{suffix}", "labels": {"slm.dev/pool": kind}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": [mode],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {
                "path": str(state_dir / "volumes" / f"{kind}-{suffix}"),
                "type": "DirectoryOrCreate",
            },
        },
    }


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        # Immediate: claims bind as soon as they are created, with no pod needed.
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Retain",
    }


def with_node_defaults(node: dict[str, Any]) -> dict[str, Any]:
    """Fill in what every kubelet reports, so node files list only what differs."""
    node = json.loads(json.dumps(node))
    meta = node.setdefault("metadata", {})
    name = meta["name"]
    labels = meta.setdefault("labels", {})
    labels.setdefault("kubernetes.io/hostname", name)
    labels.setdefault("kubernetes.io/os", "linux")
    labels.setdefault("kubernetes.io/arch", "amd64")
    labels.setdefault("type", "kwok")
    annotations = meta.setdefault("annotations", {})
    annotations.setdefault("kwok.x-k8s.io/node", "fake")
    annotations.setdefault("node.alpha.kubernetes.io/ttl", "0")
    status = node.setdefault("status", {})
    status.setdefault("capacity", {"cpu": "8", "memory": "32Gi", "pods": "110"})
    status.setdefault("allocatable", dict(status["capacity"]))
    status.setdefault(
        "nodeInfo",
        {
            "architecture": labels["kubernetes.io/arch"],
            "operatingSystem": "linux",
            "kubeletVersion": "fake",
            "kubeProxyVersion": "fake",
        },
    )
    return node


def node_is_schedulable(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints", [])
    not_ready_taint = any(t.get("key", "").startswith("node.kubernetes.io/not-ready") for t in taints)
    return ready and not not_ready_taint


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


# --- PKI -----------------------------------------------------------------------------
def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=slm-local-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (pki / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1,"
        f"IP:{realnode.NODE_IP}\n"
    )
    (pki / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    )
    sign_cert(pki, "apiserver", "/CN=kube-apiserver", "server.ext")
    sign_client_cert(pki, "admin", "/O=system:masters/CN=slm-local-admin")
    run("genrsa", "-out", "sa.key", "2048")
    run("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def sign_cert(pki: Path, name: str, subject: str, ext: str) -> None:
    """``name``.key and ``name``.crt, signed by the local CA."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
    )
    run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", ext, "-out", f"{name}.crt")  # fmt: skip


def sign_client_cert(pki: Path, name: str, subject: str) -> None:
    """A client certificate: O= groups, CN= user name (the x509 authenticator's mapping)."""
    sign_cert(pki, name, subject, "client.ext")


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def write_audit_policy(state_dir: Path) -> Path:
    path = state_dir / "audit-policy.json"
    path.write_text(json.dumps(AUDIT_POLICY, indent=2))
    return path


def read_audit_log(state_dir: Path, user: str) -> list[dict[str, Any]]:
    """Audit events (metadata level) of requests made by ``user``, oldest first."""
    path = state_dir / "audit.log"
    if not path.exists():
        return []
    events: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("user", {}).get("username") == user:
            events.append(event)
    return events


def token_kubeconfig(cluster: LocalCluster, path: Path, token: str, namespace: str = "default") -> Path:
    """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.state_dir / "pki" / "ca.crt"),
                },
            }
        ],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [
            {
                "name": CONTEXT_NAME,
                "context": {"cluster": CONTEXT_NAME, "user": "token", "namespace": namespace},
            }
        ],
        "current-context": CONTEXT_NAME,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def write_kubeconfig(path: Path, server: str, pki: Path, user: str = "admin") -> None:
    # JSON is valid YAML, and kubeconfig loaders accept it.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT_NAME,
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "slm-local-admin",
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": CONTEXT_NAME,
                "context": {"cluster": CONTEXT_NAME, "user": "slm-local-admin", "namespace": "default"},
            }
        ],
        "current-context": CONTEXT_NAME,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


# --- processes -----------------------------------------------------------------------
def start_process(name: str, argv: list[str], state_dir: Path) -> int:
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        # A new session: the process outlives this script and is stopped by PID.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    (state_dir / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


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


def http_status(url: str, context: ssl.SSLContext | None = None) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0


def tail(state_dir: Path, name: str, lines: int = 25) -> str:
    path = state_dir / "logs" / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def client_ssl_context(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def insecure_ssl_context() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a self-signed
    # certificate of their own; only loopback liveness is checked with it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def want_real_node() -> bool:
    """SLM_REAL_NODE=1/0 decides; otherwise a real node wherever one can run, and always in CI."""
    value = os.environ.get("SLM_REAL_NODE", "").strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    return os.environ.get("CI") == "true" or realnode.unavailable_reason() is None


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
    pki = state_dir / "pki"
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
        make_pki(pki)
        write_kubeconfig(kubeconfig, server, pki)
        save(cluster, ports)

        log(f"starting etcd on 127.0.0.1:{ports.etcd_client}")
        etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        cluster.pids["etcd"] = start_process("etcd", [
            str(bin_dir / "etcd"), "--name=node0", f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=node0={peer_url}", "--listen-metrics-urls=",
            "--unsafe-no-fsync=true", "--auto-compaction-retention=1",
            "--quota-backend-bytes=2147483648", "--log-level=warn",
        ], state_dir)  # fmt: skip
        save(cluster, ports)
        wait_http_ok("etcd", f"{etcd_url}/health", state_dir, cluster.pids["etcd"], None)

        log(f"starting kube-apiserver on {server}")
        cluster.pids["kube-apiserver"] = start_process("kube-apiserver", [
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            f"--bind-address={host}", f"--advertise-address={host}", f"--secure-port={ports.apiserver}",
            # A loopback address in the `kubernetes` Endpoints would be rejected; the bridge
            # address is what pods (the operator's) reach the apiserver on.
            f"--endpoint-reconciler-type={'lease' if real_node else 'none'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/16",  # room for thousands of Services
            "--authorization-mode=Node,RBAC",
            # PodSecurity is among the default admission plugins; ServiceAccount is off
            # (as in envtest) to avoid "serviceaccount default not found" races.
            # ServiceAccount admission mounts tokens into pods (the operator's pod needs one);
            # the `namespace` fixture waits for each new namespace's default ServiceAccount.
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,"
            "DefaultStorageClass,StorageObjectInUseProtection,ResourceQuota,TaintNodesByCondition,Priority,"
            "DefaultTolerationSeconds,ValidatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            "--allow-privileged=true", "--profiling=false", "--v=1",
            # Requests made as a ServiceAccount are audited (metadata only), so tests can
            # check which permissions a component really uses.
            f"--audit-policy-file={write_audit_policy(state_dir)}",
            f"--audit-log-path={state_dir / 'audit.log'}", "--audit-log-format=json",
            "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        ], state_dir)  # fmt: skip
        save(cluster, ports)
        wait_http_ok("kube-apiserver", f"{server}/readyz", state_dir, cluster.pids["kube-apiserver"],
                     client_ssl_context(pki), timeout=180)  # fmt: skip

        log("starting kube-controller-manager")
        cluster.pids["kube-controller-manager"] = start_process("kube-controller-manager", [
            str(bin_dir / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={ports.controller_manager}", "--leader-elect=false",
            "--controllers=*", f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            # React to garbage quickly: GC re-reads discovery (new CRDs) every 30s by default.
            "--concurrent-gc-syncs=10", "--v=1",
        ], state_dir)  # fmt: skip
        save(cluster, ports)

        log("starting kube-scheduler")
        cluster.pids["kube-scheduler"] = start_process("kube-scheduler", [
            str(bin_dir / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1", f"--secure-port={ports.scheduler}", "--leader-elect=false", "--v=1",
        ], state_dir)  # fmt: skip
        save(cluster, ports)

        log("starting kwok")
        cluster.pids["kwok"] = start_process("kwok", [
            str(bin_dir / "kwok"), f"--kubeconfig={kubeconfig}",
            f"--config={bin_dir / 'kwok-stages.yaml'}", f"--config={PROJECT_STAGES_FILE}",
            # Only the fake nodes: the real node has a kubelet of its own.
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40", f"--cidr={realnode.FAKE_POD_CIDR}",
            f"--server-address=127.0.0.1:{ports.kwok}",
        ], state_dir)  # fmt: skip
        save(cluster, ports)
        insecure = insecure_ssl_context()
        wait_http_ok("kube-controller-manager", f"https://127.0.0.1:{ports.controller_manager}/healthz",
                     state_dir, cluster.pids["kube-controller-manager"], insecure)  # fmt: skip
        wait_http_ok("kube-scheduler", f"https://127.0.0.1:{ports.scheduler}/healthz",
                     state_dir, cluster.pids["kube-scheduler"], insecure)  # fmt: skip
        wait_http_ok("kwok", f"http://127.0.0.1:{ports.kwok}/healthz", state_dir, cluster.pids["kwok"], None)

        log("registering storage and fake nodes")
        cluster.apply([storage_class()])
        cluster.ensure_volume_pool()
        nodes = load_node_file(nodes_file)
        cluster.add_nodes(nodes)
        cluster.wait_nodes_ready([n["metadata"]["name"] for n in nodes])
        wait_default_service_account(cluster)
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


def wait_default_service_account(cluster: LocalCluster, timeout: float = 60) -> None:
    cluster.wait_default_service_account("default", timeout)


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
        if pid is None or not pid_alive(pid):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            log(f"{name} (pid {pid}) ignored SIGTERM; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Reap it when it is our child (it is when `up` ran in this process).
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


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


@contextlib.contextmanager
def running(state_dir: Path, nodes_file: Path = DEFAULT_NODES_FILE) -> Iterator[LocalCluster]:
    cluster = up(state_dir, nodes_file)
    try:
        yield cluster
    finally:
        down(state_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
            cluster = up(args.state_dir, args.nodes, real_node=args.real_node)
            print(f"KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            down(args.state_dir)
        else:
            cluster = load(args.state_dir.resolve())
            if cluster is None:
                print("not running")
                return 1
            for name, pid in {**cluster.pids, **cluster.real_node_pids}.items():
                print(f"{name:26} pid {pid:<8} {'running' if pid_alive(pid) else 'STOPPED'}")
            print(f"KUBECONFIG={cluster.kubeconfig}")
    except ClusterError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
