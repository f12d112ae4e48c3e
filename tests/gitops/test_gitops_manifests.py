"""The Argo CD Application and Flux examples point at things that exist and say what they mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "gitops"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def test_argocd_applications() -> None:
    apps = {d["metadata"]["name"]: d for d in docs(GITOPS / "argocd" / "application.yaml")}
    assert set(apps) == {"slm-operator", "slm-models"}
    for app in apps.values():
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert (ROOT / app["spec"]["source"]["path"]).is_dir()
        assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    operator = apps["slm-operator"]
    assert operator["spec"]["source"]["path"] == "charts/slm-operator"
    assert operator["spec"]["destination"]["namespace"] == "slm-system"
    wave = {
        name: int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for name, app in apps.items()
    }
    assert wave["slm-operator"] < wave["slm-models"], "operator and CRD first"
    include = apps["slm-models"]["spec"]["source"]["directory"]["include"].strip("{}").split(",")
    for name in include:
        assert (ROOT / "examples" / name).is_file(), name
    ignored = apps["slm-models"]["spec"]["ignoreDifferences"]
    assert ignored == [{"group": "slm.dev", "kind": "SLMDeployment", "jsonPointers": ["/spec/replicas"]}]


def test_argocd_values_are_valid_chart_values() -> None:
    """The values the Application passes must pass the chart's schema."""
    import jsonschema

    app = next(
        d for d in docs(GITOPS / "argocd" / "application.yaml") if d["metadata"]["name"] == "slm-operator"
    )
    values = yaml.safe_load((ROOT / "charts" / "slm-operator" / "values.yaml").read_text())
    merged = {**values, **app["spec"]["source"]["helm"]["valuesObject"]}
    merged["serviceMonitor"] = {**values["serviceMonitor"], **merged["serviceMonitor"]}
    schema = yaml.safe_load((ROOT / "charts" / "slm-operator" / "values.schema.json").read_text())
    jsonschema.validate(merged, schema)


def test_flux_helmrelease_and_sources() -> None:
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs(GITOPS / "flux" / "helmrelease.yaml")}
    repo = objects[("GitRepository", "slm-operator")]
    assert repo["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    release = objects[("HelmRelease", "slm-operator")]
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert (ROOT / chart["chart"]).resolve() == (ROOT / "charts" / "slm-operator").resolve()
    assert chart["sourceRef"] == {"kind": "GitRepository", "name": "slm-operator", "namespace": "flux-system"}
    assert release["spec"]["install"]["crds"] == "CreateReplace"
    assert release["spec"]["values"]["crds"]["install"] is True
    models = objects[("Kustomization", "slm-models")]
    assert (ROOT / models["spec"]["path"]).is_dir()
    exprs = models["spec"]["healthCheckExprs"][0]
    assert (exprs["apiVersion"], exprs["kind"]) == ("slm.dev/v1alpha1", "SLMDeployment")
    assert (
        "Stalled" in exprs["failed"] and "Ready" in exprs["current"] and "Reconciling" in exprs["inProgress"]
    )
