"""The fetch Job: downloads, verifies (and optionally requantizes) the model into the cache claim."""

from __future__ import annotations

from typing import Any

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
from slm_operator.naming import (
    COMPONENT_LABEL,
    FETCH_APP_NAME,
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_KEY_ANNOTATION,
    NAME_LABEL,
    fetch_job_name,
)
from slm_operator.resolve import HOSTNAME_LABEL, MODELS_MOUNT_PATH, Plan

FETCH_CONTAINER = "fetch"
# Where `slm_runtime fetch` looks for pvc://claim/path sources (FetchSettings.pvc_root).
PVC_SOURCE_ROOT = "/mnt/pvc"
SOURCE_VOLUME = "model-source"
# The `slm_runtime fetch` flags this builder may emit (checked against the runtime's FetchSettings).
FETCH_FLAGS: tuple[str, ...] = ("--source", "--dest", "--filename", "--sha256", "--quantize")
FETCH_ENV_NAMES: tuple[str, ...] = ("SLM_HF_TOKEN",)
_MiB = 1 << 20


def fetch_command(plan: Plan) -> list[str]:
    model = plan.model
    command = ["python", "-m", "slm_runtime", "fetch", "--source", model.source, "--dest", model.cache_dir]
    if model.file_name:
        command += ["--filename", model.file_name]
    if model.sha256:
        command += ["--sha256", model.sha256.lower()]
    if model.requantize:
        command += ["--quantize", model.requantize]
    return command


def fetch_env(plan: Plan) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    token = plan.spec.model.hf_token_secret_ref
    if token is not None and token.name:
        env.append(
            {"name": "SLM_HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}}
        )
    return env


def source_claim(source: str) -> str:
    """The claim of a pvc://claim/path source, else ""."""
    if not source.startswith("pvc://"):
        return ""
    return source.removeprefix("pvc://").split("/", 1)[0]


def build_fetch_job(plan: Plan, *, attached_node: str = "") -> dict[str, Any]:
    """A Job named after the model version; it lands where the servers will (same scheduling).

    ``attached_node``: the node that has a single-attach (ReadWriteOnce) cache claim mounted now
    (a serving Pod there); the Job must run there too, or it would wait for a volume that cannot
    attach twice.
    """
    name = plan.owner.name
    model = plan.model
    memory_limit = 1024 * _MiB
    if model.requantize:
        # llama.cpp's quantizer maps the source and writes the target; leave room for both.
        memory_limit += model.size_bytes or plan.placement.memory.weights_bytes
    job_metadata = metadata(plan, fetch_job_name(name, model.cache_key), "fetch")
    job_metadata["annotations"] = {MODEL_KEY_ANNOTATION: model.cache_key}
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": plan.runtime.fetch_image,
        "imagePullPolicy": plan.runtime.image_pull_policy,
        "command": fetch_command(plan),
    }
    env = fetch_env(plan)
    if env:
        container["env"] = env
    mounts: list[dict[str, Any]] = [
        {"name": CACHE_VOLUME, "mountPath": MODELS_MOUNT_PATH},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [cache_volume(plan, read_only=False), tmp_volume()]
    claim = source_claim(model.source)
    if claim:
        mounts.append({"name": SOURCE_VOLUME, "mountPath": f"{PVC_SOURCE_ROOT}/{claim}", "readOnly": True})
        volumes.append(
            {"name": SOURCE_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **scheduling(plan),
        "containers": [
            {
                **container,
                "resources": {
                    "requests": {"cpu": "100m", "memory": "256Mi"},
                    "limits": {"memory": f"{-(-memory_limit // _MiB)}Mi"},
                },
                "securityContext": container_security_context(),
                # The fetcher's last error line becomes the Job's failure message in status.
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if attached_node:
        pod_spec["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), HOSTNAME_LABEL: attached_node}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_metadata,
        "spec": {
            "backoffLimit": plan.runtime.fetch_backoff_limit,
            "activeDeadlineSeconds": plan.runtime.fetch_active_deadline_seconds,
            "template": {
                "metadata": {
                    # Not the serving labels: the Service and status.selector must not pick up fetchers.
                    "labels": {
                        NAME_LABEL: FETCH_APP_NAME,
                        INSTANCE_LABEL: name,
                        COMPONENT_LABEL: "fetch",
                        MANAGED_BY_LABEL: MANAGED_BY,
                    },
                    "annotations": {MODEL_KEY_ANNOTATION: model.cache_key},
                },
                "spec": pod_spec,
            },
        },
    }
