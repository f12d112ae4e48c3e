"""Builders: exact child objects for a representative plan, plus the rules every child follows."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.builders import (
    RUNTIME_ENV_NAMES,
    build_deployment,
    build_fetch_job,
    build_pvc,
    build_service,
)
from slm_operator.builders.deployment import config_hash
from slm_operator.catalog import Catalog
from slm_operator.plan import Owner, Plan
from slm_operator.resolve import resolve
from slm_operator.settings import OperatorSettings
from tests.unit.operator.conftest import cpu_node, make_facts, nvidia_node

SHA = "ab" * 32
CACHE_KEY = "qwen2.5-0.5b-q4_k_m-7d639cea"
MODEL_FILE = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
SOURCE = f"hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/{MODEL_FILE}"
IMAGE = "ghcr.io/slm-operator/slm-runtime:0.1.0-cpu"


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "slm-runtime",
        "app.kubernetes.io/instance": "assistant",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "slm-operator",
        "app.kubernetes.io/part-of": "slm-operator",
    }


OWNER_REFERENCES = [
    {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "name": "assistant",
        "uid": "0b9d2b8e-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
]
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
NOT_WINDOWS = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/os", "operator": "NotIn", "values": ["windows"]}
                    ]
                }
            ]
        }
    }
}


@pytest.fixture
def plan(owner: Owner, catalog: Catalog, settings: OperatorSettings) -> Plan:
    """qwen2.5:0.5b on a 3 GiB CPU node (q4_k_m), custom port, API key, prompt defaults."""
    spec = SLMDeploymentSpec.model_validate(
        {
            "model": {"name": "qwen2.5:0.5b", "sha256": SHA},
            "hardware": {"preferred": "cpu"},
            "prompt": {"system": "You are terse.", "parameters": {"temperature": 0.2, "stop": ["</s>"]}},
            "api": {"port": 11434, "apiKeySecretRef": {"name": "llm-key", "key": "token"}},
        }
    )
    result = resolve(owner, spec, make_facts(catalog, settings, cpu_node(memory="3Gi")))
    assert isinstance(result, Plan), result
    return result


def test_pvc(plan: Plan) -> None:
    assert build_pvc(plan) == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "assistant-model-cache", "namespace": "ai", "labels": labels("model-cache")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def test_pvc_is_owned_when_not_retained_and_carries_the_storage_class(plan: Plan) -> None:
    cache = dataclasses.replace(plan.cache, retain=False, storage_class_name="fast-rwx")
    pvc = build_pvc(dataclasses.replace(plan, cache=cache))
    assert pvc["metadata"]["ownerReferences"] == OWNER_REFERENCES
    assert pvc["spec"]["storageClassName"] == "fast-rwx"


def test_fetch_job(plan: Plan) -> None:
    assert build_fetch_job(plan) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "assistant-fetch-6115aa07",
            "namespace": "ai",
            "labels": labels("fetch"),
            "ownerReferences": OWNER_REFERENCES,
            "annotations": {"slm.dev/model-cache-key": CACHE_KEY},
        },
        "spec": {
            "backoffLimit": 4,
            "activeDeadlineSeconds": 14400,
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/name": "slm-runtime-fetch",
                        "app.kubernetes.io/instance": "assistant",
                        "app.kubernetes.io/component": "fetch",
                        "app.kubernetes.io/managed-by": "slm-operator",
                    },
                    "annotations": {"slm.dev/model-cache-key": CACHE_KEY},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": POD_SECURITY,
                    "affinity": NOT_WINDOWS,
                    "containers": [
                        {
                            "name": "fetch",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "python",
                                "-m",
                                "slm_runtime",
                                "fetch",
                                "--source",
                                SOURCE,
                                "--dest",
                                f"/models/{CACHE_KEY}",
                                "--filename",
                                MODEL_FILE,
                                "--sha256",
                                SHA,
                            ],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {"memory": "1024Mi"},
                            },
                            "securityContext": CONTAINER_SECURITY,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                {"name": "model-cache", "mountPath": "/models"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "model-cache",
                            "persistentVolumeClaim": {
                                "claimName": "assistant-model-cache",
                                "readOnly": False,
                            },
                        },
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def test_deployment(plan: Plan) -> None:
    deployment = build_deployment(plan)
    assert deployment == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "assistant",
            "namespace": "ai",
            "labels": labels("server"),
            "ownerReferences": OWNER_REFERENCES,
        },
        "spec": {
            "replicas": 1,
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": "assistant",
                    "app.kubernetes.io/name": "slm-runtime",
                }
            },
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": labels("server"),
                    "annotations": {
                        "slm.dev/model-cache-key": CACHE_KEY,
                        "slm.dev/config-hash": "a98636fd44f6653f",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 45,
                    "securityContext": POD_SECURITY,
                    "affinity": NOT_WINDOWS,
                    "containers": [
                        {
                            "name": "runtime",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-m", "slm_runtime", "serve"],
                            "env": [
                                {"name": "SLM_MODEL", "value": f"/models/{CACHE_KEY}/{MODEL_FILE}"},
                                {"name": "SLM_MODEL_NAME", "value": "qwen2.5:0.5b"},
                                {"name": "SLM_FORMAT", "value": "gguf"},
                                {"name": "SLM_HOST", "value": "0.0.0.0"},
                                {"name": "SLM_PORT", "value": "8080"},
                                {"name": "SLM_DEVICE", "value": "cpu"},
                                {"name": "SLM_CONTEXT_LENGTH", "value": "4096"},
                                {"name": "SLM_BATCH_SIZE", "value": "512"},
                                {"name": "SLM_PARALLEL_REQUESTS", "value": "4"},
                                {"name": "SLM_MAX_QUEUE", "value": "64"},
                                {"name": "SLM_THREADS", "value": "0"},
                                {"name": "SLM_GPU_LAYERS", "value": "0"},
                                {"name": "SLM_FLASH_ATTENTION", "value": "auto"},
                                {"name": "SLM_KV_CACHE_TYPE", "value": "f16"},
                                {"name": "SLM_SYSTEM_PROMPT", "value": "You are terse."},
                                {
                                    "name": "SLM_DEFAULT_PARAMETERS",
                                    "value": '{"stop": ["</s>"], "temperature": 0.2}',
                                },
                                {"name": "SLM_OPENAI_API", "value": "true"},
                                {"name": "SLM_OLLAMA_API", "value": "true"},
                                {"name": "SLM_EMBEDDINGS", "value": "false"},
                                {"name": "SLM_LOG_LEVEL", "value": "info"},
                                # A mounted file: a rotated Secret reaches the runtime without a restart.
                                {"name": "SLM_API_KEY_FILE", "value": "/var/run/slm/api-key/api-key"},
                            ],
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "startupProbe": _probe("/healthz", 5, 120),
                            "livenessProbe": _probe("/healthz", 10, 3),
                            "readinessProbe": _probe("/readyz", 5, 3),
                            # 397808192 weights + 201326592 KV + 512 MiB overhead; limit x1.25.
                            "resources": {
                                "requests": {"cpu": "1", "memory": "1084Mi"},
                                "limits": {"memory": "1355Mi"},
                            },
                            "securityContext": CONTAINER_SECURITY,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                {"name": "model-cache", "mountPath": "/models", "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "api-key", "mountPath": "/var/run/slm/api-key", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "model-cache",
                            "persistentVolumeClaim": {"claimName": "assistant-model-cache", "readOnly": True},
                        },
                        {"name": "tmp", "emptyDir": {}},
                        {
                            "name": "api-key",
                            "secret": {
                                "secretName": "llm-key",
                                "items": [{"key": "token", "path": "api-key"}],
                                "defaultMode": 0o440,
                            },
                        },
                    ],
                },
            },
        },
    }


def test_service(plan: Plan) -> None:
    assert build_service(plan) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "assistant",
            "namespace": "ai",
            "labels": labels("server"),
            "ownerReferences": OWNER_REFERENCES,
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/instance": "assistant", "app.kubernetes.io/name": "slm-runtime"},
            "ports": [
                {
                    "name": "http",
                    "protocol": "TCP",
                    "port": 11434,
                    "targetPort": "http",
                    "appProtocol": "http",
                }
            ],
        },
    }


def test_config_hash_covers_the_pod_template_and_changes_with_it(plan: Plan) -> None:
    template = build_deployment(plan)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    recorded = annotations.pop("slm.dev/config-hash")
    assert recorded == config_hash(template)
    hotter = plan.spec.model_copy(
        update={"prompt": plan.spec.prompt.model_copy(update={"system": "Be verbose."})}
    )
    changed = build_deployment(dataclasses.replace(plan, spec=hotter))
    assert changed["spec"]["template"]["metadata"]["annotations"]["slm.dev/config-hash"] != recorded


def test_gpu_deployment_requests_devices_tolerates_the_taint_and_offloads(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    spec = SLMDeploymentSpec.model_validate(
        {
            "model": {"name": "llama3.1:8b"},
            "hardware": {
                "tolerations": [{"key": "team", "operator": "Exists"}],
                "nodeSelector": {"pool": "a"},
            },
            "replicas": 2,
        }
    )
    node = nvidia_node("gpu-0", 81920)
    node = dataclasses.replace(node, labels={**node.labels, "pool": "a"})
    plan = resolve(owner, spec, make_facts(catalog, settings, node))
    assert isinstance(plan, Plan), plan
    pod = build_deployment(plan)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/slm-operator/slm-runtime:0.1.0-cuda"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "SLM_DEVICE", "value": "gpu"} in container["env"]
    assert {"name": "SLM_GPU_LAYERS", "value": "-1"} in container["env"]
    assert pod["nodeSelector"] == {"pool": "a"}  # the user's; the device request selects GPU nodes
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "team", "operator": "Exists"},
    ]
    # A device per Pod and a shared claim: Pods are replaced, never surged past the devices.
    assert build_deployment(plan)["spec"]["strategy"] == {"type": "Recreate"}
    assert build_pvc(plan)["spec"]["accessModes"] == ["ReadWriteMany"]
    # The fetch Job lands where the servers will, without taking a device.
    fetch_pod = build_fetch_job(plan)["spec"]["template"]["spec"]
    assert fetch_pod["nodeSelector"] == pod["nodeSelector"]
    assert fetch_pod["tolerations"] == pod["tolerations"]
    assert "nvidia.com/gpu" not in fetch_pod["containers"][0]["resources"]["requests"]


def test_onnx_deployment_names_the_execution_provider(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    spec = SLMDeploymentSpec.model_validate(
        {"model": {"name": "phi4:mini", "format": "onnx"}, "hardware": {"preferred": "cpu"}}
    )
    plan = resolve(owner, spec, make_facts(catalog, settings, cpu_node()))
    assert isinstance(plan, Plan), plan
    env = {
        e["name"]: e.get("value")
        for e in build_deployment(plan)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SLM_FORMAT"] == "onnx"
    assert env["SLM_EXECUTION_PROVIDER"] == "cpu"
    assert env["SLM_MODEL"] == f"/models/{plan.model.cache_key}"  # an ONNX model is a folder
    assert "SLM_GPU_LAYERS" not in env
    assert "--filename" not in build_fetch_job(plan)["spec"]["template"]["spec"]["containers"][0]["command"]


def test_requantizing_fetch_passes_quantize(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    spec = SLMDeploymentSpec.model_validate(
        {"model": {"name": "nomic-embed-text", "quantization": "q8_0"}, "hardware": {"preferred": "cpu"}}
    )
    plan = resolve(owner, spec, make_facts(catalog, settings, cpu_node()))
    assert isinstance(plan, Plan), plan
    command = build_fetch_job(plan)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--filename", "nomic-embed-text-v1.5-q8_0.gguf", "--quantize", "q8_0"]


def test_env_names_stay_within_the_declared_contract(plan: Plan) -> None:
    for variant in (plan, dataclasses.replace(plan, spec=plan.spec.model_copy(update={"replicas": 3}))):
        names = [
            e["name"] for e in build_deployment(variant)["spec"]["template"]["spec"]["containers"][0]["env"]
        ]
        assert set(names) <= set(RUNTIME_ENV_NAMES)
        assert len(names) == len(set(names))


def test_every_child_is_labelled_and_restricted(plan: Plan) -> None:
    for child in (build_pvc(plan), build_fetch_job(plan), build_deployment(plan), build_service(plan)):
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "slm-operator"
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == "assistant"
        assert len(child["metadata"]["name"]) <= 63
    for workload in (build_fetch_job(plan), build_deployment(plan)):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


SOURCE_CREDENTIALS: dict[str, Any] = {
    "hfTokenSecretRef": {"name": "hf", "key": "token"},
    "headersFrom": [
        {"header": "X-Api-Key", "secretKeyRef": {"name": "gateway", "key": "api-key"}},
        {"header": "X-Tenant", "prefix": "tenant ", "secretKeyRef": {"name": "hf", "key": "tenant"}},
        # The same key again: one file serves both headers.
        {"header": "Cookie", "prefix": "session=", "secretKeyRef": {"name": "gateway", "key": "api-key"}},
    ],
}


def _plan_for(owner: Owner, catalog: Catalog, settings: OperatorSettings, model: dict[str, Any]) -> Plan:
    spec = SLMDeploymentSpec.model_validate({"model": model, "hardware": {"preferred": "cpu"}})
    plan = resolve(owner, spec, make_facts(catalog, settings, cpu_node()))
    assert isinstance(plan, Plan), plan
    return plan


def test_source_credentials_are_files_that_the_flag_names(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    plan = _plan_for(owner, catalog, settings, {"name": "qwen2.5", **SOURCE_CREDENTIALS})
    pod = build_fetch_job(plan)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "env" not in container  # no value, and no secretKeyRef either: files only
    root = "/var/run/secrets/slm.dev/source"
    assert container["command"][-2:] == [
        "--headers-from",
        f'[{{"header":"Authorization","prefix":"Bearer ","file":"{root}/hf/token","secret":"hf","key":"token"}},'
        f'{{"header":"X-Api-Key","prefix":"","file":"{root}/gateway/api-key","secret":"gateway","key":"api-key"}},'
        f'{{"header":"X-Tenant","prefix":"tenant ","file":"{root}/hf/tenant","secret":"hf","key":"tenant"}},'
        f'{{"header":"Cookie","prefix":"session=","file":"{root}/gateway/api-key","secret":"gateway",'
        '"key":"api-key"}]',
    ]
    assert container["volumeMounts"] == [
        {"name": "model-cache", "mountPath": "/models"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "source-credentials", "mountPath": root, "readOnly": True},
    ]
    assert pod["volumes"][-1] == {
        "name": "source-credentials",
        "projected": {
            # Root-owned files: readable by the fetcher through its fsGroup, by no one else.
            "defaultMode": 0o440,
            "sources": [
                {
                    "secret": {
                        "name": "hf",
                        "items": [
                            {"key": "token", "path": "hf/token"},
                            {"key": "tenant", "path": "hf/tenant"},
                        ],
                        # A missing Secret or key: the fetcher names it, instead of a Pod stuck mounting.
                        "optional": True,
                    }
                },
                {
                    "secret": {
                        "name": "gateway",
                        "items": [{"key": "api-key", "path": "gateway/api-key"}],
                        "optional": True,
                    }
                },
            ],
        },
    }
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 65532
    serving = build_deployment(plan)["spec"]["template"]["spec"]
    assert "source-credentials" not in str(serving)
    assert "gateway" not in str(serving)


def test_credentials_are_not_part_of_the_model_version(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    """Adding, removing or renaming a credential neither fetches again nor rolls the serving Pods."""
    for model in ({"name": "qwen2.5"}, {"source": SOURCE}):
        plain = _plan_for(owner, catalog, settings, model)
        variants = [
            _plan_for(owner, catalog, settings, {**model, **SOURCE_CREDENTIALS}),
            _plan_for(
                owner,
                catalog,
                settings,
                {**model, "headersFrom": [{"header": "X-Other", "secretKeyRef": {"name": "n", "key": "k"}}]},
            ),
        ]
        for variant in variants:
            assert variant.model.cache_key == plain.model.cache_key
            assert build_fetch_job(variant)["metadata"] == build_fetch_job(plain)["metadata"]
            assert build_deployment(variant) == build_deployment(plain)
            assert config_hash(build_deployment(variant)) == config_hash(build_deployment(plain))


def test_credentials_go_only_to_http_sources(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    # A catalog name that the operator's catalog mirrors on a claim: the credentials were for upstream.
    plan = _plan_for(owner, catalog, settings, {"name": "qwen2.5", **SOURCE_CREDENTIALS})
    mirrored = dataclasses.replace(plan, model=dataclasses.replace(plan.model, source="pvc://mirror/q.gguf"))
    pod = build_fetch_job(mirrored)["spec"]["template"]["spec"]
    assert "--headers-from" not in pod["containers"][0]["command"]
    assert all(v["name"] != "source-credentials" for v in pod["volumes"])
    # The Hugging Face token goes to hf:// sources only (admission refuses it elsewhere, too).
    https = _plan_for(
        owner, catalog, settings, {"source": "https://models.example/m.gguf", **SOURCE_CREDENTIALS}
    )
    command = build_fetch_job(https)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "Authorization" not in command[-1] and "X-Api-Key" in command[-1]


def test_pvc_source_claim_is_mounted_read_only_for_the_fetcher(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    spec = SLMDeploymentSpec.model_validate(
        {"model": {"source": "pvc://shared-models/llm/tiny-q4_k_m.gguf"}, "hardware": {"preferred": "cpu"}}
    )
    plan = resolve(owner, spec, make_facts(catalog, settings, cpu_node()))
    assert isinstance(plan, Plan), plan
    pod = build_fetch_job(plan)["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"][-1] == {
        "name": "model-source",
        "mountPath": "/mnt/pvc/shared-models",
        "readOnly": True,
    }
    assert pod["volumes"][-1] == {
        "name": "model-source",
        "persistentVolumeClaim": {"claimName": "shared-models", "readOnly": True},
    }
