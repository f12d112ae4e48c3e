"""The fetch Job: downloads, verifies (and optionally requantizes) the model into the cache claim."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from slm_operator.api.v1alpha1 import HTTP_SOURCE_PATTERN, ModelSpec
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
from slm_operator.facts import HOSTNAME_LABEL
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
from slm_operator.plan import MODELS_MOUNT_PATH, Plan

FETCH_CONTAINER = "fetch"
# Where `slm_runtime fetch` looks for pvc://claim/path sources (FetchSettings.pvc_root).
PVC_SOURCE_ROOT = "/mnt/pvc"
SOURCE_VOLUME = "model-source"
# The `slm_runtime fetch` flags this builder may emit (checked against the runtime's FetchSettings).
FETCH_FLAGS: tuple[str, ...] = (
    "--source",
    "--dest",
    "--filename",
    "--sha256",
    "--quantize",
    "--headers-from",
)
# Source credentials reach the fetcher as files of one projected volume, <secret>/<key> under the
# mount, and the flag names only those paths: no Secret value is ever in the Job or its environment.
CREDENTIALS_VOLUME = "source-credentials"
CREDENTIALS_MOUNT_PATH = "/var/run/secrets/slm.dev/source"
# The kubelet makes Secret files root-owned and, under fsGroup, group-readable: 0440 with the
# pod's fsGroup is what the non-root fetcher can read (0400 would lock it out), and no one else.
CREDENTIALS_FILE_MODE = 0o440
_MiB = 1 << 20


@dataclass(frozen=True)
class SourceCredential:
    """A request header the fetcher sends to the source, its value in a Secret key."""

    header: str
    prefix: str
    secret: str
    key: str

    @property
    def path(self) -> str:
        return f"{CREDENTIALS_MOUNT_PATH}/{self.secret}/{self.key}"


def source_credentials(model: ModelSpec, source: str) -> list[SourceCredential]:
    """The headers for the resolved ``source``: the Hugging Face token first, then headersFrom.

    Only an HTTP source takes them: a catalog name may resolve to a mirror on a claim (pvc://), and
    the token only to an hf:// source, so that it never goes to another host.
    """
    if not re.match(HTTP_SOURCE_PATTERN, source):
        return []
    found: list[SourceCredential] = []
    token = model.hf_token_secret_ref
    if token is not None and token.name and source.startswith("hf://"):
        found.append(SourceCredential("Authorization", "Bearer ", token.name, token.key))
    found += [
        SourceCredential(h.header, h.prefix, h.secret_key_ref.name, h.secret_key_ref.key)
        for h in model.headers_from
    ]
    return found


def headers_from_arg(credentials: list[SourceCredential]) -> str:
    """The `--headers-from` value: each header's name, prefix, file and Secret (for messages)."""
    entries = [
        {"header": c.header, "prefix": c.prefix, "file": c.path, "secret": c.secret, "key": c.key}
        for c in credentials
    ]
    return json.dumps(entries, separators=(",", ":"))


def credentials_volume(credentials: list[SourceCredential]) -> dict[str, Any]:
    """One read-only projected volume holding each referenced Secret key once.

    Optional sources: a missing Secret or key leaves its file out, and the fetcher fails at once
    naming the Secret and key, where a required one would hold the Pod in ContainerCreating until
    the Job's deadline.
    """
    keys_by_secret: dict[str, list[str]] = {}
    for credential in credentials:
        keys = keys_by_secret.setdefault(credential.secret, [])
        if credential.key not in keys:
            keys.append(credential.key)
    return {
        "name": CREDENTIALS_VOLUME,
        "projected": {
            "defaultMode": CREDENTIALS_FILE_MODE,
            "sources": [
                {
                    "secret": {
                        "name": secret,
                        "items": [{"key": key, "path": f"{secret}/{key}"} for key in keys],
                        "optional": True,
                    }
                }
                for secret, keys in keys_by_secret.items()
            ],
        },
    }


def fetch_command(plan: Plan) -> list[str]:
    model = plan.model
    command = ["python", "-m", "slm_runtime", "fetch", "--source", model.source, "--dest", model.cache_dir]
    if model.file_name:
        command += ["--filename", model.file_name]
    if model.sha256:
        command += ["--sha256", model.sha256.lower()]
    if model.requantize:
        command += ["--quantize", model.requantize]
    credentials = source_credentials(plan.spec.model, model.source)
    if credentials:
        command += ["--headers-from", headers_from_arg(credentials)]
    return command


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
    credentials = source_credentials(plan.spec.model, model.source)
    if credentials:
        mounts.append({"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_MOUNT_PATH, "readOnly": True})
        volumes.append(credentials_volume(credentials))
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
