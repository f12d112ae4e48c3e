"""Names and labels of the children of an SLMDeployment (pure, length-safe)."""

from __future__ import annotations

import hashlib

from slm_operator.api.v1alpha1 import MAX_NAME_LENGTH

FIELD_MANAGER = "slm-operator"
RUNTIME_APP_NAME = "slm-runtime"
FETCH_APP_NAME = "slm-runtime-fetch"
MANAGED_BY = "slm-operator"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
CONFIG_HASH_ANNOTATION = "slm.dev/config-hash"
MODEL_KEY_ANNOTATION = "slm.dev/model-cache-key"
CACHE_CLAIM_SUFFIX = "-model-cache"
FETCH_JOB_INFIX = "-fetch-"


def selector_labels(name: str) -> dict[str, str]:
    """The labels selecting serving Pods; stable for the life of the resource (selectors are immutable)."""
    return {INSTANCE_LABEL: name, NAME_LABEL: RUNTIME_APP_NAME}


def selector_string(name: str) -> str:
    """status.selector, the scale subresource's labelSelectorPath target."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def standard_labels(name: str, component: str) -> dict[str, str]:
    return {
        NAME_LABEL: RUNTIME_APP_NAME,
        INSTANCE_LABEL: name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        PART_OF_LABEL: "slm-operator",
    }


def deployment_name(name: str) -> str:
    return name


def service_name(name: str) -> str:
    return name


def cache_claim_name(name: str) -> str:
    return f"{name}{CACHE_CLAIM_SUFFIX}"


def fetch_job_name(name: str, cache_key: str) -> str:
    """One Job per model version: Job specs are immutable, so a new model gets a new Job."""
    digest = hashlib.sha256(cache_key.encode()).hexdigest()[:8]
    return f"{name}{FETCH_JOB_INFIX}{digest}"


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"http://{service_name(name)}.{namespace}.svc.cluster.local:{port}"


# The CRD's name-length rule is derived from the longest child name; keep them in step.
assert len(fetch_job_name("x" * MAX_NAME_LENGTH, "")) == 63
