"""The serving Deployment: `slm_runtime serve` configured through the SLM_* contract variables."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from slm_operator.api.v1alpha1 import SecretKeySelector
from slm_operator.builders.common import (
    CACHE_VOLUME,
    TMP_VOLUME,
    cache_volume,
    container_security_context,
    metadata,
    pod_security_context,
    scheduling,
    tmp_volume,
)
from slm_operator.builders.service import HTTP_PORT_NAME
from slm_operator.naming import (
    CONFIG_HASH_ANNOTATION,
    MODEL_KEY_ANNOTATION,
    deployment_name,
    selector_labels,
    standard_labels,
)
from slm_operator.plan import MODELS_MOUNT_PATH, Plan

RUNTIME_CONTAINER = "runtime"
SERVE_COMMAND = ("python", "-m", "slm_runtime", "serve")
# Every variable the Deployment may set: the operator side of the runtime settings contract
# (a test checks each is declared by slm_runtime.settings.ServeSettings).
RUNTIME_ENV_NAMES: tuple[str, ...] = (
    "SLM_MODEL",
    "SLM_MODEL_SHA256",
    "SLM_MODEL_NAME",
    "SLM_FORMAT",
    "SLM_HOST",
    "SLM_PORT",
    "SLM_DEVICE",
    "SLM_EXECUTION_PROVIDER",
    "SLM_CONTEXT_LENGTH",
    "SLM_BATCH_SIZE",
    "SLM_PARALLEL_REQUESTS",
    "SLM_MAX_QUEUE",
    "SLM_THREADS",
    "SLM_GPU_LAYERS",
    "SLM_FLASH_ATTENTION",
    "SLM_KV_CACHE_TYPE",
    "SLM_SYSTEM_PROMPT",
    "SLM_CHAT_TEMPLATE",
    "SLM_DEFAULT_PARAMETERS",
    "SLM_API_KEY_FILE",
    "SLM_OPENAI_API",
    "SLM_OLLAMA_API",
    "SLM_EMBEDDINGS",
    "SLM_LOG_LEVEL",
)
# Model loading happens before the server answers; allow 10 minutes for a large model to load.
STARTUP_PERIOD_SECONDS = 5
STARTUP_FAILURE_THRESHOLD = 120
TERMINATION_GRACE_SECONDS = 45  # the runtime drains for 30 s on SIGTERM
API_KEY_VOLUME = "api-key"
API_KEY_MOUNT_PATH = "/var/run/slm/api-key"
API_KEY_FILE = "api-key"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def runtime_env(plan: Plan, model_sha256: str = "") -> list[dict[str, Any]]:
    """The container's environment, in contract order; optional values only when set.

    `model_sha256` is the digest the fetch recorded for what SLM_MODEL points at (a folder's
    manifest digest); the runtime checks the model against it before loading.
    """
    spec = plan.spec
    opt = spec.optimization
    model = plan.model
    placement = plan.placement
    env: list[tuple[str, str]] = [("SLM_MODEL", model.path)]
    if model_sha256:
        env.append(("SLM_MODEL_SHA256", model_sha256))
    env += [
        ("SLM_MODEL_NAME", model.name),
        ("SLM_FORMAT", model.format),
        ("SLM_HOST", "0.0.0.0"),
        ("SLM_PORT", str(plan.runtime.container_port)),
        ("SLM_DEVICE", placement.tier),
    ]
    if model.format == "onnx":
        env.append(("SLM_EXECUTION_PROVIDER", placement.execution_provider))
    env += [
        ("SLM_CONTEXT_LENGTH", str(opt.max_context)),
        ("SLM_BATCH_SIZE", str(opt.batch_size)),
        ("SLM_PARALLEL_REQUESTS", str(opt.parallel_requests)),
        ("SLM_MAX_QUEUE", str(opt.max_queue)),
        ("SLM_THREADS", str(opt.threads)),
    ]
    if model.format == "gguf":
        env.append(("SLM_GPU_LAYERS", str(opt.gpu_layers if placement.tier == "gpu" else 0)))
    env += [
        ("SLM_FLASH_ATTENTION", opt.flash_attention),
        ("SLM_KV_CACHE_TYPE", opt.kv_cache_type),
    ]
    if spec.prompt.system:
        env.append(("SLM_SYSTEM_PROMPT", spec.prompt.system))
    if spec.prompt.template:
        env.append(("SLM_CHAT_TEMPLATE", spec.prompt.template))
    if spec.prompt.parameters:
        env.append(("SLM_DEFAULT_PARAMETERS", json.dumps(spec.prompt.parameters, sort_keys=True)))
    env += [("SLM_OPENAI_API", _bool(spec.api.openai)), ("SLM_OLLAMA_API", _bool(spec.api.ollama))]
    embeddings = spec.api.embeddings if spec.api.embeddings is not None else model.embedding
    if embeddings is not None:
        env.append(("SLM_EMBEDDINGS", _bool(embeddings)))
    env.append(("SLM_LOG_LEVEL", plan.runtime.log_level))
    if _api_key_secret(plan) is not None:
        # A file, not an env var: kubelet updates a mounted Secret in place and the runtime reads it
        # again, so rotating the key needs no restart (an env var would keep the old key forever).
        env.append(("SLM_API_KEY_FILE", f"{API_KEY_MOUNT_PATH}/{API_KEY_FILE}"))
    return [{"name": name, "value": value} for name, value in env]


def _api_key_secret(plan: Plan) -> SecretKeySelector | None:
    secret = plan.spec.api.api_key_secret_ref
    return secret if secret is not None and secret.name else None


def api_key_volume(secret: SecretKeySelector) -> dict[str, Any]:
    """The Secret's one key as a file readable by the runtime's group (fsGroup) only."""
    return {
        "name": API_KEY_VOLUME,
        "secret": {
            "secretName": secret.name,
            "items": [{"key": secret.key, "path": API_KEY_FILE}],
            "defaultMode": 0o440,
        },
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def config_hash(pod_template: dict[str, Any]) -> str:
    """Digest of the effective configuration (pod template and model version)."""
    return hashlib.sha256(json.dumps(pod_template, sort_keys=True).encode()).hexdigest()[:16]


def build_deployment(plan: Plan, *, model_sha256: str = "") -> dict[str, Any]:
    """The serving Deployment; `model_sha256` (the fetched model's digest) is checked at start-up."""
    name = plan.owner.name
    placement = plan.placement
    container: dict[str, Any] = {
        "name": RUNTIME_CONTAINER,
        "image": placement.image,
        "imagePullPolicy": plan.runtime.image_pull_policy,
        "command": list(SERVE_COMMAND),
        "env": runtime_env(plan, model_sha256),
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": plan.runtime.container_port, "protocol": "TCP"}],
        "startupProbe": _probe("/healthz", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 3),
        "resources": {"requests": dict(plan.requests), "limits": dict(plan.limits)},
        "securityContext": container_security_context(),
        # A start-up failure's one line (e.g. "ModelCorrupted: ...") is what the operator reads.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": CACHE_VOLUME, "mountPath": MODELS_MOUNT_PATH, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ],
    }
    secret = _api_key_secret(plan)
    volumes = [cache_volume(plan, read_only=True), tmp_volume()]
    if secret is not None:
        container["volumeMounts"].append(
            {"name": API_KEY_VOLUME, "mountPath": API_KEY_MOUNT_PATH, "readOnly": True}
        )
        volumes.append(api_key_volume(secret))
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # Service links would inject variables such as SLM_PORT=tcp://... for a Service named "slm".
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(),
        **scheduling(plan),
        "containers": [container],
        "volumes": volumes,
    }
    if placement.runtime_class_name:
        pod_spec["runtimeClassName"] = placement.runtime_class_name
    template_labels = standard_labels(name, "server")
    template: dict[str, Any] = {
        "metadata": {"labels": template_labels, "annotations": {MODEL_KEY_ANNOTATION: plan.model.cache_key}},
        "spec": pod_spec,
    }
    template["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = config_hash(template)
    # A single-attach claim or a scarce device would deadlock a surge; replace Pods instead.
    exclusive = plan.cache.access_mode != "ReadWriteMany" or placement.device_count > 0
    strategy: dict[str, Any] = (
        {"type": "Recreate"}
        if exclusive
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(plan, deployment_name(name), "server"),
        "spec": {
            "replicas": plan.spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": strategy,
            "template": template,
        },
    }
