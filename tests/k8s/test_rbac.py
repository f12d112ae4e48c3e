"""RBAC proven: the Helm chart's permissions against what the operator really does.

The chart is installed into the test namespace with the real helm binary; the operator then
runs (as a local process) with a token of the chart's ServiceAccount through a full cycle:
create, update, drift repair and delete. The API server's audit log (every request made by a
ServiceAccount, metadata level) says which (apiGroup, resource, verb) the operator used:

- a missing permission fails the test (no request is refused, the operator logs no Forbidden);
- a permission the chart grants but the cycle never uses fails the test, unless it is listed
  in ``NOT_EXERCISED`` with the reason it is granted anyway;
- a negative control removes one needed permission and shows the cycle stops with a 403.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_dev import cluster as localcluster
from slm_dev.auth import read_audit_log
from slm_dev.cluster import LocalCluster
from slm_dev.operator_process import OperatorProcess
from tests.k8s.conftest import REPO_ROOT, wait_for

pytestmark = pytest.mark.k8s

CHART = REPO_ROOT / "charts" / "slm-operator"
NAME = "rbac-cycle"
# An unretained cache claim is owned too, so deleting the resource garbage-collects all four children.
SPEC = {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}, "cache": {"retain": False}}

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted by the chart but not used by the create/update/drift/delete cycle, each with the
# reason it is granted anyway.
NOT_EXERCISED: dict[Permission, str] = {
    ("slm.dev", "slmdeployments/finalizers", "update"): (
        "checked by the OwnerReferencesPermissionEnforcement admission plugin (an authorization "
        "check inside the API server, never a request of its own) when children set "
        "blockOwnerDeletion=true; the local control plane does not enable that plugin"
    ),
    (
        "batch",
        "jobs",
        "delete",
    ): "a failed fetch Job is deleted to retry it (backoff); the cycle's fetch succeeds",
}

# Granted and used only when a reconcile happens to pass while a fetch Pod is Running: kwok runs
# a Job's Pod to completion at once, so the cycle may or may not make the request. Neither
# "unused" nor "stale".
MAY_BE_EXERCISED: dict[Permission, str] = {
    ("", "pods/log", "get"): (
        "the last lines of a running fetch Pod's log (its progress) become status.cache; "
        "tests/k8s/test_real_node.py reads a real fetch Pod's log with the operator's client"
    ),
}

# --- helpers ---------------------------------------------------------------------------------


def slm(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in obj.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    return {}


def get(cluster: LocalCluster, namespace: str, *what: str) -> Any:
    return cluster.kubectl_json("get", *what, "-n", namespace)


def exists(cluster: LocalCluster, namespace: str, kind: str, name: str) -> bool:
    return cluster.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0


def wait_ready(cluster: LocalCluster, namespace: str, name: str, generation: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "slm", name)
        ready = condition(obj, "Ready")
        if (
            obj["metadata"]["generation"] == generation
            and ready.get("status") == "True"
            and ready.get("observedGeneration") == generation
            and obj.get("status", {}).get("observedGeneration") == generation
        ):
            return dict(obj)
        return None

    return wait_for(probe, timeout=120, what=f"{name} Ready at generation {generation}")


class Helm:
    """The project's helm binary against the local control plane, with its own cache dirs."""

    def __init__(self, cluster: LocalCluster, home: Path) -> None:
        self.binary = cluster.bin_dir / "helm"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=180, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
        return result


@dataclass
class Release:
    name: str
    namespace: str
    scope: str
    service_account: str
    manifests: list[dict[str, Any]]

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def granted(self) -> set[Permission]:
        """Every (apiGroup, resource, verb) in the release's Roles and ClusterRoles that are
        bound to its ServiceAccount."""
        bound: set[tuple[str, str, str]] = set()  # (kind, namespace, name) of bound roles
        for doc in self.manifests:
            if doc["kind"] in ("RoleBinding", "ClusterRoleBinding") and any(
                s["kind"] == "ServiceAccount"
                and s["name"] == self.service_account
                and s.get("namespace") == self.namespace
                for s in doc["subjects"]
            ):
                ref = doc["roleRef"]
                ns = doc["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
                bound.add((ref["kind"], ns, ref["name"]))
        permissions: set[Permission] = set()
        for doc in self.manifests:
            if doc["kind"] not in ("Role", "ClusterRole"):
                continue
            key = (
                doc["kind"],
                doc["metadata"].get("namespace", "") if doc["kind"] == "Role" else "",
                doc["metadata"]["name"],
            )
            if key not in bound:
                continue
            for rule in doc.get("rules") or []:
                for group in rule.get("apiGroups", []):
                    for resource in rule.get("resources", []):
                        for verb in rule["verbs"]:
                            permissions.add((group, resource, verb))
        return permissions


@pytest.fixture
def helm(cluster: LocalCluster, tmp_path: Path) -> Helm:
    return Helm(cluster, tmp_path / "helm")


@pytest.fixture
def install_chart(cluster: LocalCluster, crds: list[str], namespace: str, helm: Helm) -> Iterator[Any]:
    """Installs the chart into the test namespace; uninstalls every release it made."""
    releases: list[Release] = []
    created_crds: list[str] = []

    def peering_crds() -> set[str]:
        names = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
        return {n.split("/", 1)[1] for n in names if n.endswith(".kopf.dev")}

    def install(scope: str, *values: str) -> Release:
        # Release names hold the namespace's random suffix: ClusterRoles are cluster-wide.
        name = f"rbac-{scope[:2]}-{namespace[-6:]}"
        peering_crds_before = peering_crds()
        helm(
            "install", name, str(CHART), "--namespace", namespace,
            # The session already applied the SLMDeployment CRD (server-side apply): the chart
            # leaves it alone. Its crds/ folder (Kopf's peering CRDs) is installed when missing.
            "--set", "crds.install=false",
            "--set", f"scope={scope}",
            *values,
        )  # fmt: skip
        created_crds.extend(sorted(peering_crds() - peering_crds_before))
        manifests = [
            doc
            for doc in yaml.safe_load_all(helm("get", "manifest", name, "--namespace", namespace).stdout)
            if doc
        ]
        accounts = [doc["metadata"]["name"] for doc in manifests if doc["kind"] == "ServiceAccount"]
        assert len(accounts) == 1, accounts
        release = Release(name, namespace, scope, accounts[0], manifests)
        releases.append(release)
        return release

    yield install
    for release in releases:
        helm("uninstall", release.name, "--namespace", release.namespace, "--wait", check=False)
    # Helm never deletes the CRDs of a chart's crds/ folder: remove those this test brought.
    for crd in created_crds:
        cluster.kubectl("delete", "crd", crd, "--wait=false", check=False)


def operator_as(
    cluster: LocalCluster, release: Release, tmp_path: Path, scope_args: list[str]
) -> OperatorProcess:
    """The operator with explicit scope arguments (``--namespace NS`` or ``--all-namespaces``), as the
    chart's ServiceAccount."""
    token = cluster.kubectl(
        "create", "token", release.service_account, "-n", release.namespace, "--duration=1h"
    ).stdout.strip()
    kubeconfig = localcluster.token_kubeconfig(
        cluster, tmp_path / f"{release.name}.kubeconfig", token, release.namespace
    )
    # Pin the operator to the chart's ServiceAccount's kubeconfig, nothing else.
    process = OperatorProcess(
        kubeconfig, tmp_path / f"{release.name}.log", scope_args, env={"SLM_OPERATOR_POD_NAME": release.name}
    )
    process.start()
    return process


@dataclass
class Audit:
    events: list[dict[str, Any]]

    @staticmethod
    def permission(event: dict[str, Any]) -> Permission:
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        return (ref.get("apiGroup", ""), resource, event["verb"])

    def used(self) -> set[Permission]:
        """Permissions exercised by allowed requests. A server-side apply (PATCH) that creates
        its object (201) is authorized as create too, so it counts as both."""
        used: set[Permission] = set()
        for e in self.events:
            if not e.get("objectRef") or decision(e) != "allow":
                continue
            group, resource, verb = self.permission(e)
            used.add((group, resource, verb))
            if verb == "patch" and (e.get("responseStatus") or {}).get("code") == 201:
                used.add((group, resource, "create"))
        return used

    def refused(self) -> list[str]:
        """Requests that RBAC refused (a 403 from admission, such as a namespace being
        terminated, is not a missing permission)."""
        return [
            f"{e['verb']} {e.get('requestURI')} -> {(e.get('responseStatus') or {}).get('code')}"
            for e in self.events
            if decision(e) == "forbid"
        ]


def decision(event: dict[str, Any]) -> str:
    return str((event.get("annotations") or {}).get("authorization.k8s.io/decision", ""))


def audit(cluster: LocalCluster, release: Release) -> Audit:
    return Audit(read_audit_log(cluster.state_dir, release.user))


def forbidden_lines(log: str, user: str) -> list[str]:
    """Operator log lines about a refused permission: RBAC's "User ... cannot ..." message or
    Kopf's "Not enough permissions" fallback."""
    return [
        line
        for line in log.splitlines()
        if f'User "{user}" cannot' in line or "not enough permissions" in line.lower()
    ]


def run_cycle(cluster: LocalCluster, namespace: str) -> None:
    """Create, update, drift repair and delete one SLMDeployment."""
    cluster.apply([slm(NAME, SPEC)], "-n", namespace)
    first = wait_ready(cluster, namespace, NAME, 1)
    assert first["status"]["placement"]["tier"] == "cpu"

    # Update: a new generation is reconciled into the Deployment.
    cluster.kubectl(
        "patch",
        "slm",
        NAME,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"optimization": {"maxContext": 2048}}}),
    )
    wait_ready(cluster, namespace, NAME, 2)
    assert "2048" in json.dumps(get(cluster, namespace, "deployment", NAME)["spec"]["template"])

    # Drift: a deleted Service and a hand-scaled Deployment are put back.
    cluster.kubectl("delete", "service", NAME, "-n", namespace)
    cluster.kubectl("scale", "deployment", NAME, "-n", namespace, "--replicas=3")
    wait_for(lambda: exists(cluster, namespace, "service", NAME), what="the Service re-created")
    wait_for(
        lambda: get(cluster, namespace, "deployment", NAME)["spec"]["replicas"] == 1,
        what="the Deployment scaled back to 1",
    )
    wait_ready(cluster, namespace, NAME, 2)

    # Delete: the children go with it (ownerReferences; garbage collector).
    children = [("deployment", NAME), ("service", NAME)]
    children += [("job", j["metadata"]["name"]) for j in get(cluster, namespace, "jobs")["items"]]
    children += [
        ("pvc", c["metadata"]["name"])
        for c in get(cluster, namespace, "pvc")["items"]
        if c["metadata"].get("ownerReferences")
    ]
    assert [kind for kind, _ in children] == ["deployment", "service", "job", "pvc"], children
    cluster.kubectl("delete", "slm", NAME, "-n", namespace, "--wait=true")
    wait_for(
        lambda: not any(exists(cluster, namespace, kind, name) for kind, name in children),
        timeout=120,
        what=f"children {children} garbage-collected",
    )


def format_table(granted: set[Permission], used: set[Permission]) -> str:
    rows = [
        f"{g or 'core':24} {r:32} {v:7} {'used' if (g, r, v) in used else 'NOT USED'}"
        for g, r, v in sorted(granted)
    ]
    extra = [f"{g or 'core':24} {r:32} {v:7} used, NOT GRANTED" for g, r, v in sorted(used - granted)]
    return "\n".join(rows + extra)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "replicas"),
    [
        pytest.param("namespace", 1, id="namespace-scope"),
        # Cluster scope runs --all-namespaces, as the chart's Deployment does; only this test's
        # namespace holds an SLMDeployment of this test.
        pytest.param("cluster", 1, id="cluster-scope"),
        # replicas > 1: the chart adds the peering rule and object; the operator runs --peering.
        pytest.param("namespace", 2, id="namespace-scope-peering"),
        pytest.param("cluster", 2, id="cluster-scope-peering"),
    ],
)
def test_the_chart_grants_exactly_what_the_cycle_uses(
    cluster: LocalCluster,
    namespace: str,
    install_chart: Any,
    tmp_path: Path,
    scope: str,
    replicas: int,
) -> None:
    release = install_chart(scope, "--set", f"replicas={replicas}")
    args = ["--namespace", namespace] if scope == "namespace" else ["--all-namespaces"]
    if replicas > 1:
        peering = [d for d in release.manifests if d["kind"] in ("KopfPeering", "ClusterKopfPeering")]
        assert [d["metadata"]["name"] for d in peering] == ["slm-operator"], peering
        args += ["--peering", "slm-operator"]
    operator = operator_as(cluster, release, tmp_path, args)
    try:
        run_cycle(cluster, namespace)
    finally:
        operator.stop()
        print(f"--- operator log ({operator.log_path}) ---\n{operator.log()[-6000:]}")

    events = audit(cluster, release)
    assert events.events, f"no audit events for {release.user}"
    granted = release.granted()
    used = events.used()
    table = format_table(granted, used)
    print(f"--- granted vs used ({scope} scope) ---\n{table}")

    refused_lines = forbidden_lines(operator.log(), release.user)
    assert not refused_lines, refused_lines
    assert not events.refused(), events.refused()
    assert used <= granted, f"used but not granted: {sorted(used - granted)}"
    allowed_unused = NOT_EXERCISED
    unused = granted - used - set(allowed_unused) - set(MAY_BE_EXERCISED)
    assert not unused, f"granted but never used (remove from the chart or explain):\n{table}"
    # An allowlist entry that the cycle does use is stale.
    stale = set(allowed_unused) & used
    assert not stale, f"NOT_EXERCISED entries that are in fact used: {sorted(stale)}"
    assert set(allowed_unused) <= granted, (
        f"NOT_EXERCISED entries not granted: {sorted(set(allowed_unused) - granted)}"
    )
    assert set(MAY_BE_EXERCISED) <= granted, (
        f"MAY_BE_EXERCISED entries not granted: {sorted(set(MAY_BE_EXERCISED) - granted)}"
    )


def test_a_missing_permission_stops_the_cycle(
    cluster: LocalCluster, namespace: str, install_chart: Any, tmp_path: Path
) -> None:
    """Negative control: without `patch` on services the runtime is never Ready, and the
    audit log shows the refused request."""
    release = install_chart("namespace")
    roles = [
        doc for doc in release.manifests
        if doc["kind"] == "Role" and any("services" in r.get("resources", []) for r in doc["rules"])
    ]  # fmt: skip
    assert len(roles) == 1
    role = cluster.kubectl_json("get", "role", roles[0]["metadata"]["name"], "-n", namespace)
    rules: list[dict[str, Any]] = []
    for rule in role["rules"]:
        if "services" in rule.get("resources", []):
            others = [r for r in rule["resources"] if r != "services"]
            if others:
                rules.append({**rule, "resources": others})
            rules.append(
                {**rule, "resources": ["services"], "verbs": [v for v in rule["verbs"] if v != "patch"]}
            )
        else:
            rules.append(rule)
    role["rules"] = rules
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))

    operator = operator_as(cluster, release, tmp_path, ["--namespace", namespace])
    try:
        cluster.apply([slm(NAME, SPEC)], "-n", namespace)

        def refused_service_patches() -> list[dict[str, Any]]:
            return [
                e
                for e in audit(cluster, release).events
                if Audit.permission(e) == ("", "services", "patch") and decision(e) == "forbid"
            ]

        # Everything but the Service converges: the runtime Deployment is available ...
        wait_for(
            lambda: (
                exists(cluster, namespace, "deployment", NAME)
                and get(cluster, namespace, "deployment", NAME).get("status", {}).get("readyReplicas") == 1
            ),
            timeout=120,
            what="the runtime Deployment available",
        )
        # ... and the Service apply is refused again after that, so the reconcile never ends.
        seen = len(refused_service_patches())
        # An event on the resource reconciles it now (not after the growing error backoff).
        cluster.kubectl("label", "slm", NAME, "-n", namespace, "touched=yes")
        wait_for(
            lambda: len(refused_service_patches()) > seen, timeout=120, what="another refused Service patch"
        )
        obj = get(cluster, namespace, "slm", NAME)
        assert condition(obj, "Ready").get("status") != "True", obj.get("status")
        assert not exists(cluster, namespace, "service", NAME)
        assert forbidden_lines(operator.log(), release.user)
    finally:
        operator.stop()
