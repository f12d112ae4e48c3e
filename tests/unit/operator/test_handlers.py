"""The operator's watches: children selected by the apiserver, not filtered after the fact."""

from __future__ import annotations

import kopf
import pytest
from kopf._cogs.structs import references

from slm_operator.handlers import select_children_server_side

OURS = ["app.kubernetes.io/managed-by=slm-operator"]


@pytest.mark.parametrize(
    ("group", "version", "plural", "kind", "selectors"),
    [
        ("apps", "v1", "deployments", "Deployment", OURS),
        ("", "v1", "services", "Service", OURS),
        ("batch", "v1", "jobs", "Job", OURS),
        ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", OURS),
        # Every SLMDeployment and every Node matters; Pods are listed on demand, never watched.
        ("slm.dev", "v1alpha1", "slmdeployments", "SLMDeployment", []),
        ("", "v1", "nodes", "Node", []),
    ],
)
def test_child_watches_carry_a_label_selector(
    group: str, version: str, plural: str, kind: str, selectors: list[str]
) -> None:
    settings = kopf.OperatorSettings()
    select_children_server_side(settings)
    resource = references.Resource(group=group, version=version, plural=plural, kind=kind, namespaced=True)
    assert sorted(set(settings.watching.label_selectors.collect(resource))) == selectors
