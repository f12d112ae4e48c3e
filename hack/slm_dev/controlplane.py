"""The control plane's five processes and the command line each runs with: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok, on free loopback ports.

Standard library only: ``python -m slm_dev.cluster down`` runs without the virtual environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slm_dev import auth
from slm_dev.paths import HACK_DIR
from slm_dev.processes import free_port

# Components in start order; stopped in reverse (the real node's, when there is one, first).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Our kwok stages (a pod annotated kwok.slm.dev/fail fails), besides kwok's default ones.
PROJECT_STAGES_FILE = HACK_DIR / "kwok" / "slm-stages.yaml"
SERVICE_CIDR = "10.0.0.0/16"  # room for thousands of Services


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

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client}"


def etcd_command(bin_dir: Path, state_dir: Path, ports: Ports) -> list[str]:
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(bin_dir / "etcd"), "--name=node0", f"--data-dir={state_dir / 'etcd'}",
        f"--listen-client-urls={ports.etcd_url}", f"--advertise-client-urls={ports.etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=node0={peer_url}", "--listen-metrics-urls=",
        "--unsafe-no-fsync=true", "--auto-compaction-retention=1",
        "--quota-backend-bytes=2147483648", "--log-level=warn",
    ]  # fmt: skip


def apiserver_command(bin_dir: Path, state_dir: Path, ports: Ports, host: str, real_node: bool) -> list[str]:
    pki = state_dir / "pki"
    return [
        str(bin_dir / "kube-apiserver"), f"--etcd-servers={ports.etcd_url}",
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
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        # ServiceAccount admission mounts tokens into pods (the operator's pod needs one);
        # the tests' `namespace` fixture waits for each new namespace's default ServiceAccount.
        "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,"
        "DefaultStorageClass,StorageObjectInUseProtection,ResourceQuota,TaintNodesByCondition,Priority,"
        "DefaultTolerationSeconds,ValidatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        "--allow-privileged=true", "--profiling=false", "--v=1",
        # Requests made as a ServiceAccount are audited (metadata only), so tests can
        # check which permissions a component really uses.
        f"--audit-policy-file={auth.write_audit_policy(state_dir)}",
        f"--audit-log-path={state_dir / 'audit.log'}", "--audit-log-format=json",
        "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
    ]  # fmt: skip


def controller_manager_command(bin_dir: Path, state_dir: Path, ports: Ports) -> list[str]:
    pki = state_dir / "pki"
    return [
        str(bin_dir / "kube-controller-manager"), f"--kubeconfig={state_dir / 'kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={ports.controller_manager}", "--leader-elect=false",
        "--controllers=*", f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        # React to garbage quickly: GC re-reads discovery (new CRDs) every 30s by default.
        "--concurrent-gc-syncs=10", "--v=1",
    ]  # fmt: skip


def scheduler_command(bin_dir: Path, state_dir: Path, ports: Ports) -> list[str]:
    return [
        str(bin_dir / "kube-scheduler"), f"--kubeconfig={state_dir / 'kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={ports.scheduler}", "--leader-elect=false", "--v=1",
    ]  # fmt: skip


def kwok_command(bin_dir: Path, state_dir: Path, ports: Ports, fake_pod_cidr: str) -> list[str]:
    return [
        str(bin_dir / "kwok"), f"--kubeconfig={state_dir / 'kubeconfig'}",
        f"--config={bin_dir / 'kwok-stages.yaml'}", f"--config={PROJECT_STAGES_FILE}",
        # Only the fake nodes: the real node has a kubelet of its own.
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-lease-duration-seconds=40", f"--cidr={fake_pod_cidr}",
        f"--server-address=127.0.0.1:{ports.kwok}",
    ]  # fmt: skip
