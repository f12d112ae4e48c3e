"""Who the local control plane trusts and what it records: its CA and certificates (openssl), the
kubeconfigs that use them, the audit policy and the audit log.

Standard library only: ``python -m slm_dev.cluster down`` runs without the virtual environment.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

CONTEXT_NAME = "slm-local"

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def _openssl(pki: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)


def make_pki(pki: Path, node_ip: str) -> None:
    """The CA, the apiserver's serving certificate (also valid for ``node_ip``, where pods reach it),
    the admin's client certificate and the ServiceAccount signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(pki, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=slm-local-ca",
             "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (pki / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1,"
        f"IP:{node_ip}\n"
    )
    (pki / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    )
    sign_cert(pki, "apiserver", "/CN=kube-apiserver", "server.ext")
    sign_client_cert(pki, "admin", "/O=system:masters/CN=slm-local-admin")
    _openssl(pki, "genrsa", "-out", "sa.key", "2048")
    _openssl(pki, "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def sign_cert(pki: Path, name: str, subject: str, ext: str) -> None:
    """``name``.key and ``name``.crt, signed by the local CA."""
    _openssl(pki, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
             "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
    _openssl(pki, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "3650", "-extfile", ext, "-out", f"{name}.crt")  # fmt: skip


def sign_client_cert(pki: Path, name: str, subject: str) -> None:
    """A client certificate: O= groups, CN= user name (the x509 authenticator's mapping)."""
    sign_cert(pki, name, subject, "client.ext")


def client_ssl_context(pki: Path) -> ssl.SSLContext:
    """TLS to the apiserver as the admin."""
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


def _kubeconfig(
    server: str, ca: Path, user_name: str, user: dict[str, str], namespace: str
) -> dict[str, Any]:
    # JSON is valid YAML, and kubeconfig loaders accept it.
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [
            {
                "name": CONTEXT_NAME,
                "context": {"cluster": CONTEXT_NAME, "user": user_name, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT_NAME,
    }


def write_kubeconfig(path: Path, server: str, pki: Path, user: str = "admin") -> None:
    """A kubeconfig that authenticates with ``user``'s client certificate from ``pki``."""
    certificate = {"client-certificate": str(pki / f"{user}.crt"), "client-key": str(pki / f"{user}.key")}
    config = _kubeconfig(server, pki / "ca.crt", "slm-local-admin", certificate, "default")
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_token_kubeconfig(
    path: Path, server: str, pki: Path, token: str, namespace: str = "default"
) -> Path:
    """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's); only its owner
    may read it."""
    config = _kubeconfig(server, pki / "ca.crt", "token", {"token": token}, namespace)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def write_audit_policy(state_dir: Path) -> Path:
    """The apiserver's audit policy: requests made as a ServiceAccount, metadata only."""
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
