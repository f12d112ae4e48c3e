"""examples/*.yaml: every SLMDeployment parses and resolves on the local cluster's default fake
nodes with the built-in catalog. (Schema and CEL validity: tests/examples, the one validator.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.catalog import load_builtin_catalog
from slm_operator.facts import Facts, NodeFacts
from slm_operator.plan import Owner, Plan
from slm_operator.resolve import resolve
from slm_operator.settings import OperatorSettings

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
NODES_FILE = REPO_ROOT / "hack" / "nodes" / "default.yaml"


def _deployments() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in EXAMPLES:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document and document.get("kind") == "SLMDeployment":
                found.append((f"{path.name}:{document['metadata']['name']}", document))
    return found


DEPLOYMENTS = _deployments()


def test_there_are_examples() -> None:
    assert len(DEPLOYMENTS) >= 6


@pytest.mark.parametrize(("label", "document"), DEPLOYMENTS, ids=[label for label, _ in DEPLOYMENTS])
def test_example_is_placeable(label: str, document: dict[str, Any]) -> None:
    spec = SLMDeploymentSpec.model_validate(document["spec"])
    nodes = [
        # kwok reports these nodes Ready; the file holds them as a kubelet would register them.
        dataclasses.replace(NodeFacts.from_node(node), ready=True)
        for node in yaml.safe_load_all(NODES_FILE.read_text(encoding="utf-8"))
        if node
    ]
    facts = Facts(catalog=load_builtin_catalog(), nodes=nodes, settings=OperatorSettings())
    result = resolve(Owner(document["metadata"]["name"], "default", "uid"), spec, facts)
    assert isinstance(result, Plan), result
