"""Every manifest in examples/ is valid against the generated SLMDeployment CRD.

The examples follow the seed document's scenarios (shared/seed/); the cluster tests apply them to a
real API server (which also runs the CRD's CEL rules). A missing CRD file fails these tests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.crdschema import (
    CRD_FILE,
    ROOT,
    apply_defaults,
    cel_errors,
    load_crd,
    raw_version_schema,
    version_schema,
)

EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def slm_deployments() -> list[tuple[str, Doc]]:
    return [(p.name, d) for p in EXAMPLE_FILES for d in documents(p) if d.get("kind") == "SLMDeployment"]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = version_schema(load_crd())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(validator: jsonschema.Draft7Validator, doc: Doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def raw_schema() -> dict[str, Any]:
    return raw_version_schema(load_crd())


def rule_errors(raw_schema: dict[str, Any], doc: Doc) -> list[str]:
    """The CRD's CEL rules, on the object as the API server sees it (defaults applied)."""
    return cel_errors(raw_schema, apply_defaults(raw_schema, doc))


def test_the_crd_exists() -> None:
    assert CRD_FILE.is_file(), f"{CRD_FILE} is missing: run `make generate`"


def test_there_are_examples() -> None:
    assert len(EXAMPLE_FILES) >= 6, EXAMPLE_FILES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_is_valid(
    path: Path, validator: jsonschema.Draft7Validator, raw_schema: dict[str, Any]
) -> None:
    docs = documents(path)
    kinds = [d.get("kind") for d in docs]
    assert "SLMDeployment" in kinds, f"{path.name} has no SLMDeployment"
    assert set(kinds) <= {"SLMDeployment", "Secret"}, kinds
    for doc in docs:
        assert "namespace" not in doc["metadata"], "examples apply into whatever namespace the user picks"
        if doc["kind"] == "SLMDeployment":
            assert doc["apiVersion"] == "slm.dev/v1alpha1"
            assert errors(validator, doc) == []
            assert rule_errors(raw_schema, doc) == []
            assert "status" not in doc
        else:
            assert doc["apiVersion"] == "v1" and doc.get("type", "Opaque") == "Opaque"


def test_referenced_secrets_are_in_the_same_file() -> None:
    """An example whose API key comes from a Secret ships that Secret, with that key."""
    found = 0
    for path in EXAMPLE_FILES:
        docs = documents(path)
        secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        for doc in docs:
            ref = (
                doc.get("spec", {}).get("api", {}).get("apiKeySecretRef")
                if doc["kind"] == "SLMDeployment"
                else None
            )
            if ref:
                found += 1
                secret = secrets.get(ref["name"])
                assert secret is not None, f"{path.name}: Secret {ref['name']} is not in the file"
                assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
    assert found >= 1


def scenario(predicate_name: str) -> list[str]:
    checks: dict[str, Callable[[Doc], bool]] = {
        "npu-first phi4:mini": lambda s: (
            s["model"].get("name") == "phi4:mini"
            and s.get("hardware", {}).get("preferred") == "npu"
            and s["hardware"].get("fallback") == ["gpu", "cpu"]
        ),
        "qwen2.5:3b on gpu": lambda s: (
            s["model"].get("name") == "qwen2.5:3b" and s.get("hardware", {}).get("preferred") == "gpu"
        ),
        "Modelfile assistant": lambda s: (
            "Contoso" in s.get("prompt", {}).get("system", "")
            and s["prompt"].get("parameters", {}).get("temperature") == 0.7
            and s.get("optimization", {}).get("maxContext") == 4096
        ),
        "embeddings": lambda s: s["model"].get("name", "").startswith("nomic-embed-text"),
        "onnx source": lambda s: (
            s["model"].get("source", "").startswith("hf://") and s["model"].get("format") == "onnx"
        ),
        "api key": lambda s: bool(s.get("api", {}).get("apiKeySecretRef", {}).get("name")),
    }
    check = checks[predicate_name]
    return [name for name, doc in slm_deployments() if check(doc["spec"])]


@pytest.mark.parametrize(
    "name",
    [
        "npu-first phi4:mini",
        "qwen2.5:3b on gpu",
        "Modelfile assistant",
        "embeddings",
        "onnx source",
        "api key",
    ],
)
def test_each_seed_scenario_has_an_example(name: str) -> None:
    assert scenario(name), f"no example for the seed scenario {name!r}"


def test_names_are_unique() -> None:
    names = [doc["metadata"]["name"] for _, doc in slm_deployments()]
    assert len(names) == len(set(names)), names


# The validation must be able to fail: each mutation of a valid example is rejected.
MUTATIONS: dict[str, tuple[str, Any]] = {
    "unknown field": ("spec.model.nmae", "phi4:mini"),
    "bad tier": ("spec.hardware.preferred", "tpu"),
    "bad format": ("spec.model.format", "safetensors"),
    "bad quantization": ("spec.model.quantization", "q1"),
    "replicas negative": ("spec.replicas", -1),
    "port out of range": ("spec.api.port", 70000),
    "threads as string": ("spec.optimization.threads", "eight"),
    "bad cache size": ("spec.cache.size", "ten gigs"),
    "bad source scheme": ("spec.model.source", "ftp://x/y.gguf"),
    "fallback not a list": ("spec.hardware.fallback", "cpu"),
}


def set_path(doc: Doc, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_schema_rejects_broken_examples(mutation: str, validator: jsonschema.Draft7Validator) -> None:
    _, original = slm_deployments()[0]
    doc = copy.deepcopy(original)
    set_path(doc, *MUTATIONS[mutation])
    assert errors(validator, doc), f"{mutation} was accepted"


CEL_MUTATIONS: dict[str, tuple[str, Any, str]] = {
    "name and source": ("spec.model.source", "hf://org/repo/file.gguf", "exactly one of model.name"),
    "name with a dot": ("metadata.name", "qwen2.5", "DNS-1035"),
    "name too long": ("metadata.name", "a" * 49, "at most 48"),
    "preferred in fallback": ("spec.hardware.fallback", ["gpu", "cpu"], "must not contain the preferred"),
    "key without name": ("spec.api.apiKeySecretRef", {"name": "", "key": "api-key"}, "both name and key"),
    "rwo with replicas": ("spec.cache", {"accessMode": "ReadWriteOnce"}, "ReadWriteMany"),
}


@pytest.mark.parametrize("mutation", CEL_MUTATIONS)
def test_cel_rules_reject_broken_examples(mutation: str, raw_schema: dict[str, Any]) -> None:
    _, original = next((n, d) for n, d in slm_deployments() if d["spec"]["hardware"]["preferred"] == "gpu")
    doc = copy.deepcopy(original)
    where, value, message = CEL_MUTATIONS[mutation]
    set_path(doc, where, value)
    if mutation == "rwo with replicas":
        doc["spec"]["replicas"] = 2
    problems = rule_errors(raw_schema, doc)
    assert any(message in problem for problem in problems), problems
