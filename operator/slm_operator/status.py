"""Status of an SLMDeployment from the plan and the observed children (pure, kstatus semantics).

Conditions: `Placed`, `ModelCached`, `Ready` (true only when the endpoint serves), and kstatus'
`Reconciling` (work in progress) and `Stalled` (stuck until something changes). Each carries the
generation it was computed from; `lastTransitionTime` moves only when a condition's status flips,
so recomputing an unchanged world yields an identical dict and the caller writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
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
from slm_operator.naming import MODEL_KEY_ANNOTATION, cache_claim_name, endpoint, selector_string
from slm_operator.plan import Owner, Plan, ResolveFailure

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
MODEL_CACHED = "ModelCached"
PLACED = "Placed"
CONDITION_TYPES = (READY, RECONCILING, STALLED, MODEL_CACHED, PLACED)

ConditionStatus = Literal["True", "False", "Unknown"]

# Prefixes the runtime puts on a container's termination message ("<Prefix>: <message>") for
# failures the operator names in status (a contract with slm_runtime.integrity).
CACHE_NOT_WRITABLE = "CacheNotWritable"
MODEL_CORRUPTED = "ModelCorrupted"
SOURCE_UNAUTHORIZED = "SourceUnauthorized"
FETCH_FAILED = "FetchFailed"
RUNTIME_FAILING = "RuntimeFailing"


@dataclass(frozen=True)
class FetchFailureKind:
    """How a kind of fetch failure shows in status: its reason, and whether retrying can help."""

    reason: str
    # True: nothing changes until someone acts (Stalled=True from the first failed attempt);
    # the operator keeps retrying with backoff all the same, so it recovers once fixed.
    stalls: bool
    waiting_for: str  # the Reconciling message while stalled


# The one mapping from fetch failures (by termination-message prefix) to how status shows them.
# "" is any other failure: FetchFailed once the Job has failed for good (FetchRetrying before).
FETCH_FAILURE_KINDS: Mapping[str, FetchFailureKind] = {
    "": FetchFailureKind(FETCH_FAILED, True, "waiting for a change of the spec to retry the fetch"),
    CACHE_NOT_WRITABLE: FetchFailureKind(
        CACHE_NOT_WRITABLE,
        True,
        "retrying the fetch with backoff; it succeeds once the cache volume is writable",
    ),
    # Fixing a Secret changes no spec: keep retrying, so a corrected credential is picked up.
    SOURCE_UNAUTHORIZED: FetchFailureKind(
        SOURCE_UNAUTHORIZED,
        True,
        "retrying the fetch with backoff; it succeeds once the Secret holds a credential the source accepts",
    ),
}


def split_failure(line: str) -> tuple[str, str]:
    """(kind, message) of a termination-message line: a known fetch-failure prefix, else ("", line)."""
    for prefix in FETCH_FAILURE_KINDS:
        if prefix and line.startswith(f"{prefix}: "):
            return prefix, line[len(prefix) + 2 :].strip()
    return "", line


def fetch_failure_reason(job: JobObservation) -> str:
    """The reason a failed fetch shows under (the Event's reason too)."""
    return FETCH_FAILURE_KINDS.get(job.failure_kind, FETCH_FAILURE_KINDS[""]).reason


# ---------------------------------------------------------------------------------------------
# Observations (simplified children), with parsers from API dicts


@dataclass(frozen=True)
class JobObservation:
    name: str
    active: int = 0
    succeeded: bool = False
    failed: bool = False
    message: str = ""  # why it failed, or the fetcher's last word
    failed_attempts: int = 0  # pods that failed so far (the Job retries until its backoffLimit)
    bytes_downloaded: int = 0
    total_bytes: int = 0
    bytes_per_second: int = 0  # while downloading, from the fetcher's last progress line
    sha256: str = ""
    size_bytes: int = 0
    quantization: str = ""  # what the fetched file declares (a direct source's only word on it)
    failure_kind: str = ""  # a known prefix of the fetcher's error (FETCH_FAILURE_KINDS), "" = other


@dataclass(frozen=True)
class DeploymentObservation:
    generation: int = 0
    observed_generation: int = 0
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    unavailable_replicas: int = 0
    progress_deadline_exceeded: bool = False
    message: str = ""


@dataclass(frozen=True)
class RuntimeObservation:
    """What the serving Pods say while replicas are unavailable (read only then)."""

    corrupted: str = ""  # a runtime's ModelCorrupted message about the current model, since it was cached
    failing: str = ""  # a runtime Pod that keeps failing for another reason


@dataclass(frozen=True)
class ObservedChildren:
    claim_phase: str | None = None  # PersistentVolumeClaim status.phase; None = absent
    fetch_job: JobObservation | None = None  # the Job of the current model version
    deployment: DeploymentObservation | None = None
    service: bool = False
    apply_error: str = ""  # a child could not be created or updated (the API said why)
    runtime: RuntimeObservation = RuntimeObservation()
    model_corrupted: str = ""  # the cached model was found corrupted this pass; it is fetched again


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def observe_job(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> JobObservation:
    """Simplify a batch/v1 Job and its Pods.

    A failed Job's reason comes from the Pod's termination message (the fetcher's error, thanks to
    terminationMessagePolicy FallbackToLogsOnError), else the Job's Failed condition. A succeeded
    Pod's termination message may be the fetch result JSON ({"sha256", "sizeBytes", ...}).
    """
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failed_condition = conditions.get("Failed") or {}
    complete = (conditions.get("Complete") or {}).get("status") == "True"
    failed = failed_condition.get("status") == "True"
    pod_messages: list[str] = []
    result: dict[str, Any] = {}
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", ""))):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or (
                (container.get("lastState") or {}).get("terminated") or {}
            )
            message = str(terminated.get("message") or "").strip()
            if not message:
                continue
            if terminated.get("exitCode") == 0:
                try:
                    parsed = json.loads(message)
                except ValueError:
                    continue
                if isinstance(parsed, dict):
                    result = parsed
            else:
                pod_messages.append(message.splitlines()[-1])
    message = ""
    kind, detail = split_failure(pod_messages[-1]) if pod_messages else ("", "")
    failed_attempts = _int(status.get("failed"))
    if failed_attempts and not failed and not complete and pod_messages:
        message = detail
    if failed:
        reason = failed_condition.get("message") or failed_condition.get("reason") or "the fetch Job failed"
        # A known kind says all there is; the Job's own reason (backoff limit...) adds nothing.
        message = detail if kind else (f"{detail} ({reason})" if detail else str(reason))
    size = _int(result.get("sizeBytes"))
    return JobObservation(
        name=str((job.get("metadata") or {}).get("name", "")),
        active=_int(status.get("active")),
        succeeded=complete,
        failed=failed,
        failed_attempts=failed_attempts,
        message=message,
        bytes_downloaded=size if complete else 0,
        total_bytes=size,
        sha256=str(result.get("sha256") or ""),
        size_bytes=size,
        quantization=str(result.get("quantization") or ""),
        failure_kind=kind if (failed or failed_attempts) and not complete else "",
    )


# The fetcher's progress line on stderr (slm_runtime.fetch.progress.Progress):
#   "fetch: 1234/5678 bytes (21.7%) at 345678 B/s"; the total is absent when the source sends none.
_PROGRESS_LINE = re.compile(r"^fetch: (\d+)(?:/(\d+))? bytes\b.*?\bat (\d+) B/s\s*$")


def parse_fetch_progress(log_text: str) -> tuple[int, int, int] | None:
    """(bytes done, total or 0, bytes per second) from the fetcher's last progress line, if any."""
    for line in reversed(log_text.splitlines()):
        match = _PROGRESS_LINE.match(line.strip())
        if match:
            return int(match.group(1)), int(match.group(2) or 0), int(match.group(3))
    return None


def with_fetch_progress(job: JobObservation, log_text: str) -> JobObservation:
    """A running fetch Job's observation with the progress its Pod's log shows."""
    progress = parse_fetch_progress(log_text)
    if progress is None or job.succeeded or job.failed:
        return job
    done, total, rate = progress
    return dataclasses.replace(job, bytes_downloaded=done, total_bytes=total, bytes_per_second=rate)


def observe_deployment(deployment: Mapping[str, Any]) -> DeploymentObservation:
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    progressing: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    return DeploymentObservation(
        generation=_int(metadata.get("generation")),
        observed_generation=_int(status.get("observedGeneration")),
        replicas=_int(status.get("replicas")),
        updated_replicas=_int(status.get("updatedReplicas")),
        ready_replicas=_int(status.get("readyReplicas")),
        available_replicas=_int(status.get("availableReplicas")),
        unavailable_replicas=_int(status.get("unavailableReplicas")),
        progress_deadline_exceeded=progressing.get("reason") == "ProgressDeadlineExceeded",
        message=str(progressing.get("message") or ""),
    )


# Waiting reasons of a container that will not start without a change (or keeps crashing).
_IMAGE_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
_FAILING_WAIT_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
_MESSAGE_LIMIT = 300


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _last_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "…"


def observe_runtime_pods(
    pods: Sequence[Mapping[str, Any]], *, cache_key: str, cached_since: datetime | None
) -> RuntimeObservation:
    """Why serving Pods are not available, from their containers' states and termination messages.

    A `ModelCorrupted:` termination counts only for a Pod serving `cache_key` and only when it
    ended after the model was (last) cached: a container's lastState keeps the message of a crash
    from before a re-fetch until it terminates again. A running container (starting, loading)
    is not failing, whatever its lastState says.
    """
    corrupted = ""
    failing = ""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name", ""))):
        metadata = pod.get("metadata") or {}
        if metadata.get("deletionTimestamp"):
            continue
        pod_name = str(metadata.get("name", ""))
        pod_key = str((metadata.get("annotations") or {}).get(MODEL_KEY_ANNOTATION, ""))
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            state = container.get("state") or {}
            if "running" in state or container.get("ready"):
                continue
            waiting = state.get("waiting") or {}
            terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated") or {}
            line = _last_line(terminated.get("message"))
            if line.startswith(f"{MODEL_CORRUPTED}: "):
                ended = _timestamp(terminated.get("finishedAt"))
                current = cached_since is None or (ended is not None and ended > cached_since)
                if pod_key == cache_key and current and not corrupted:
                    corrupted = f"runtime pod {pod_name}: {line[len(MODEL_CORRUPTED) + 2 :]}"
                continue  # a stale report, or another model's: the Pod restarts with what is cached
            if failing:
                continue
            reason = str(waiting.get("reason") or "")
            # Messages stay the same from one crash (or pull back-off) to the next: no status churn.
            if reason in _IMAGE_PULL_REASONS:
                failing = f"runtime pod {pod_name} cannot pull its image {container.get('image', '')}"
            elif reason == "CrashLoopBackOff":
                detail = line or (f"exit code {terminated['exitCode']}" if "exitCode" in terminated else "")
                failing = f"runtime pod {pod_name} is in CrashLoopBackOff" + (f": {detail}" if detail else "")
            elif reason in _FAILING_WAIT_REASONS:
                detail = _last_line(waiting.get("message"))
                failing = f"runtime pod {pod_name} is in {reason}" + (f": {detail}" if detail else "")
            elif state.get("terminated") and _int(terminated.get("exitCode")) != 0:
                failing = f"runtime pod {pod_name} exited with code {_int(terminated.get('exitCode'))}" + (
                    f": {line}" if line else ""
                )
    return RuntimeObservation(corrupted=corrupted, failing=failing)


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
