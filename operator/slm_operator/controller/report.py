"""What the operator tells the world about an SLMDeployment: its status, and Events.

Status is written only when the computed one differs from what the object has (fields users write,
like status.benchmark, carried over), so a steady state writes nothing. Events are posted once per
distinct message: a decision (placed, or why not) and the notices of the children's convergence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from slm_operator.api.v1alpha1 import SLMDeploymentSpec, SLMDeploymentStatus
from slm_operator.k8s.client import KubeApi
from slm_operator.metrics import OperatorMetrics
from slm_operator.observe import ObservedChildren
from slm_operator.plan import Owner, Plan, ResolveFailure
from slm_operator.status import carry_user_fields, compute_status, invalid_spec_status

Key = tuple[str, str]  # (namespace, name)


class Reporter:
    """Writes status when it changed and posts Events, remembering what it wrote and said."""

    def __init__(self, api: KubeApi, metrics: OperatorMetrics, clock: Callable[[], datetime]) -> None:
        self._api = api
        self._metrics = metrics
        self._clock = clock
        # resourceVersion of our own last status write per object: the watch event it
        # causes needs no reconcile.
        self.own_writes: dict[Key, str] = {}
        self._last_decision: dict[Key, tuple[str, str]] = {}
        self._last_notice: dict[Key, tuple[str, str]] = {}

    def is_own_write(self, key: Key, resource_version: str) -> bool:
        return bool(resource_version) and self.own_writes.get(key) == resource_version

    def forget(self, key: Key) -> None:
        self.own_writes.pop(key, None)
        self._last_decision.pop(key, None)
        self._last_notice.pop(key, None)

    async def notify(self, owner: Owner, reason: str, message: str, type_: str) -> None:
        """Post an Event about an SLMDeployment once per distinct message."""
        key = (owner.namespace, owner.name)
        event = (reason, message)
        if self._last_notice.get(key) == event:
            return
        self._last_notice[key] = event
        involved = {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid},
        }
        await self._api.event(involved, reason=reason, message=message, type_=type_)

    async def write_status(
        self,
        body: Mapping[str, Any],
        owner: Owner,
        spec: SLMDeploymentSpec | None,
        generation: int,
        outcome: Plan | ResolveFailure,
        observed: ObservedChildren,
        previous: SLMDeploymentStatus,
    ) -> bool:
        """Write the status computed from `outcome` and `observed` if it changed; whether it did.

        `spec` None: the spec did not validate (`outcome` says why).
        """
        if spec is None:
            assert isinstance(outcome, ResolveFailure)
            status = invalid_spec_status(
                body.get("status") or {},
                previous,
                owner=owner,
                generation=generation,
                failure=outcome,
                now=self._clock(),
            )
        else:
            status = compute_status(
                owner=owner,
                spec=spec,
                generation=generation,
                outcome=outcome,
                observed=observed,
                previous=previous,
                now=self._clock(),
            )
        status = carry_user_fields(status, body.get("status") or {})
        if status == (body.get("status") or {}):
            return False
        written = await self._api.patch_status("SLMDeployment", owner.namespace, owner.name, status)
        written_meta = written.get("metadata") or {}
        if int(written_meta.get("generation", 0)) == generation:
            # Our write comes back as a watch event; when nothing else changed meanwhile
            # (same generation), that event needs no reconcile.
            self.own_writes[(owner.namespace, owner.name)] = str(written_meta.get("resourceVersion", ""))
        await self._announce(body, outcome)
        return True

    async def _announce(self, body: Mapping[str, Any], outcome: Plan | ResolveFailure) -> None:
        """One Event per new decision: where it was placed and why, or why it cannot be."""
        meta = body["metadata"]
        key = (str(meta["namespace"]), str(meta["name"]))
        event: tuple[str, str]
        if isinstance(outcome, ResolveFailure):
            event = (outcome.reason, outcome.message)
            type_ = "Warning"
        else:
            placement = outcome.placement
            event = (
                "Placed",
                f"{outcome.model.name} on {placement.tier} ({placement.accelerator}, "
                f"{outcome.model.quantization or outcome.model.format}): {placement.reason}",
            )
            type_ = "Normal"
        if self._last_decision.get(key) == event:
            return
        self._last_decision[key] = event
        if not isinstance(outcome, ResolveFailure):
            self._metrics.placements.labels(tier=outcome.placement.tier).inc()
        await self._api.event(body, reason=event[0], message=event[1], type_=type_)
