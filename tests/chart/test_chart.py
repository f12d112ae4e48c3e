"""The Helm chart, rendered with the real helm binary: RBAC, security, scope, peering, CRDs, schema."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from slm_operator.settings import OperatorSettings
from tests.chart.render import (
    CHART,
    NAMESPACE,
    ROOT,
    Manifest,
    Rendered,
    helm,
    helm_binary,
    render,
    template_text,
)

FULLNAME = "slm-slm-operator"
NAMESPACE_SCOPE = ("scope=namespace", "watchNamespaces={ai,ml}")
PEERED = ("replicas=2",)

# Every value set the RBAC and security assertions run on.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "namespace-scope": NAMESPACE_SCOPE,
    "peered-cluster": PEERED,
    "peered-namespace": (*NAMESPACE_SCOPE, *PEERED),
    "everything-on": ("serviceMonitor.enabled=true", "podMonitor.enabled=true", "networkPolicy.enabled=true"),
}

# The operator's permissions, exactly: (apiGroup, resource) -> verbs.
# tests/k8s/test_rbac.py proves these against the API server's audit log of a full cycle.
NAMESPACED_RULES: dict[tuple[str, str], set[str]] = {
    ("slm.dev", "slmdeployments"): {"get", "list", "watch"},
    ("slm.dev", "slmdeployments/status"): {"patch"},
    ("slm.dev", "slmdeployments/finalizers"): {"update"},
    ("", "persistentvolumeclaims"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create"},
}
CLUSTER_RULES: dict[tuple[str, str], set[str]] = {
    ("", "nodes"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
# Kopf with --namespace lists and watches namespaces (never with --all-namespaces).
NAMESPACE_SCOPE_CLUSTER_RULES: dict[tuple[str, str], set[str]] = {
    **CLUSTER_RULES,
    ("", "namespaces"): {"list", "watch"},
}


def rule_map(role: Manifest) -> dict[tuple[str, str], set[str]]:
    """A role's rules as (apiGroup, resource) -> verbs; fails on duplicates so no rule hides another."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules") or []:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key not in result, f"{role['metadata']['name']}: {key} granted twice"
                result[key] = set(rule["verbs"])
    return result


def roles(rendered: Rendered) -> list[Manifest]:
    return rendered.of_kind("Role") + rendered.of_kind("ClusterRole")


def operator_deployment(rendered: Rendered) -> Manifest:
    return rendered.one("Deployment", FULLNAME)


def operator_container(rendered: Rendered) -> Manifest:
    containers = operator_deployment(rendered)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: Manifest = containers[0]
    return container


# ---------------------------------------------------------------------------------------------
# lint


@pytest.mark.parametrize("sets", [(), NAMESPACE_SCOPE, PEERED], ids=["default", "namespace-scope", "peered"])
def test_helm_lint_strict_is_clean(sets: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for item in sets:
        args += ["--set", item]
    result = helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_default_render_has_the_expected_objects() -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in render().manifests)
    assert kinds == sorted(
        [
            ("ServiceAccount", FULLNAME),
            ("ConfigMap", f"{FULLNAME}-settings"),
            ("CustomResourceDefinition", "slmdeployments.slm.dev"),
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("Deployment", FULLNAME),
            ("Service", f"{FULLNAME}-metrics"),
        ]
    )
    for manifest in render().manifests:
        if manifest["kind"] not in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
            assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["metadata"]


# ---------------------------------------------------------------------------------------------
# RBAC


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_has_no_wildcards_and_no_secrets(variant: str) -> None:
    rendered = render(*VARIANTS[variant])
    assert roles(rendered), "no roles rendered"
    for role in roles(rendered):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}: {rule}"
                assert all("*" not in value for value in rule[field]), rule
            assert "secrets" not in rule["resources"], f"{role['metadata']['name']} grants secrets: {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_cluster_scope_rbac_is_exactly_the_designed_rules() -> None:
    rendered = render()
    cluster_role = rendered.one("ClusterRole", FULLNAME)
    assert rule_map(cluster_role) == {**NAMESPACED_RULES, **CLUSTER_RULES}
    binding = rendered.one("ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    # The settings ConfigMap is mounted by the kubelet: no Role reads it.
    assert rendered.of_kind("Role") == [] and rendered.of_kind("RoleBinding") == []


def test_namespace_scope_yields_roles_per_namespace_and_a_small_cluster_role() -> None:
    rendered = render(*NAMESPACE_SCOPE)
    cluster_roles = rendered.of_kind("ClusterRole")
    assert [r["metadata"]["name"] for r in cluster_roles] == [f"{FULLNAME}-cluster"]
    assert rule_map(cluster_roles[0]) == NAMESPACE_SCOPE_CLUSTER_RULES, (
        "only cluster-scoped reads may be cluster-wide"
    )
    operator_roles = {
        r["metadata"]["namespace"]: r for r in rendered.of_kind("Role") if r["metadata"]["name"] == FULLNAME
    }
    assert set(operator_roles) == {"ai", "ml"}
    for role in operator_roles.values():
        assert rule_map(role) == NAMESPACED_RULES
    bindings = {
        b["metadata"]["namespace"]: b
        for b in rendered.of_kind("RoleBinding")
        if b["metadata"]["name"] == FULLNAME
    }
    assert set(bindings) == {"ai", "ml"}
    for binding in bindings.values():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    args = operator_container(rendered)["args"]
    assert "--namespace=ai" in args and "--namespace=ml" in args
    assert "--all-namespaces" not in args


def test_namespace_scope_defaults_to_the_release_namespace() -> None:
    rendered = render("scope=namespace")
    assert {r["metadata"]["namespace"] for r in rendered.of_kind("Role")} == {NAMESPACE}
    assert f"--namespace={NAMESPACE}" in operator_container(rendered)["args"]


def test_rbac_create_false_renders_no_rbac() -> None:
    rendered = render("rbac.create=false")
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        assert rendered.of_kind(kind) == []


# ---------------------------------------------------------------------------------------------
# Pod security


ALLOWED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def assert_restricted(pod_spec: dict[str, Any]) -> None:
    """The Pod Security Standard "restricted" profile, as the admission controller checks it."""
    pod_sc = pod_spec.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert not pod_spec.get(host, False) or host == "hostUsers", host
    for volume in pod_spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= ALLOWED_VOLUME_TYPES, volume
    containers = pod_spec["containers"] + pod_spec.get("initContainers", [])
    for container in containers:
        sc = container.get("securityContext", {})
        assert sc.get("privileged", False) is False
        assert sc.get("allowPrivilegeEscalation") is False, container["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        assert run_as_non_root is True, container["name"]
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") in {"RuntimeDefault", "Localhost"}, container["name"]
        for port in container.get("ports", []):
            assert "hostPort" not in port
        assert sc.get("readOnlyRootFilesystem") is True


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_pod_is_restricted(variant: str) -> None:
    deployment = operator_deployment(render(*VARIANTS[variant]))
    pod_spec = deployment["spec"]["template"]["spec"]
    assert_restricted(pod_spec)
    assert pod_spec["securityContext"]["runAsUser"] == 65532


def test_restricted_check_catches_a_privileged_pod() -> None:
    pod_spec = operator_deployment(render())["spec"]["template"]["spec"]
    bad = yaml.safe_load(yaml.safe_dump(pod_spec))
    bad["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(AssertionError):
        assert_restricted(bad)


# ---------------------------------------------------------------------------------------------
# The operator container: command, Kopf arguments, probes, settings


def test_command_args_and_probes() -> None:
    container = operator_container(render())
    assert container["command"] == ["python", "-m", "slm_operator"]
    assert container["args"] == [
        "--health-port=8080",
        "--metrics-port=8081",
        "--log-format=json",
        "--all-namespaces",
    ]
    assert container["ports"] == [
        {"name": "health", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8081, "protocol": "TCP"},
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert operator_deployment(render())["spec"]["strategy"] == {"type": "Recreate"}


def operator_cli(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> dict[str, Any]:
    """Run the real `python -m slm_operator` entry point on the chart's arguments, stopping at the
    kopf.operator(...) call; return the keyword arguments Kopf would have started with."""
    import slm_operator.__main__ as entry

    captured: dict[str, Any] = {}

    def fake_operator(**kwargs: Any) -> None:
        captured.update(kwargs)

    def fake_run(coroutine: Any) -> None:
        assert coroutine is None

    monkeypatch.setattr(kopf, "operator", fake_operator)
    monkeypatch.setattr(kopf, "configure", lambda **kwargs: None)
    monkeypatch.setattr(asyncio, "run", fake_run)
    monkeypatch.setattr(entry, "start_http_server", lambda *a, **kw: None)
    assert entry.main(args) == 0
    return captured


@pytest.mark.parametrize(
    "sets",
    [
        (),
        NAMESPACE_SCOPE,
        PEERED,
        (*NAMESPACE_SCOPE, *PEERED),
        ("operator.verbose=true", "operator.healthPort=9000", "operator.logFormat=plain"),
    ],
    ids=["default", "namespace-scope", "peered", "peered-namespace", "verbose-port"],
)
def test_args_are_accepted_by_the_operator_cli(
    sets: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's own CLI parses the chart's arguments into the Kopf mode the chart intends."""
    rendered = render(*sets)
    container = operator_container(rendered)
    kwargs = operator_cli(monkeypatch, list(container["args"]))
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert kwargs["liveness_endpoint"] == f"http://0.0.0.0:{port}/healthz"
    if "scope=namespace" in sets:
        assert kwargs["clusterwide"] is False and sorted(kwargs["namespaces"]) == ["ai", "ml"]
    else:
        assert kwargs["clusterwide"] is True and list(kwargs["namespaces"]) == []
    if "replicas=2" in sets:
        assert kwargs["peering_name"] == "slm-operator" and kwargs["standalone"] is False
    else:
        assert kwargs["peering_name"] is None and kwargs["standalone"] is True


def test_unknown_args_are_rejected_by_the_operator_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        operator_cli(monkeypatch, ["--liveness=http://0.0.0.0:8080/healthz"])


def test_ports_follow_the_values() -> None:
    rendered = render("operator.healthPort=9000", "operator.metricsPort=0")
    container = operator_container(rendered)
    assert "--health-port=9000" in container["args"] and "--metrics-port=0" in container["args"]
    assert container["ports"] == [{"name": "health", "containerPort": 9000, "protocol": "TCP"}]
    assert rendered.of_kind("Service") == []
    service = render().one("Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_settings_configmap_is_mounted_and_named_by_env() -> None:
    rendered = render()
    container = operator_container(rendered)
    env = {e["name"]: e for e in container["env"]}
    config_file = Path(env["SLM_OPERATOR_CONFIG_FILE"]["value"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["settings"]["mountPath"] == str(config_file.parent)
    assert mounts["settings"]["readOnly"] is True
    volumes = {v["name"]: v for v in operator_deployment(rendered)["spec"]["template"]["spec"]["volumes"]}
    configmap = rendered.one("ConfigMap", volumes["settings"]["configMap"]["name"])
    assert config_file.name in configmap["data"]


def settings_from(rendered: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    text = rendered.one("ConfigMap", f"{FULLNAME}-settings")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    for key in list(os.environ):
        if key.startswith("SLM_OPERATOR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLM_OPERATOR_CONFIG_FILE", str(path))
    known = set()
    for name, field in OperatorSettings.model_fields.items():
        known |= {
            name,
            field.alias or name,
            "".join(p.capitalize() if i else p for i, p in enumerate(name.split("_"))),
        }
    unknown = set(yaml.safe_load(text)) - known
    assert not unknown, f"settings keys the operator ignores: {unknown}"
    return OperatorSettings()


def test_settings_are_read_by_the_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render(
        "settings.images.cuda=registry.local/slm-runtime:9-cuda",
        "settings.defaults.storageClassName=fast",
        "settings.defaults.imagePullSecrets[0].name=regcred",
        "settings.catalog.aliases.assistant=phi4:mini",
    )
    settings = settings_from(rendered, tmp_path, monkeypatch)
    assert settings.images["cuda"] == "registry.local/slm-runtime:9-cuda"
    assert settings.images["cpu"] == "ghcr.io/slm-operator/slm-runtime:0.1.0-cpu"
    assert settings.defaults.storage_class_name == "fast"
    assert settings.defaults.image_pull_secrets == ["regcred"]
    assert settings.defaults.cache_headroom == 0.2
    assert settings.catalog_overrides() == [{"aliases": {"assistant": "phi4:mini"}}]
    assert set(settings.tiers) == {"npu", "gpu", "cpu"}


def test_tier_override_reaches_the_operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "settings": {
                    "tiers": {
                        "npu": {
                            "accelerators": [
                                {
                                    "name": "rockchip",
                                    "resourceName": "squat.ai/rknpu",
                                    "nodeSelector": {"kubernetes.io/arch": "arm64"},
                                    "formats": ["onnx"],
                                    "runtime": "cpu",
                                }
                            ],
                            "autoQuantization": {"onnx": ["int8"]},
                        }
                    }
                }
            }
        )
    )
    result = template_text(extra=("--values", str(values)))
    assert result.returncode == 0, result.stderr
    rendered = Rendered([d for d in yaml.safe_load_all(result.stdout) if d])
    settings = settings_from(rendered, tmp_path, monkeypatch)
    assert [a.name for a in settings.tiers["npu"].accelerators] == ["rockchip"]
    assert settings.tiers["gpu"].accelerators[0].name == "nvidia", "tiers left out keep the built-in ones"


def test_settings_change_rolls_the_pods() -> None:
    def checksum(*sets: str) -> str:
        annotations = operator_deployment(render(*sets))["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/settings"]
        return value

    assert checksum() != checksum("settings.logLevel=debug")


# ---------------------------------------------------------------------------------------------
# Peering


def test_peered_cluster_scope() -> None:
    rendered = render(*PEERED)
    args = operator_container(rendered)["args"]
    assert "--peering=slm-operator" in args
    assert rendered.one("ClusterKopfPeering", "slm-operator")
    assert rule_map(rendered.one("ClusterRole", FULLNAME))[("kopf.dev", "clusterkopfpeerings")] == {
        "list",
        "watch",
        "patch",
    }
    strategy = operator_deployment(rendered)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_peered_namespace_scope() -> None:
    rendered = render(*NAMESPACE_SCOPE, *PEERED)
    peerings = rendered.of_kind("KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ai", "ml"]
    assert rendered.of_kind("ClusterKopfPeering") == []
    for role in rendered.of_kind("Role"):
        if role["metadata"]["name"] == FULLNAME:
            assert rule_map(role)[("kopf.dev", "kopfpeerings")] == {"list", "watch", "patch"}
    assert ("kopf.dev", "clusterkopfpeerings") not in rule_map(rendered.one("ClusterRole"))


def test_standalone_has_no_peering() -> None:
    rendered = render()
    assert rendered.of_kind("ClusterKopfPeering") == [] and rendered.of_kind("KopfPeering") == []
    for role in roles(rendered):
        assert not any(group == "kopf.dev" for group, _ in rule_map(role))


def test_kopf_peering_crds_ship_in_the_crds_folder() -> None:
    crds = {
        m["metadata"]["name"]: m
        for m in render(*PEERED, include_crds=True).of_kind("CustomResourceDefinition")
    }
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "slmdeployments.slm.dev"} <= set(crds)
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for name in ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"):
        version = crds[name]["spec"]["versions"][0]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True


# ---------------------------------------------------------------------------------------------
# The SLMDeployment CRD


def test_crd_is_installed_and_kept_by_default() -> None:
    crd = render().one("CustomResourceDefinition", "slmdeployments.slm.dev")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    plain = yaml.safe_load((ROOT / "crds" / "slm.dev_slmdeployments.yaml").read_text(encoding="utf-8"))
    assert crd["spec"] == plain["spec"]


def test_crds_install_false_removes_the_crd() -> None:
    assert render("crds.install=false").of_kind("CustomResourceDefinition") == []


# ---------------------------------------------------------------------------------------------
# values.schema.json


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("replicas=-1", "/replicas"),
        ("scope=everywhere", "/scope"),
        ("unknownKey=1", "unknownKey"),
        ("securityContext.allowPrivilegeEscalation=true", "/securityContext/allowPrivilegeEscalation"),
        ("podSecurityContext.runAsNonRoot=false", "/podSecurityContext/runAsNonRoot"),
        ("securityContext.capabilities.add={NET_ADMIN}", "/securityContext/capabilities/add"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("watchNamespaces={team-*}", "/watchNamespaces/0"),
        ("operator.logFormat=xml", "/operator/logFormat"),
        ("operator.metricsPort=80", "/operator/metricsPort"),
        ("operator.extraArgs={run}", "/operator/extraArgs/0"),
        ("settings.logLevel=trace", "/settings/logLevel"),
        ("settings.defaults.cacheHeadroom=-1", "/settings/defaults/cacheHeadroom"),
        ("settings.images.cuda=", "/settings/images/cuda"),
        ("settings.tiers.tpu.accelerators=x", "/settings/tiers"),
        ("settings.unknownSetting=1", "/settings"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("crds.install=maybe", "/crds/install"),
    ],
)
def test_schema_rejects_bad_values(setting: str, complaint: str) -> None:
    result = template_text(setting)
    assert result.returncode != 0, f"{setting} was accepted"
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------
# Monitoring and NetworkPolicy


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitors_select_runtime_pods(kind: str) -> None:
    key = "serviceMonitor" if kind == "ServiceMonitor" else "podMonitor"
    assert render().of_kind(kind) == []
    monitor = render(f"{key}.enabled=true", f"{key}.labels.release=prom").one(kind, f"{FULLNAME}-runtime")
    spec = monitor["spec"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "slm-runtime"}}
    assert spec["namespaceSelector"] == {"any": True}
    endpoints = spec["endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", "/metrics")]
    scoped = render(f"{key}.enabled=true", *NAMESPACE_SCOPE).one(kind, f"{FULLNAME}-runtime")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["ai", "ml"]}


def test_operator_service_monitor() -> None:
    monitor = render("serviceMonitor.enabled=true").one("ServiceMonitor", f"{FULLNAME}-operator")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "slm-operator",
        "app.kubernetes.io/instance": "slm",
        "app.kubernetes.io/component": "operator",
    }
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
    service = render().one("Service", f"{FULLNAME}-metrics")
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    assert render("serviceMonitor.enabled=true", "operator.metricsPort=0").of_kind("ServiceMonitor") != []
    assert len(render("serviceMonitor.enabled=true", "operator.metricsPort=0").of_kind("ServiceMonitor")) == 1


def test_network_policy_for_runtime_pods() -> None:
    assert render().of_kind("NetworkPolicy") == []
    policies = render("networkPolicy.enabled=true", *NAMESPACE_SCOPE).of_kind("NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["ai", "ml"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "slm-runtime"}}
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["ingress"] == [
            {"ports": [{"port": "http", "protocol": "TCP"}], "from": [{"podSelector": {}}]}
        ]
    custom = render(
        "networkPolicy.enabled=true",
        "networkPolicy.namespaces={ai}",
        "networkPolicy.ingressFrom[0].namespaceSelector.matchLabels.team=apps",
    ).one("NetworkPolicy")
    assert custom["metadata"]["namespace"] == "ai"
    assert custom["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]


# ---------------------------------------------------------------------------------------------
# NOTES.txt and the plain manifests


def test_notes_render(tmp_path: Path) -> None:
    """NOTES.txt renders (`helm install --dry-run` needs a cluster, so render it as a template)."""
    chart = tmp_path / "slm-operator"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" }}' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include "notes" . | quote }}\n'
    )
    result = helm("template", "slm", str(chart), "--set", "replicas=2", "--show-only", "templates/notes.yaml")
    assert result.returncode == 0, result.stderr
    text = yaml.safe_load(result.stdout)["data"]["notes"]
    assert "kubectl wait slmdeployment/phi4-mini --for=condition=Ready" in text
    assert 'Replicas: 2 (Kopf peering "slm-operator")' in text
    assert "Scope: cluster" in text


def test_deploy_install_yaml_is_a_fresh_render() -> None:
    """deploy/install.yaml must be what deploy/render.sh produces now (run it after chart changes)."""
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "render.sh"), "-"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "HELM": helm_binary()},
    )
    assert result.returncode == 0, result.stderr
    committed = (ROOT / "deploy" / "install.yaml").read_text(encoding="utf-8")
    assert committed == result.stdout, "deploy/install.yaml is stale: run `bash deploy/render.sh`"
    docs = [d for d in yaml.safe_load_all(committed) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "slm-system",
            "labels": {
                "app.kubernetes.io/part-of": "slm-operator",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    assert all(d["metadata"].get("namespace", "slm-system") == "slm-system" for d in docs)
    assert {d["kind"] for d in docs} >= {"CustomResourceDefinition", "Deployment", "ClusterRole"}
