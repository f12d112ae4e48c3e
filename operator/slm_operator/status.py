"""Status of an SLMDeployment from the plan and the observed children (pure, kstatus semantics).

Conditions: `Placed`, `ModelCached`, `Ready` (true only when the endpoint serves), and kstatus'
`Reconciling` (work in progress) and `Stalled` (stuck until something changes). Each carries the
generation it was computed from; `lastTransitionTime` moves only when a condition's status flips,
so recomputing an unchanged world yields an identical dict and the caller writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from slm_operator.api.v1alpha1 import (
    CachePhase,
    CacheStatus,
    Condition,
    ModelStatus,
    PlacementStatus,
    SLMDeploymentSpec,
    SLMDeploymentStatus,
)
from slm_operator.naming import cache_claim_name, endpoint, selector_string
from slm_operator.observe import (
    FETCH_FAILED,
    FETCH_FAILURE_KINDS,
    MODEL_CORRUPTED,
    RUNTIME_FAILING,
    ObservedChildren,
)
from slm_operator.plan import Owner, Plan, ResolveFailure

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
MODEL_CACHED = "ModelCached"
PLACED = "Placed"
CONDITION_TYPES = (READY, RECONCILING, STALLED, MODEL_CACHED, PLACED)

ConditionStatus = Literal["True", "False", "Unknown"]

# ---------------------------------------------------------------------------------------------
# Conditions


def set_condition(
    previous: Sequence[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Condition:
    """A condition, keeping the previous lastTransitionTime when the status did not change."""
    before = next((c for c in previous if c.type == type), None)
    transition = (
        before.last_transition_time
        if before is not None and before.status == status and before.last_transition_time
        else now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )


@dataclass(frozen=True)
class _State:
    status: ConditionStatus
    reason: str
    message: str


def _cache_state(plan: Plan, observed: ObservedChildren) -> tuple[_State, CachePhase]:
    """ModelCached, and the cache phase (Pending, Fetching, Ready, Failed)."""
    job = observed.fetch_job
    claim = plan.cache.claim_name
    model = plan.model.name
    if job is not None and job.succeeded:
        return _State(
            "True", "Cached", f"{model} ({plan.model.quantization or plan.model.format}) is cached in {claim}"
        ), "Ready"
    if job is not None and job.failure_kind in FETCH_FAILURE_KINDS and job.failure_kind:
        # A known kind of failure: named from the first failed attempt (retries will not help).
        kind = FETCH_FAILURE_KINDS[job.failure_kind]
        return _State("False", kind.reason, f"cache claim {claim}: {job.message}"), "Failed"
    if job is not None and job.failed:
        return _State("False", FETCH_FAILED, f"fetching {plan.model.source} failed: {job.message}"), "Failed"
    if job is not None and job.failed_attempts:
        tries = plan.runtime.fetch_backoff_limit + 1
        detail = f": {job.message}" if job.message else ""
        return _State(
            "False",
            "FetchRetrying",
            f"fetch attempt {job.failed_attempts} of {tries} for {plan.model.source} failed{detail}; "
            "the Job retries with backoff",
        ), "Fetching"
    if job is not None and job.active:
        progress = ""
        if job.total_bytes:
            progress = f" ({job.bytes_downloaded * 100 // job.total_bytes}% of {job.total_bytes} bytes)"
        return _State("False", "Fetching", f"fetching {plan.model.source} into {claim}{progress}"), "Fetching"
    if observed.claim_phase in (None, "Pending"):
        return _State("False", "ClaimPending", f"waiting for claim {claim} to be bound"), "Pending"
    return _State("False", "FetchPending", f"waiting for the fetch Job of {model} to start"), "Pending"


def _ready_state(spec: SLMDeploymentSpec, observed: ObservedChildren, endpoint_url: str) -> _State:
    deployment = observed.deployment
    if deployment is None:
        return _State("False", "Deploying", "the serving Deployment does not exist yet")
    if spec.replicas == 0:
        return _State("False", "ScaledToZero", "replicas is 0; nothing serves")
    if observed.runtime.failing:
        return _State("False", RUNTIME_FAILING, observed.runtime.failing)
    if deployment.observed_generation < deployment.generation or deployment.updated_replicas < spec.replicas:
        return _State(
            "False",
            "RollingOut",
            f"{deployment.updated_replicas} of {spec.replicas} replicas updated to the current configuration",
        )
    if deployment.ready_replicas < spec.replicas:
        return _State(
            "False", "WaitingForReplicas", f"{deployment.ready_replicas} of {spec.replicas} replicas ready"
        )
    if not observed.service:
        return _State("False", "Deploying", "the Service does not exist yet")
    return _State("True", "Available", f"{deployment.ready_replicas} replica(s) serving at {endpoint_url}")


def compute_status(
    *,
    owner: Owner,
    spec: SLMDeploymentSpec,
    generation: int,
    outcome: Plan | ResolveFailure,
    observed: ObservedChildren,
    previous: SLMDeploymentStatus | None,
    now: datetime,
) -> dict[str, Any]:
    """The status subresource as a dict (camelCase, empty parts omitted)."""
    prior = previous or SLMDeploymentStatus()
    endpoint_url = endpoint(owner.name, owner.namespace, spec.api.port)

    def condition(type: str, state: _State) -> Condition:
        return set_condition(
            prior.conditions, type, state.status, state.reason, state.message, generation, now
        )

    placement = prior.placement
    model_status = prior.model
    if isinstance(outcome, ResolveFailure):
        placed = _State("False", outcome.reason, outcome.message)
        cached = _State("Unknown", "NotPlaced", "the model is fetched once a tier can run it")
        ready = _State("False", outcome.reason, outcome.message)
        stalled = _State("True", outcome.reason, outcome.message)
        reconciling = _State(
            "False", outcome.reason, "waiting for a change of the spec, the nodes or the settings"
        )
        cache_status = prior.cache or CacheStatus(claim_name=cache_claim_name(owner.name), phase="Pending")
    else:
        plan = outcome
        job = observed.fetch_job
        quantization = plan.model.quantization or (job.quantization if job else "")
        placement = _placement_status(plan, quantization)
        model_status = ModelStatus(
            name=plan.model.name,
            source=plan.model.source,
            format=plan.model.format,
            quantization=quantization,
            sha256=(job.sha256 if job and job.sha256 else plan.model.sha256.lower()),
            size_bytes=(job.size_bytes if job and job.size_bytes else plan.model.size_bytes or 0),
        )
        placed = _State("True", "Placed", plan.placement.reason)
        cached, phase = _cache_state(plan, observed)
        before = next((c for c in prior.conditions if c.type == MODEL_CACHED), None)
        if observed.model_corrupted:
            cached = _State("False", MODEL_CORRUPTED, observed.model_corrupted)
        elif (
            cached.reason in ("FetchPending", "Fetching")
            and before is not None
            and before.reason == MODEL_CORRUPTED
            and plan.model.cache_key in before.message
        ):
            # Said until the new fetch of that model (the path in the message names its cache
            # folder) completes, or fails (which says more).
            cached = _State("False", MODEL_CORRUPTED, before.message)
        failure = next((k for k in FETCH_FAILURE_KINDS.values() if k.reason == cached.reason), None)
        cache_status = CacheStatus(
            claim_name=plan.cache.claim_name,
            phase=phase,
            bytes_downloaded=job.bytes_downloaded if job else 0,
            total_bytes=(job.total_bytes if job and job.total_bytes else plan.model.size_bytes or 0),
            bytes_per_second=job.bytes_per_second if job and phase == "Fetching" else 0,
            message=job.message if job and (job.failed or failure) else "",
        )
        deployment = observed.deployment
        if observed.apply_error:
            message = f"a child object could not be applied: {observed.apply_error}"
            ready = _State("False", "ApplyFailed", message)
            stalled = _State("False", "ApplyFailed", "")
            reconciling = _State("True", "ApplyFailed", f"{message}; retrying with backoff")
        elif failure is not None and failure.stalls:
            ready = _State("False", failure.reason, cached.message)
            stalled = _State("True", failure.reason, cached.message)
            reconciling = _State("False", failure.reason, failure.waiting_for)
        elif deployment is not None and deployment.progress_deadline_exceeded:
            message = f"the Deployment is not progressing: {deployment.message}"
            ready = _State("False", "ProgressDeadlineExceeded", message)
            stalled = _State("True", "ProgressDeadlineExceeded", message)
            reconciling = _State("False", "ProgressDeadlineExceeded", message)
        else:
            ready = (
                _ready_state(spec, observed, endpoint_url)
                if cached.status == "True"
                else _State("False", cached.reason, cached.message)
            )
            stalled = _State("False", "Progressing" if ready.status != "True" else "Available", "")
            settled = ready.status == "True" or ready.reason == "ScaledToZero"
            reconciling = (
                _State("False", ready.reason, "") if settled else _State("True", ready.reason, ready.message)
            )

    deployment = observed.deployment
    status = SLMDeploymentStatus(
        observed_generation=generation,
        conditions=[
            condition(READY, ready),
            condition(RECONCILING, reconciling),
            condition(STALLED, stalled),
            condition(MODEL_CACHED, cached),
            condition(PLACED, placed),
        ],
        placement=placement,
        model=model_status,
        cache=cache_status,
        replicas=deployment.replicas if deployment else 0,
        ready_replicas=deployment.ready_replicas if deployment else 0,
        selector=selector_string(owner.name),
        endpoint=endpoint_url,
    )
    return status.model_dump(by_alias=True, exclude_none=True)


# Status fields that users write (through the status subresource, with their own credentials) and
# the operator never computes: `slm bench --record` writes status.benchmark.
USER_STATUS_FIELDS = ("benchmark",)


def carry_user_fields(computed: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """`computed` with the observed status' user-written fields kept as they are.

    The operator replaces the whole status when it writes it, so a field it does not compute
    would be erased by its next write unless it is carried over unchanged.
    """
    carried = dict(computed)
    for name in USER_STATUS_FIELDS:
        if name in observed:
            carried[name] = observed[name]
        else:
            carried.pop(name, None)
    return carried


def _placement_status(plan: Plan, quantization: str) -> PlacementStatus:
    placement = plan.placement
    return PlacementStatus(
        tier=placement.tier,
        accelerator=placement.accelerator,
        resource_name=placement.resource_name,
        node_selector=dict(placement.node_selector),
        quantization=quantization,
        format=plan.model.format,
        backend=placement.backend,
        execution_provider=placement.execution_provider,
        memory_estimate_bytes=placement.memory.total_bytes,
        reason=placement.reason,
    )


def invalid_spec_status(
    current: Mapping[str, Any],
    previous: SLMDeploymentStatus,
    *,
    owner: Owner,
    generation: int,
    failure: ResolveFailure,
    now: datetime,
) -> dict[str, Any]:
    """Status for a spec the operator cannot read (only with a CRD older than the operator).

    Ready=False and Stalled=True say why; everything else stays as it was. The transition times
    keep, so the next pass finds nothing to write (zero writes in steady state, invalid or not).
    """
    conditions = [c for c in current.get("conditions") or [] if c.get("type") not in (READY, STALLED)]
    pairs: tuple[tuple[str, ConditionStatus], ...] = ((READY, "False"), (STALLED, "True"))
    for type_, value in pairs:
        condition = set_condition(
            previous.conditions, type_, value, failure.reason, failure.message, generation, now
        )
        conditions.append(condition.model_dump(by_alias=True, exclude_none=True))
    return {
        **current,
        "observedGeneration": generation,
        "selector": selector_string(owner.name),
        "conditions": conditions,
    }
