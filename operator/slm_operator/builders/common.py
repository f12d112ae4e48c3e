"""Pieces shared by the child builders: metadata, owner references, PodSecurity `restricted`."""

from __future__ import annotations

from typing import Any

from slm_operator.naming import standard_labels
from slm_operator.plan import Plan

RUNTIME_UID = 65532  # the runtime images' non-root user (distroless "nonroot")
TMP_VOLUME = "tmp"
CACHE_VOLUME = "model-cache"


def owner_reference(plan: Plan) -> dict[str, Any]:
    owner = plan.owner
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(plan: Plan, name: str, component: str, *, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": plan.owner.namespace,
        "labels": standard_labels(plan.owner.name, component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(plan)]
    return meta


def pod_security_context() -> dict[str, Any]:
    # PodSecurity "restricted": non-root, a seccomp profile; fsGroup makes the claim writable.
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tmp_volume() -> dict[str, Any]:
    # A writable /tmp under a read-only root filesystem (Python, tokenizers and HTTP clients use it).
    return {"name": TMP_VOLUME, "emptyDir": {}}


def cache_volume(plan: Plan, *, read_only: bool) -> dict[str, Any]:
    return {
        "name": CACHE_VOLUME,
        "persistentVolumeClaim": {"claimName": plan.cache.claim_name, "readOnly": read_only},
    }


def scheduling(plan: Plan) -> dict[str, Any]:
    """nodeSelector, tolerations and required node affinity from placement (user's merged in)."""
    placement = plan.placement
    fields: dict[str, Any] = {}
    if placement.node_selector:
        fields["nodeSelector"] = dict(placement.node_selector)
    if placement.node_affinity:
        fields["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [dict(e) for e in placement.node_affinity]}]
                }
            }
        }
    if placement.tolerations:
        fields["tolerations"] = [dict(t) for t in placement.tolerations]
    if plan.runtime.image_pull_secrets:
        fields["imagePullSecrets"] = [{"name": name} for name in plan.runtime.image_pull_secrets]
    return fields
