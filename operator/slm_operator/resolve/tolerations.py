"""The tolerations a placement carries, and the node taints they leave untolerated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.facts import NodeFacts, Taint
from slm_operator.settings import AcceleratorSettings


def _toleration_matches(toleration: Mapping[str, Any], taint: Taint) -> bool:
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    if key != taint.key:
        return False
    return operator == "Exists" or (toleration.get("value") or "") == taint.value


def untolerated_taints(node: NodeFacts, tolerations: Sequence[Mapping[str, Any]]) -> list[Taint]:
    """Taints that keep Pods with `tolerations` off `node` (PreferNoSchedule only discourages)."""
    return [
        taint
        for taint in node.taints
        if taint.effect in ("NoSchedule", "NoExecute")
        and not any(_toleration_matches(tol, taint) for tol in tolerations)
    ]


def placement_tolerations(accelerator: AcceleratorSettings, spec: SLMDeploymentSpec) -> list[dict[str, Any]]:
    """The accelerator's tolerations, then the user's not already among them, as Pod tolerations."""
    tolerations: list[dict[str, Any]] = []
    for tol in accelerator.tolerations:
        item: dict[str, Any] = {"key": tol.key, "operator": tol.operator}
        if tol.operator == "Equal":
            item["value"] = tol.value
        if tol.effect:
            item["effect"] = tol.effect
        tolerations.append(item)
    for user in spec.hardware.tolerations:
        item = {"key": user.key, "operator": user.operator} if user.key else {"operator": user.operator}
        if user.operator == "Equal":
            item["value"] = user.value
        if user.effect:
            item["effect"] = user.effect
        if user.toleration_seconds is not None:
            item["tolerationSeconds"] = user.toleration_seconds
        if item not in tolerations:
            tolerations.append(item)
    return tolerations
