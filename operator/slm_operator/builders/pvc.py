"""The model cache PersistentVolumeClaim."""

from __future__ import annotations

from typing import Any

from slm_operator.builders.common import metadata
from slm_operator.plan import Plan


def build_pvc(plan: Plan) -> dict[str, Any]:
    """The cache claim; not owned when cache.retain is set, so deleting the resource keeps the model."""
    cache = plan.cache
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(plan, cache.claim_name, "model-cache", owned=not cache.retain),
        "spec": spec,
    }
