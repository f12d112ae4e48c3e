"""The children's decision tree, without an API: what is read first, then exactly what is done."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.builders import build_deployment, build_fetch_job, build_pvc, build_service
from slm_operator.catalog import Catalog
from slm_operator.children import (
    AFTER_DELETE_SECONDS,
    FETCH_PROGRESS_SECONDS,
    RUNTIME_POLL_SECONDS,
    observed_children,
    plan_children,
)
from slm_operator.children.actions import (
    Annotate,
    Apply,
    Decision,
    Delete,
    Event,
    FetchBackoff,
    ForgetFetchAttempts,
    Observed,
    ReadClaimHolder,
    ReadFetchPods,
    ReadFetchProgress,
    ReadRuntimePods,
    RecordFetchAttempt,
    Requeue,
)
from slm_operator.children.objects import (
    CACHED_MODELS_ANNOTATION,
    cached_at,
    node_holding_claim,
    running_pod,
)
from slm_operator.naming import fetch_job_name
from slm_operator.observe import (
    DeploymentObservation,
    JobObservation,
    ObservedChildren,
    RuntimeObservation,
    observe_job,
)
from slm_operator.plan import Owner, Plan
from slm_operator.resolve import resolve
from slm_operator.settings import OperatorSettings
from tests.unit.operator.conftest import cpu_node, make_facts

NOW = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
BACKOFF = FetchBackoff(base_seconds=30, max_seconds=3600)
SHA = "e" * 64
SIZE = 397808192
CORRUPTED = "runtime pod assistant-6d4f-x2: /models/x sha256 bbbb does not match the cached model's eeee"


@pytest.fixture
def plan(owner: Owner, catalog: Catalog, settings: OperatorSettings) -> Plan:
    spec = SLMDeploymentSpec.model_validate(
        {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}
    )
    result = resolve(owner, spec, make_facts(catalog, settings, cpu_node(memory="64Gi")))
    assert isinstance(result, Plan)
    assert result.cache.access_mode == "ReadWriteOnce"
    return result


def job_name(plan: Plan) -> str:
    return fetch_job_name(plan.owner.name, plan.model.cache_key)


def record(cached_at_text: str = "2026-11-30T01:00:00Z") -> dict[str, Any]:
    return {
        "source": "hf://Qwen/x.gguf",
        "sha256": SHA,
        "sizeBytes": SIZE,
        "quantization": "q8_0",
        "cachedAt": cached_at_text,
    }


def claim(plan: Plan, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    live = {**build_pvc(plan), "status": {"phase": "Bound"}}
    if cached is not None:
        live["metadata"] = {
            **live["metadata"],
            "annotations": {CACHED_MODELS_ANNOTATION: json.dumps(cached)},
        }
    return live


def recorded_claim(plan: Plan) -> dict[str, Any]:
    return claim(plan, {plan.model.cache_key: record()})


def job(plan: Plan, **status: Any) -> dict[str, Any]:
    return {**build_fetch_job(plan), "status": status}


def condition(type_: str, seconds_ago: float = 0) -> dict[str, Any]:
    when = (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": type_, "status": "True", "lastTransitionTime": when}


def deployment(plan: Plan, *, unavailable: int = 0) -> dict[str, Any]:
    live = build_deployment(plan, model_sha256=SHA)
    live["metadata"] = {**live["metadata"], "generation": 1}
    live["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1 - unavailable,
        "availableReplicas": 1 - unavailable,
        "unavailableReplicas": unavailable,
    }
    return live


def service(plan: Plan) -> dict[str, Any]:
    return {**build_service(plan), "spec": {**build_service(plan)["spec"], "clusterIP": "10.0.0.7"}}


def observed(**fields: Any) -> Observed:
    return Observed(
        **{"now": NOW, "claim": None, "fetch_job": None, "deployment": None, "service": None, **fields}
    )


def fetch_result_pod(name: str) -> dict[str, Any]:
    message = json.dumps({"phase": "Ready", "sha256": SHA, "sizeBytes": SIZE, "quantization": "q4_k_m"})
    return {
        "metadata": {"name": f"{name}-a1", "creationTimestamp": "2026-11-30T01:00:10Z"},
        "status": {
            "containerStatuses": [
                {"name": "fetch", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ]
        },
    }


def failed_pod(name: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}-a1", "creationTimestamp": "2026-11-30T01:00:10Z"},
        "status": {
            "containerStatuses": [
                {"name": "fetch", "state": {"terminated": {"exitCode": 1, "message": message}}}
            ]
        },
    }


def cached_annotation(action: Any) -> dict[str, Any]:
    assert isinstance(action, Annotate)
    loaded: dict[str, Any] = json.loads(action.annotations[CACHED_MODELS_ANNOTATION])
    return loaded


# --- creating the children, and the steady state --------------------------------------------------


def test_nothing_exists_yet_the_claim_a_fetch_job_and_the_service_are_applied(plan: Plan) -> None:
    decision = plan_children(plan, observed(), BACKOFF)
    fetch_job = build_fetch_job(plan)
    assert decision == Decision(
        actions=(
            Apply(build_pvc(plan)),  # a claim that does not exist yet: a refusal fails the pass
            Apply(fetch_job),
            Requeue(FETCH_PROGRESS_SECONDS),
            Apply(build_service(plan)),
        ),
        fetch=observe_job(fetch_job),
    )


def test_a_converged_world_plans_nothing(plan: Plan) -> None:
    world = observed(
        claim=recorded_claim(plan),
        fetch_job=job(plan, succeeded=1, conditions=[condition("Complete")]),
        deployment=deployment(plan),
        service=service(plan),
    )
    decision = plan_children(plan, world, BACKOFF)
    assert decision.reads == () and decision.actions == ()
    assert decision.fetch == JobObservation(
        name=job_name(plan),
        succeeded=True,
        sha256=SHA,
        size_bytes=SIZE,
        total_bytes=SIZE,
        bytes_downloaded=SIZE,
        quantization="q8_0",
    )


def test_hand_edits_are_applied_back(plan: Plan) -> None:
    edited = deployment(plan)
    edited["spec"] = {**edited["spec"], "replicas": 5}
    world = observed(claim=recorded_claim(plan), deployment=edited, service=None)
    assert plan_children(plan, world, BACKOFF).actions == (
        Apply(build_deployment(plan, model_sha256=SHA)),
        Apply(build_service(plan)),
    )


def test_a_claim_that_exists_is_applied_with_a_warning_to_post_if_refused(plan: Plan) -> None:
    small = claim(plan, {plan.model.cache_key: record()})
    small["spec"] = {**small["spec"], "resources": {"requests": {"storage": "1Mi"}}}
    world = observed(claim=small, deployment=deployment(plan), service=service(plan))
    assert plan_children(plan, world, BACKOFF).actions == (
        Apply(
            build_pvc(plan),
            if_refused=Event(
                "CacheNotResized",
                f"cache claim assistant-model-cache cannot be changed to {plan.cache.size}",
                "Warning",
            ),
        ),
    )


# --- never fetch twice, serve only a cached model ---------------------------------------------------


def test_a_model_the_claim_records_is_served_without_a_fetch(plan: Plan) -> None:
    world = observed(claim=recorded_claim(plan), service=service(plan))
    decision = plan_children(plan, world, BACKOFF)
    assert decision.actions == (Apply(build_deployment(plan, model_sha256=SHA)),)
    assert decision.fetch == JobObservation(
        name="",
        succeeded=True,
        sha256=SHA,
        size_bytes=SIZE,
        total_bytes=SIZE,
        bytes_downloaded=SIZE,
        quantization="q8_0",
    )


def test_a_completed_fetch_is_read_once_then_recorded_on_the_claim_and_served(plan: Plan) -> None:
    name = job_name(plan)
    world = observed(
        claim=claim(plan),
        fetch_job=job(plan, succeeded=1, conditions=[condition("Complete")]),
        service=service(plan),
        fetch_attempt=2,
    )
    assert plan_children(plan, world, BACKOFF) == Decision(reads=(ReadFetchPods(name),))

    decision = plan_children(plan, dataclasses.replace(world, fetch_pods=(fetch_result_pod(name),)), BACKOFF)
    forget, annotate, serve = decision.actions
    assert forget == ForgetFetchAttempts(name)
    assert isinstance(annotate, Annotate)
    assert (annotate.kind, annotate.name, annotate.summary) == (
        "PersistentVolumeClaim",
        "assistant-model-cache",
        "PersistentVolumeClaim/assistant-model-cache#cached",
    )
    assert cached_annotation(annotate) == {
        plan.model.cache_key: {
            "source": plan.model.source,
            "sha256": SHA,
            "sizeBytes": SIZE,
            "quantization": "q4_k_m",
            "cachedAt": "2026-11-30T02:00:00Z",
        }
    }
    assert serve == Apply(build_deployment(plan, model_sha256=SHA))


def test_a_model_recorded_beside_others_keeps_them(plan: Plan) -> None:
    name = job_name(plan)
    world = observed(
        claim=claim(plan, {"older-model": record()}),
        fetch_job=job(plan, succeeded=1, conditions=[condition("Complete")]),
        fetch_pods=(fetch_result_pod(name),),
        service=service(plan),
    )
    annotate = plan_children(plan, world, BACKOFF).actions[0]
    assert set(cached_annotation(annotate)) == {"older-model", plan.model.cache_key}


@pytest.mark.parametrize(
    "status",
    [{"active": 1}, {"failed": 1, "active": 1}, {"failed": 5, "conditions": [condition("Failed", 10)]}],
    ids=["running", "retrying-pods", "failed"],
)
def test_an_uncached_model_is_not_served(plan: Plan, status: dict[str, Any]) -> None:
    world = observed(
        claim=claim(plan),
        fetch_job=job(plan, **status),
        service=service(plan),
        fetch_pods=(),
        fetch_log="",
    )
    decision = plan_children(plan, world, BACKOFF)
    assert not any(isinstance(a, Apply) and a.manifest["kind"] == "Deployment" for a in decision.actions)


# --- a running fetch: its progress ----------------------------------------------------------------


def test_a_running_fetch_reads_its_progress_and_looks_again_soon(plan: Plan) -> None:
    name = job_name(plan)
    world = observed(claim=claim(plan), fetch_job=job(plan, active=1), service=service(plan))
    assert plan_children(plan, world, BACKOFF) == Decision(reads=(ReadFetchProgress(name),))

    log = "fetch: 1000/4000 bytes (25.0%) at 0 B/s\nfetch: 2000/4000 bytes (50.0%) at 500 B/s\n"
    decision = plan_children(plan, dataclasses.replace(world, fetch_log=log), BACKOFF)
    assert decision.actions == (Requeue(FETCH_PROGRESS_SECONDS),)
    assert decision.fetch == JobObservation(
        name=name, active=1, bytes_downloaded=2000, total_bytes=4000, bytes_per_second=500
    )


def test_a_running_fetch_with_failed_pods_reads_both_their_messages_and_its_progress(plan: Plan) -> None:
    name = job_name(plan)
    world = observed(claim=claim(plan), fetch_job=job(plan, failed=1, active=1), service=service(plan))
    assert plan_children(plan, world, BACKOFF).reads == (ReadFetchPods(name), ReadFetchProgress(name))
    read = dataclasses.replace(
        world, fetch_pods=(failed_pod(name, "CacheNotWritable: /models is not writable"),), fetch_log=""
    )
    decision = plan_children(plan, read, BACKOFF)
    assert decision.actions == (Requeue(FETCH_PROGRESS_SECONDS),)
    assert decision.fetch is not None
    assert (decision.fetch.failure_kind, decision.fetch.message) == (
        "CacheNotWritable",
        "/models is not writable",
    )


# --- a failed fetch: backoff, then a new Job ------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "seconds_ago", "wait", "delay"),
    [(0, 10, 20.0, 30), (1, 10, 20.0, 30), (2, 31, 29.0, 60), (9, 0, 3600.0, 3600)],
    ids=["first-uncounted", "first", "second", "capped"],
)
def test_a_failed_fetch_waits_out_its_backoff(
    plan: Plan, attempt: int, seconds_ago: float, wait: float, delay: int
) -> None:
    name = job_name(plan)
    world = observed(
        claim=claim(plan),
        fetch_job=job(plan, failed=5, conditions=[condition("Failed", seconds_ago)]),
        service=service(plan),
        fetch_attempt=attempt,
    )
    assert plan_children(plan, world, BACKOFF) == Decision(reads=(ReadFetchPods(name),))
    decision = plan_children(plan, dataclasses.replace(world, fetch_pods=()), BACKOFF)
    shown = max(attempt, 1)
    assert decision.actions == (
        Requeue(wait),
        Event(
            "FetchFailed",
            f"fetch attempt {shown} failed: the fetch Job failed; retrying in {delay}s",
            "Warning",
        ),
    )
    assert decision.fetch is not None and decision.fetch.failed


def test_a_failed_fetch_names_a_known_cause_in_its_event(plan: Plan) -> None:
    name = job_name(plan)
    world = observed(
        claim=claim(plan),
        fetch_job=job(plan, failed=5, conditions=[condition("Failed", 10)]),
        fetch_pods=(failed_pod(name, "CacheNotWritable: /models is not writable"),),
        service=service(plan),
    )
    assert plan_children(plan, world, BACKOFF).actions == (
        Requeue(20.0),
        Event(
            "CacheNotWritable", "fetch attempt 1 failed: /models is not writable; retrying in 30s", "Warning"
        ),
    )


@pytest.mark.parametrize(("attempt", "seconds_ago"), [(0, 31), (1, 30), (2, 61)])
def test_a_failed_fetch_whose_wait_is_over_deletes_its_job(
    plan: Plan, attempt: int, seconds_ago: float
) -> None:
    name = job_name(plan)
    world = observed(
        claim=claim(plan),
        fetch_job=job(plan, failed=5, conditions=[condition("Failed", seconds_ago)]),
        fetch_pods=(),
        service=service(plan),
        fetch_attempt=attempt,
    )
    next_attempt = max(attempt, 1) + 1
    assert plan_children(plan, world, BACKOFF).actions == (
        RecordFetchAttempt(name, next_attempt),
        Delete("Job", name, f"retrying the fetch (attempt {next_attempt}): the fetch Job failed"),
        Requeue(AFTER_DELETE_SECONDS),
    )


def test_a_failure_without_a_time_counts_from_now(plan: Plan) -> None:
    world = observed(
        claim=claim(plan),
        fetch_job=job(plan, failed=5, conditions=[{"type": "Failed", "status": "True"}]),
        fetch_pods=(),
        service=service(plan),
    )
    assert plan_children(plan, world, BACKOFF).actions[0] == Requeue(30.0)


# --- the runtime's word: failing, or the model corrupted ---------------------------------------------


def test_unavailable_replicas_read_the_serving_pods_first(plan: Plan) -> None:
    world = observed(
        claim=recorded_claim(plan),
        fetch_job=job(plan, succeeded=1, conditions=[condition("Complete")]),
        deployment=deployment(plan, unavailable=1),
        service=service(plan),
    )
    assert plan_children(plan, world, BACKOFF) == Decision(
        reads=(ReadRuntimePods(plan.model.cache_key, cached_at(record())),)
    )
    assert cached_at(record()) == datetime(2026, 11, 30, 1, 0, 0, tzinfo=UTC)


def test_a_failing_runtime_is_looked_at_again_and_nothing_is_refetched(plan: Plan) -> None:
    failing = RuntimeObservation(failing="runtime pod assistant-6d4f-x2 is in CrashLoopBackOff: oom")
    world = observed(
        claim=recorded_claim(plan),
        fetch_job=job(plan, succeeded=1, conditions=[condition("Complete")]),
        deployment=deployment(plan, unavailable=1),
        service=service(plan),
        runtime=failing,
    )
    decision = plan_children(plan, world, BACKOFF)
    assert decision.actions == (Requeue(RUNTIME_POLL_SECONDS),)
    assert decision.runtime == failing and decision.model_corrupted == ""


def test_a_corrupted_model_is_forgotten_and_its_job_deleted(plan: Plan) -> None:
    name = job_name(plan)
    world = observed(
        claim=claim(plan, {plan.model.cache_key: record(), "other": record()}),
        fetch_job=job(plan, succeeded=1, conditions=[condition("Complete")]),
        deployment=deployment(plan, unavailable=1),
        service=service(plan),
        runtime=RuntimeObservation(corrupted=CORRUPTED),
        fetch_attempt=3,
    )
    decision = plan_children(plan, world, BACKOFF)
    poll, annotate, *rest = decision.actions
    assert poll == Requeue(RUNTIME_POLL_SECONDS)
    assert isinstance(annotate, Annotate)
    assert annotate.summary == "-PersistentVolumeClaim/assistant-model-cache#cached"
    assert cached_annotation(annotate) == {"other": record()}
    assert rest == [
        Delete("Job", name, f"{CORRUPTED}; fetching the model again"),
        ForgetFetchAttempts(name),
        Event("ModelCorrupted", CORRUPTED, "Warning"),
        Requeue(AFTER_DELETE_SECONDS),
    ]
    assert decision.fetch is None  # nothing is served from it; the next pass fetches again
    assert decision.model_corrupted == CORRUPTED


def test_a_corrupted_model_whose_job_is_gone_only_loses_its_record(plan: Plan) -> None:
    world = observed(
        claim=recorded_claim(plan),
        deployment=deployment(plan, unavailable=1),
        service=service(plan),
        runtime=RuntimeObservation(corrupted=CORRUPTED),
    )
    actions = plan_children(plan, world, BACKOFF).actions
    assert [type(a) for a in actions] == [Requeue, Annotate, Event, Requeue]


def test_a_corruption_report_without_a_record_drops_nothing(plan: Plan) -> None:
    """Once dropped (the record is gone), the same report starts a fetch, not another drop."""
    world = observed(
        claim=claim(plan, {}),
        deployment=deployment(plan, unavailable=1),
        service=service(plan),
        runtime=RuntimeObservation(corrupted=CORRUPTED),
        claim_holder="",
    )
    decision = plan_children(plan, world, BACKOFF)
    assert decision.actions == (
        Requeue(RUNTIME_POLL_SECONDS),
        Apply(build_fetch_job(plan)),
        Requeue(FETCH_PROGRESS_SECONDS),
    )
    assert decision.model_corrupted == "" and decision.runtime.corrupted == CORRUPTED


# --- a new fetch follows a single-attach claim -------------------------------------------------------


def test_a_new_fetch_on_a_single_attach_claim_asks_where_it_is_mounted_and_goes_there(plan: Plan) -> None:
    world = observed(
        claim=claim(plan, {"old-model": record()}), deployment=deployment(plan), service=service(plan)
    )
    assert plan_children(plan, world, BACKOFF) == Decision(reads=(ReadClaimHolder(),))
    pinned = plan_children(plan, dataclasses.replace(world, claim_holder="cpu-0"), BACKOFF)
    assert pinned.actions == (
        Apply(build_fetch_job(plan, attached_node="cpu-0")),
        Requeue(FETCH_PROGRESS_SECONDS),
    )
    unmounted = plan_children(plan, dataclasses.replace(world, claim_holder=""), BACKOFF)
    assert unmounted.actions == (Apply(build_fetch_job(plan)), Requeue(FETCH_PROGRESS_SECONDS))


def test_a_shared_claim_or_no_server_needs_no_node(plan: Plan) -> None:
    shared = dataclasses.replace(plan, cache=dataclasses.replace(plan.cache, access_mode="ReadWriteMany"))
    world = observed(claim=claim(shared), deployment=deployment(shared), service=service(shared))
    assert plan_children(shared, world, BACKOFF).actions[0] == Apply(build_fetch_job(shared))
    alone = observed(claim=claim(plan), service=service(plan))
    assert plan_children(plan, alone, BACKOFF).actions[0] == Apply(build_fetch_job(plan))


# --- helpers that digest what was read --------------------------------------------------------------


def test_the_node_holding_a_claim_is_a_live_scheduled_serving_pods() -> None:
    def pod(node: str, phase: str, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": f"p-{node}"}
        if deleting:
            meta["deletionTimestamp"] = "2026-11-30T01:00:00Z"
        return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}

    assert node_holding_claim([]) == ""
    assert node_holding_claim([pod("b", "Running"), pod("a", "Pending")]) == "a"
    assert node_holding_claim([pod("a", "Succeeded"), pod("b", "Running", deleting=True)]) == ""
    assert node_holding_claim([{"metadata": {"name": "unscheduled"}, "status": {"phase": "Pending"}}]) == ""


def test_the_fetch_log_is_read_from_a_running_pod_only() -> None:
    pending = {"metadata": {"name": "f-1"}, "status": {"phase": "Pending"}}
    stopping = {"metadata": {"name": "f-2", "deletionTimestamp": "x"}, "status": {"phase": "Running"}}
    running = {"metadata": {"name": "f-3"}, "status": {"phase": "Running"}}
    assert running_pod([pending, stopping]) == ""
    assert running_pod([pending, stopping, running]) == "f-3"


def test_cached_at_tolerates_old_or_bad_records() -> None:
    assert cached_at(None) is None
    assert cached_at({"sha256": SHA}) is None
    assert cached_at({"cachedAt": "yesterday"}) is None


def test_status_sees_the_children_as_the_actions_left_them(plan: Plan) -> None:
    decision = Decision(
        fetch=JobObservation(name="j", succeeded=True),
        runtime=RuntimeObservation(failing="x"),
        model_corrupted="y",
    )
    assert observed_children(decision, claim=claim(plan), deployment=deployment(plan), service=None) == (
        ObservedChildren(
            claim_phase="Bound",
            fetch_job=JobObservation(name="j", succeeded=True),
            deployment=DeploymentObservation(
                generation=1,
                observed_generation=1,
                replicas=1,
                updated_replicas=1,
                ready_replicas=1,
                available_replicas=1,
            ),
            service=False,
            runtime=RuntimeObservation(failing="x"),
            model_corrupted="y",
        )
    )
    fresh_claim = build_pvc(plan)  # just created: no phase yet
    assert observed_children(Decision(), claim=fresh_claim, deployment=None, service=service(plan)) == (
        ObservedChildren(claim_phase="Pending", service=True)
    )
