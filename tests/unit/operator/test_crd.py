"""The generated CRD: no drift, structural, documented, and its CEL rules reject what they should.

The CEL rules are evaluated here with cel-python against sample objects after applying the
schema's defaults (as the API server does before validation); the cluster tests apply the same
objects to a real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from slm_operator.api.crd import build_crd, render_chart_crd_yaml, render_crd_yaml
from slm_operator.api.v1alpha1 import SLMDeploymentSpec, SLMDeploymentStatus
from tests.crdschema import apply_defaults, cel_errors

CRD = build_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def test_the_chart_copy_is_the_crd_behind_crds_install_and_kept_on_uninstall() -> None:
    chart = render_chart_crd_yaml()
    assert chart.splitlines()[1] == "{{- if .Values.crds.install }}"
    assert chart.endswith("{{- end }}\n")
    body = yaml.safe_load("\n".join(chart.splitlines()[2:-1]))
    assert body["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert body["spec"] == yaml.safe_load(render_crd_yaml())["spec"]


def test_names_subresources_and_columns() -> None:
    assert CRD["metadata"]["name"] == "slmdeployments.slm.dev"
    assert CRD["spec"]["group"] == "slm.dev"
    assert CRD["spec"]["scope"] == "Namespaced"
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "SLMDeployment",
        "slmdeployments",
        ["slm", "slmd"],
    )
    assert (VERSION["name"], VERSION["served"], VERSION["storage"]) == ("v1alpha1", True, True)
    assert VERSION["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Tier": ".status.placement.tier",
        "Quant": ".status.placement.quantization",
        "Model": ".status.model.name",
        "Endpoint": ".status.endpoint",
        "Age": ".metadata.creationTimestamp",
    }


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_every_field_is_described() -> None:
    for path, node in _walk(SCHEMA):
        for forbidden in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const", "nullable"):
            assert forbidden not in node, f"{path} has {forbidden}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        is_map_value = path.endswith("{}")
        if path and not path.startswith(".metadata") and not is_map_value and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description (kubectl explain)"


def test_defaults_and_enums() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["replicas"]["default"] == 1
    assert spec["hardware"]["default"] == {}
    assert spec["hardware"]["properties"]["preferred"] == {
        "type": "string",
        "description": "Hardware tier tried first: npu, gpu or cpu.",
        "default": "gpu",
        "enum": ["npu", "gpu", "cpu"],
    }
    assert spec["hardware"]["properties"]["fallback"]["x-kubernetes-list-type"] == "set"
    assert spec["api"]["properties"]["port"]["minimum"] == 1
    assert spec["api"]["properties"]["port"]["maximum"] == 65535
    assert spec["resources"]["properties"]["requests"]["additionalProperties"] == {
        "x-kubernetes-int-or-string": True
    }
    assert spec["prompt"]["properties"]["parameters"]["x-kubernetes-preserve-unknown-fields"] is True
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == (
        "map",
        ["type"],
    )


# --- validation as the API server would do it ------------------------------------------------


def validate(spec: dict[str, Any], name: str = "assistant") -> list[str]:
    """Schema errors and failed CEL messages for an SLMDeployment with this spec."""
    obj = apply_defaults(
        SCHEMA,
        {"apiVersion": "slm.dev/v1alpha1", "kind": "SLMDeployment", "metadata": {"name": name}, "spec": spec},
    )
    errors = [error.message for error in jsonschema.Draft7Validator(SCHEMA).iter_errors(obj)]
    return errors + cel_errors(SCHEMA, obj)


def _header(name: str = "X-Api-Key", key: str = "token", **fields: str) -> dict[str, Any]:
    """A model.headersFrom entry."""
    return {"header": name, "secretKeyRef": {"name": "registry", "key": key}, **fields}


VALID_SPECS: list[dict[str, Any]] = [
    {"model": {"name": "phi4:mini"}},
    {
        "model": {
            "source": "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "quantization": "q4_k_m",
        },
        "hardware": {
            "preferred": "npu",
            "fallback": ["gpu", "cpu"],
            "count": 2,
            "tolerations": [{"key": "a", "operator": "Exists"}],
        },
        "replicas": 3,
        "resources": {"requests": {"cpu": 2, "memory": "8Gi"}},
        "prompt": {"parameters": {"temperature": 0.2, "stop": ["\n"]}},
        "api": {"apiKeySecretRef": {"name": "k", "key": "token"}},
        "cache": {"size": "20Gi", "accessMode": "ReadWriteMany", "retain": False},
    },
    {
        "model": {"name": "phi4:mini", "format": "onnx", "quantization": "int4"},
        "hardware": {"preferred": "npu"},
    },
    {"model": {"name": "qwen2.5", "quantization": "auto"}, "hardware": {"preferred": "cpu", "fallback": []}},
    {
        "model": {
            "source": "https://models.example/m.gguf",
            "headersFrom": [
                {
                    "header": "Authorization",
                    "prefix": "Bearer ",
                    "secretKeyRef": {"name": "registry", "key": "token"},
                },
                {"header": "X-Api-Key", "secretKeyRef": {"name": "gateway", "key": "api-key"}},
            ],
        }
    },
    {"model": {"source": "hf://org/private/m.gguf@v1", "hfTokenSecretRef": {"name": "hf", "key": "token"}}},
    {
        "model": {
            "name": "phi4:mini",
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
            "headersFrom": [{"header": "X-Mirror-Key", "secretKeyRef": {"name": "mirror", "key": "key"}}],
        }
    },
]


@pytest.mark.parametrize("spec", VALID_SPECS)
def test_valid_specs_pass_and_parse(spec: dict[str, Any]) -> None:
    assert validate(copy.deepcopy(spec)) == []
    SLMDeploymentSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": {}}, "exactly one of model.name (a catalog name such as phi4:mini) and model.source"),
        ({"model": {"name": "a", "source": "hf://x/y/z.gguf"}}, "exactly one of model.name"),
        (
            {"model": {"name": "a", "format": "gguf", "quantization": "int4"}},
            "format gguf takes a GGUF quantization",
        ),
        (
            {"model": {"name": "a", "format": "onnx", "quantization": "q4_k_m"}},
            "format onnx takes an ONNX precision",
        ),
        ({"model": {"source": "https://h/m.gguf", "quantization": "int8"}}, "a .gguf source is a GGUF file"),
        ({"model": {"source": "https://h/m.gguf", "format": "onnx"}}, "a .gguf source is a GGUF file"),
        (
            {"model": {"name": "a"}, "hardware": {"preferred": "gpu", "fallback": ["gpu", "cpu"]}},
            "hardware.fallback must not contain the preferred tier",
        ),
        (
            {"model": {"name": "a"}, "api": {"apiKeySecretRef": {"name": "k"}}},
            "a Secret reference needs both name and key",
        ),
        (
            {"model": {"name": "a"}, "api": {"openai": False, "ollama": False}},
            "at least one of api.openai and api.ollama",
        ),
        (
            {"model": {"name": "a"}, "replicas": 2, "cache": {"accessMode": "ReadWriteOnce"}},
            "replicas above 1 need cache.accessMode ReadWriteMany",
        ),
        *[
            (
                {"model": {"source": "https://h/m.gguf", "headersFrom": [_header(name)]}},
                "model.headersFrom[].header cannot be Host, Content-Length",
            )
            for name in (
                "Host",
                "range",
                "If-Range",
                "ACCEPT-ENCODING",
                "Content-Length",
                "Transfer-Encoding",
            )
        ],
        (
            {"model": {"source": "https://h/m.gguf", "headersFrom": [_header(key="")]}},
            "model.headersFrom[].secretKeyRef needs both name and key",
        ),
        *[
            (
                {"model": {"source": source, "headersFrom": [_header()]}},
                "model.headersFrom is for http://, https:// and hf:// sources and catalog names",
            )
            for source in ("pvc://claim/m.gguf", "file:///models/m.gguf", "s3://bucket/m.gguf")
        ],
        (
            {"model": {"source": "https://h/m.gguf", "hfTokenSecretRef": {"name": "hf", "key": "t"}}},
            "model.hfTokenSecretRef is sent to the Hugging Face endpoint, so it needs an hf:// source",
        ),
        (
            {
                "model": {
                    "name": "a",
                    "hfTokenSecretRef": {"name": "hf", "key": "t"},
                    "headersFrom": [_header("authorization")],
                }
            },
            "model.hfTokenSecretRef already sends the Authorization header",
        ),
    ],
)
def test_cel_rules_reject(spec: dict[str, Any], message: str) -> None:
    errors = validate(spec)
    assert any(error.startswith(message) for error in errors), errors


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"name": "a"}, "api": {"port": 70000}},
        {"model": {"name": "a"}, "hardware": {"preferred": "tpu"}},
        {"model": {"name": "a"}, "hardware": {"count": 0}},
        {"model": {"name": "a"}, "hardware": {"fallback": ["cpu", "gpu", "npu"]}},
        {"model": {"name": "a", "quantization": "q9"}},
        {"model": {"source": "ftp://host/model.gguf"}},
        {"model": {"name": "a", "sha256": "xyz"}},
        {"model": {"name": "a"}, "cache": {"size": "lots"}},
        {"model": {"source": "https://h/m.gguf", "headersFrom": [_header("X Api Key")]}},
        {"model": {"source": "https://h/m.gguf", "headersFrom": [_header("X-Api-Key:")]}},
        {"model": {"source": "https://h/m.gguf", "headersFrom": [_header(prefix="Bearer\nX-Injected: 1")]}},
        {"model": {"source": "https://h/m.gguf", "headersFrom": [{"header": "X-Api-Key"}]}},
        {"model": {"source": "https://h/m.gguf", "headersFrom": [_header(f"X-{i}") for i in range(9)]}},
    ],
)
def test_schema_rejects(spec: dict[str, Any]) -> None:
    assert validate(spec) != []


def test_metadata_name_must_leave_room_for_child_names() -> None:
    assert validate({"model": {"name": "a"}}, name="a" * 48) == []
    assert any(
        e.startswith("metadata.name must be at most 48")
        for e in validate({"model": {"name": "a"}}, name="a" * 49)
    )
    assert any(
        e.startswith("metadata.name must be a DNS-1035 label")
        for e in validate({"model": {"name": "a"}}, name="my.model")
    )


def test_cel_rules_exist_where_expected() -> None:
    rules = {
        path: [v["message"] for v in node.get("x-kubernetes-validations", [])] for path, node in _walk(SCHEMA)
    }
    assert len(rules[""]) == 2
    assert len(rules[".spec"]) == 1
    assert len(rules[".spec.model"]) == 7
    assert len(rules[".spec.model.headersFrom[]"]) == 2
    assert len(rules[".spec.hardware"]) == 1
    assert len(rules[".spec.api"]) == 1
    assert len(rules[".spec.api.apiKeySecretRef"]) == 1
    assert len(rules[".spec.model.hfTokenSecretRef"]) == 1


def test_header_names_are_list_map_keys() -> None:
    """The API server refuses two entries for one header and server-side apply merges by header."""
    headers = SCHEMA["properties"]["spec"]["properties"]["model"]["properties"]["headersFrom"]
    assert (headers["x-kubernetes-list-type"], headers["x-kubernetes-list-map-keys"]) == ("map", ["header"])
    assert headers["items"]["required"] == ["header", "secretKeyRef"]


def test_status_model_round_trips_the_schema() -> None:
    status = SLMDeploymentStatus.model_validate(
        {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}], "selector": "a=b"}
    )
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert list(jsonschema.Draft7Validator(SCHEMA["properties"]["status"]).iter_errors(dumped)) == []
