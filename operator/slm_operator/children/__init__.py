"""What to do about the children of one SLMDeployment, from what was read of them (pure).

`plan_children(plan, observed, backoff)` is the fetch, cache and serve decision tree: it either
asks for reads it needs first (Pods are not watched, so they are listed only when a decision
depends on them), or returns the actions that converge the children and what status shows of
them. The reconciler reads, calls it again with what it read, then executes the actions in order.

The rules: a model the cache claim records is never fetched twice; a failed fetch is retried with
a doubling backoff by deleting its Job once the wait is over; a model a runtime finds corrupted is
forgotten and fetched again; only a cached model is served; a new fetch Job goes to the node where
a single-attach claim is mounted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from slm_operator.builders import build_deployment, build_fetch_job, build_pvc, build_service
from slm_operator.children.actions import (
    Action,
    Annotate,
    Apply,
    Decision,
    Delete,
    Event,
    FetchBackoff,
    ForgetFetchAttempts,
    Observed,
    Read,
    ReadClaimHolder,
    ReadFetchPods,
    ReadFetchProgress,
    ReadRuntimePods,
    RecordFetchAttempt,
    Requeue,
)
from slm_operator.children.objects import (
    CACHED_MODELS_ANNOTATION,
    TIME_FORMAT,
    cached_at,
    cached_models,
    claim_phase,
    condition_time,
    from_record,
    job_complete,
    job_failed,
    job_failed_pods,
    matches,
)
from slm_operator.naming import fetch_job_name
from slm_operator.observe import (
    MODEL_CORRUPTED,
    JobObservation,
    ObservedChildren,
    RuntimeObservation,
    fetch_failure_reason,
    observe_deployment,
    observe_job,
    with_fetch_progress,
)
from slm_operator.plan import Plan

__all__ = [
    "AFTER_DELETE_SECONDS",
    "FETCH_PROGRESS_SECONDS",
    "RUNTIME_POLL_SECONDS",
    "observed_children",
    "plan_children",
]

# While serving replicas are unavailable, how often their Pods are looked at again (Pods are not
# watched: a container that crashes in an already-unavailable Pod changes no watched object).
RUNTIME_POLL_SECONDS = 10.0
# While a fetch Job runs, how often its progress (the last lines of its Pod's log) is read into
# status.cache: bytes, total and rate, which `slm pull` shows as a progress bar.
FETCH_PROGRESS_SECONDS = 5.0
# After deleting a Job (a retry, a corrupted model): the next pass creates the new one.
AFTER_DELETE_SECONDS = 1.0


def plan_children(plan: Plan, observed: Observed, backoff: FetchBackoff) -> Decision:
    """The reads to make first, else the actions that converge the children (in order)."""
    cache_key = plan.model.cache_key
    job_name = fetch_job_name(plan.owner.name, cache_key)
    cached = cached_models(observed.claim)
    record = cached.get(cache_key)
    actions: list[Action] = []

    claim = build_pvc(plan)
    if not matches(observed.claim, claim):
        # A claim that exists but cannot change (e.g. its class does not allow expansion) is kept;
        # a fetch that runs out of space says so in ModelCached.
        refused = Event(
            "CacheNotResized",
            f"cache claim {plan.cache.claim_name} cannot be changed to {plan.cache.size}",
            "Warning",
        )
        actions.append(Apply(claim, if_refused=refused if observed.claim is not None else None))

    runtime = RuntimeObservation()
    corrupted = ""
    if observed.deployment is not None and observe_deployment(observed.deployment).unavailable_replicas:
        # Only while replicas are unavailable (steady state lists nothing): what the serving Pods say.
        if observed.runtime is None:
            return Decision(reads=(ReadRuntimePods(cache_key, cached_at(record)),))
        runtime = observed.runtime
        actions.append(Requeue(RUNTIME_POLL_SECONDS))
        if runtime.corrupted and record is not None:
            corrupted = runtime.corrupted
            actions += _drop_corrupted(plan, observed, cached, job_name, corrupted)

    fetch: JobObservation | None = None
    job = observed.fetch_job
    if corrupted:
        pass  # the Job is deleted (its name is the model's): the next pass creates a new one
    elif job is None and record is not None:
        # Already in the cache (a retained claim, or a Job since cleaned up): never fetch twice.
        fetch = from_record(JobObservation(name="", succeeded=True), record)
    elif job is None:
        single_attach = plan.cache.access_mode != "ReadWriteMany" and observed.deployment is not None
        if single_attach and observed.claim_holder is None:
            return Decision(reads=(ReadClaimHolder(),))
        manifest = build_fetch_job(plan, attached_node=observed.claim_holder or "")
        actions += [Apply(manifest), Requeue(FETCH_PROGRESS_SECONDS)]
        fetch = observe_job(manifest)
    else:
        reads: list[Read] = []
        if observed.fetch_pods is None and (
            job_failed(job) or job_failed_pods(job) or (job_complete(job) and record is None)
        ):
            # The fetcher's last word (error, or its result record) is in the Pod's termination
            # message; read once per outcome, not on every pass.
            reads.append(ReadFetchPods(job_name))
        fetch = observe_job(job, observed.fetch_pods or ())
        running = not (fetch.failed or fetch.succeeded)
        if running and observed.fetch_log is None:
            reads.append(ReadFetchProgress(job_name))
        if reads:
            return Decision(reads=tuple(reads))
        if running:
            fetch = with_fetch_progress(fetch, observed.fetch_log or "")
            actions.append(Requeue(FETCH_PROGRESS_SECONDS))
        elif fetch.failed:
            actions += _retry_fetch(job, job_name, fetch, observed, backoff)
        else:
            if observed.fetch_attempt:
                actions.append(ForgetFetchAttempts(job_name))
            if record is None:
                record = {
                    "source": plan.model.source,
                    "sha256": fetch.sha256,
                    "sizeBytes": fetch.size_bytes,
                    "quantization": fetch.quantization,
                    "cachedAt": observed.now.strftime(TIME_FORMAT),
                }
                actions.append(_cached_models_annotation(plan, {**cached, cache_key: record}, dropped=False))
            else:
                fetch = from_record(fetch, record)

    if fetch is not None and fetch.succeeded:
        # Serve only a cached model; until the new one is cached, the old Deployment keeps serving.
        deployment = build_deployment(plan, model_sha256=fetch.sha256)
        if not matches(observed.deployment, deployment):
            actions.append(Apply(deployment))
    service = build_service(plan)
    if not matches(observed.service, service):
        actions.append(Apply(service))
    return Decision(actions=tuple(actions), fetch=fetch, runtime=runtime, model_corrupted=corrupted)


def _drop_corrupted(
    plan: Plan, observed: Observed, cached: Mapping[str, Any], job_name: str, message: str
) -> list[Action]:
    """Forget the model was cached and delete its completed fetch Job, so it is fetched again.

    The fetcher then checks the file against its own record and downloads it again; the crashing
    runtime Pods serve once it is cached (the kubelet restarts them).
    """
    kept = {key: value for key, value in cached.items() if key != plan.model.cache_key}
    actions: list[Action] = [_cached_models_annotation(plan, kept, dropped=True)]
    if observed.fetch_job is not None:
        actions.append(Delete("Job", job_name, f"{message}; fetching the model again"))
    if observed.fetch_attempt:
        actions.append(ForgetFetchAttempts(job_name))
    return [*actions, Event(MODEL_CORRUPTED, message, "Warning"), Requeue(AFTER_DELETE_SECONDS)]


def _retry_fetch(
    job: Mapping[str, Any], job_name: str, seen: JobObservation, observed: Observed, backoff: FetchBackoff
) -> list[Action]:
    """Wait out the backoff after a failed attempt, then delete the Job (the next pass recreates it)."""
    attempt = max(observed.fetch_attempt, 1)
    failed_at = condition_time(job, "Failed") or observed.now
    delay = backoff.delay(attempt)
    wait = (failed_at.timestamp() + delay) - observed.now.timestamp()
    if wait > 0:
        message = f"fetch attempt {attempt} failed: {seen.message}; retrying in {delay:.0f}s"
        return [Requeue(wait), Event(fetch_failure_reason(seen), message, "Warning")]
    # The Job's Pods go with it (background propagation).
    return [
        RecordFetchAttempt(job_name, attempt + 1),
        Delete("Job", job_name, f"retrying the fetch (attempt {attempt + 1}): {seen.message}"),
        Requeue(AFTER_DELETE_SECONDS),
    ]


def _cached_models_annotation(plan: Plan, cached: Mapping[str, Any], *, dropped: bool) -> Annotate:
    claim_name = plan.cache.claim_name
    text = json.dumps(cached, sort_keys=True, separators=(",", ":"))
    summary = f"{'-' if dropped else ''}PersistentVolumeClaim/{claim_name}#cached"
    return Annotate("PersistentVolumeClaim", claim_name, {CACHED_MODELS_ANNOTATION: text}, summary)


def observed_children(
    decision: Decision,
    *,
    claim: Mapping[str, Any] | None,
    deployment: Mapping[str, Any] | None,
    service: Mapping[str, Any] | None,
) -> ObservedChildren:
    """What status is computed from: the children as the actions left them, and the decision."""
    return ObservedChildren(
        claim_phase=claim_phase(claim),
        fetch_job=decision.fetch,
        deployment=observe_deployment(deployment) if deployment else None,
        service=service is not None,
        runtime=decision.runtime,
        model_corrupted=decision.model_corrupted,
    )
