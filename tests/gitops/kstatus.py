"""kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status) rules for a custom resource, in Python.

What Flux, kpt, `kubectl apply --wait`-style tools and Argo CD's kstatus-aware checks compute for a
kind they have no type-specific rule for, following `status.Compute` and `checkGenericProperties`:

1. `metadata.deletionTimestamp` set                         -> Terminating
2. `status.observedGeneration` present and != generation    -> InProgress (LatestGenerationNotObserved)
3. the first condition (in list order) that is
   `Reconciling=True`                                       -> InProgress (its message)
   `Stalled=True`                                           -> Failed (its message)
4. no Reconciling/Stalled condition at all (the resource has not adopted them), a `Ready`
   condition decides (the kstatus README's "The Ready Condition"): False/Unknown -> InProgress,
   True -> Current
5. otherwise                                                -> Current

Two consequences the operator has to live with (see the tests): an object with no status yet is
Current (kstatus cannot tell that a controller will act), and a resource that adopted
Reconciling/Stalled is Current whenever both are False, whatever Ready says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    IN_PROGRESS = "InProgress"
    FAILED = "Failed"
    CURRENT = "Current"
    TERMINATING = "Terminating"


@dataclass(frozen=True)
class Result:
    status: Status
    message: str
    reason: str = ""


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = obj.get("status") or {}
    conditions = status.get("conditions") or []
    return [c for c in conditions if isinstance(c, Mapping)]


def compute(obj: Mapping[str, Any]) -> Result:
    metadata = obj.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return Result(Status.TERMINATING, "Resource scheduled for deletion")

    generation = metadata.get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is not None and observed is not None and int(observed) != int(generation):
        kind = obj.get("kind", "")
        message = f"{kind} generation is {generation}, but latest observed generation is {observed}"
        return Result(Status.IN_PROGRESS, message, "LatestGenerationNotObserved")

    conditions = _conditions(obj)
    for condition in conditions:
        if condition.get("type") == "Reconciling" and condition.get("status") == "True":
            return Result(
                Status.IN_PROGRESS, str(condition.get("message", "")), str(condition.get("reason", ""))
            )
        if condition.get("type") == "Stalled" and condition.get("status") == "True":
            return Result(Status.FAILED, str(condition.get("message", "")), str(condition.get("reason", "")))

    adopted = any(c.get("type") in {"Reconciling", "Stalled"} for c in conditions)
    if not adopted:
        for condition in conditions:
            if condition.get("type") == "Ready":
                if condition.get("status") == "True":
                    return Result(
                        Status.CURRENT, str(condition.get("message", "")) or "Resource is Ready", "Ready"
                    )
                return Result(
                    Status.IN_PROGRESS, str(condition.get("message", "")), str(condition.get("reason", ""))
                )

    return Result(Status.CURRENT, "Resource is current")
