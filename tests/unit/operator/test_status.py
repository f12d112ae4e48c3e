"""Status: kstatus conditions from plan + observed children, stable when nothing changes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from slm_operator.api.v1alpha1 import SLMDeploymentSpec, SLMDeploymentStatus
from slm_operator.catalog import Catalog
from slm_operator.observe import (
    DeploymentObservation,
    JobObservation,
    ObservedChildren,
    observe_deployment,
    observe_job,
)
from slm_operator.plan import Owner, Plan, ResolveFailure
from slm_operator.resolve import resolve
from slm_operator.settings import OperatorSettings
from slm_operator.status import carry_user_fields, compute_status
from tests.unit.operator.conftest import cpu_node, make_facts

T0 = datetime(2026, 11, 30, 1, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 30, 1, 5, 0, tzinfo=UTC)
JOB = "assistant-fetch-1a2b3c4d"
SPEC = SLMDeploymentSpec.model_validate({"model": {"name": "qwen2.5"}, "hardware": {"preferred": "cpu"}})
SERVING = DeploymentObservation(
    generation=1,
    observed_generation=1,
    replicas=1,
    updated_replicas=1,
    ready_replicas=1,
    available_replicas=1,
)


@pytest.fixture
def plan(owner: Owner, catalog: Catalog, settings: OperatorSettings) -> Plan:
    result = resolve(owner, SPEC, make_facts(catalog, settings, cpu_node(memory="3Gi")))
    assert isinstance(result, Plan)
    return result


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def status_for(
    owner: Owner,
    outcome: Plan | ResolveFailure,
    observed: ObservedChildren,
    previous: dict[str, Any] | None = None,
    now: datetime = T0,
    generation: int = 1,
) -> dict[str, Any]:
    prior = SLMDeploymentStatus.model_validate(previous) if previous else None
    return compute_status(
        owner=owner,
        spec=SPEC,
        generation=generation,
        outcome=outcome,
        observed=observed,
        previous=prior,
        now=now,
    )


def test_ready_status_in_full(owner: Owner, plan: Plan) -> None:
    observed = ObservedChildren(
        claim_phase="Bound",
        fetch_job=JobObservation(name=JOB, succeeded=True),
        deployment=SERVING,
        service=True,
    )
    endpoint = "http://assistant.ai.svc.cluster.local:8080"
    condition = {"observedGeneration": 1, "lastTransitionTime": "2026-11-30T01:00:00Z"}
    assert status_for(owner, plan, observed) == {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Available",
                "message": f"1 replica(s) serving at {endpoint}",
                **condition,
            },
            {"type": "Reconciling", "status": "False", "reason": "Available", "message": "", **condition},
            {"type": "Stalled", "status": "False", "reason": "Available", "message": "", **condition},
            {
                "type": "ModelCached",
                "status": "True",
                "reason": "Cached",
                "message": "qwen2.5:0.5b (q4_k_m) is cached in assistant-model-cache",
                **condition,
            },
            {
                "type": "Placed",
                "status": "True",
                "reason": "Placed",
                "message": plan.placement.reason,
                **condition,
            },
        ],
        "placement": {
            "tier": "cpu",
            "accelerator": "cpu",
            "resourceName": "",
            "nodeSelector": {},
            "quantization": "q4_k_m",
            "format": "gguf",
            "backend": "llama-cpp",
            "executionProvider": "",
            "memoryEstimateBytes": 1136005696,
            "reason": "cpu: 1 Linux node(s), largest 3.0 GiB allocatable; q4_k_m fits (1.1 GiB) on cpu-0",
        },
        "model": {
            "name": "qwen2.5:0.5b",
            "source": "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "format": "gguf",
            "quantization": "q4_k_m",
            "sha256": "",
            "sizeBytes": 397808192,
        },
        "cache": {
            "claimName": "assistant-model-cache",
            "phase": "Ready",
            "bytesDownloaded": 0,
            "totalBytes": 397808192,
            "bytesPerSecond": 0,
            "message": "",
        },
        "replicas": 1,
        "readyReplicas": 1,
        "selector": "app.kubernetes.io/instance=assistant,app.kubernetes.io/name=slm-runtime",
        "endpoint": endpoint,
    }


def test_steady_state_is_identical_and_transitions_keep_their_time(owner: Owner, plan: Plan) -> None:
    fetching = ObservedChildren(claim_phase="Bound", fetch_job=JobObservation(name=JOB, active=1))
    first = status_for(owner, plan, fetching, now=T0)
    again = status_for(owner, plan, fetching, previous=first, now=T1)
    assert again == first  # nothing changed: the caller writes nothing
    done = ObservedChildren(
        claim_phase="Bound",
        fetch_job=JobObservation(name=JOB, succeeded=True),
        deployment=SERVING,
        service=True,
    )
    later = status_for(owner, plan, done, previous=first, now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times == {
        "Ready": "2026-11-30T01:05:00Z",  # False -> True
        "Reconciling": "2026-11-30T01:05:00Z",  # True -> False
        "Stalled": "2026-11-30T01:00:00Z",  # False all along
        "ModelCached": "2026-11-30T01:05:00Z",
        "Placed": "2026-11-30T01:00:00Z",
    }


def test_fetching_is_reconciling(owner: Owner, plan: Plan) -> None:
    job = JobObservation(name=JOB, active=1, bytes_downloaded=100, total_bytes=400)
    status = status_for(owner, plan, ObservedChildren(claim_phase="Bound", fetch_job=job))
    assert conditions(status) == {
        "Ready": ("False", "Fetching"),
        "Reconciling": ("True", "Fetching"),
        "Stalled": ("False", "Progressing"),
        "ModelCached": ("False", "Fetching"),
        "Placed": ("True", "Placed"),
    }
    assert status["cache"] == {
        "claimName": "assistant-model-cache",
        "phase": "Fetching",
        "bytesDownloaded": 100,
        "totalBytes": 400,
        "bytesPerSecond": 0,
        "message": "",
    }
    model_cached = next(c for c in status["conditions"] if c["type"] == "ModelCached")
    assert model_cached["message"] == (
        "fetching hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf into "
        "assistant-model-cache (25% of 400 bytes)"
    )


def test_unplaceable_is_stalled_and_keeps_the_last_placement(owner: Owner, plan: Plan) -> None:
    served = ObservedChildren(
        claim_phase="Bound",
        fetch_job=JobObservation(name=JOB, succeeded=True),
        deployment=SERVING,
        service=True,
    )
    before = status_for(owner, plan, served)
    failure = ResolveFailure(
        "Unplaceable", "no tier can run qwen2.5:0.5b: cpu: no Ready schedulable Linux node"
    )
    status = status_for(owner, failure, served, previous=before, now=T1, generation=2)
    assert conditions(status) == {
        "Ready": ("False", "Unplaceable"),
        "Reconciling": ("False", "Unplaceable"),
        "Stalled": ("True", "Unplaceable"),
        "ModelCached": ("Unknown", "NotPlaced"),
        "Placed": ("False", "Unplaceable"),
    }
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled == {
        "type": "Stalled",
        "status": "True",
        "reason": "Unplaceable",
        "message": failure.message,
        "observedGeneration": 2,
        "lastTransitionTime": "2026-11-30T01:05:00Z",
    }
    assert status["placement"] == before["placement"]
    assert status["observedGeneration"] == 2


def test_failed_fetch_job_reports_the_pod_termination_message(owner: Owner, plan: Plan) -> None:
    job = {
        "metadata": {"name": JOB},
        "status": {
            "failed": 5,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        },
    }
    pod = {
        "metadata": {"name": f"{JOB}-x7k2p", "creationTimestamp": "2026-11-30T00:59:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": "fetch",
                    "state": {
                        "terminated": {
                            "exitCode": 2,
                            "message": "downloading...\nerror: sha256 mismatch: expected ab12, got cd34",
                        }
                    },
                }
            ]
        },
    }
    observation = observe_job(job, [pod])
    assert observation == JobObservation(
        name=JOB,
        failed=True,
        failed_attempts=5,
        message="error: sha256 mismatch: expected ab12, got cd34 (Job has reached the specified backoff limit)",
    )
    status = status_for(owner, plan, ObservedChildren(claim_phase="Bound", fetch_job=observation))
    assert conditions(status)["ModelCached"] == ("False", "FetchFailed")
    assert conditions(status)["Stalled"] == ("True", "FetchFailed")
    assert status["cache"]["phase"] == "Failed"
    assert status["cache"]["message"] == observation.message


def test_succeeded_fetch_job_result_lands_in_status(owner: Owner, plan: Plan) -> None:
    job = {
        "metadata": {"name": JOB},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }
    pod = {
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "message": '{"sha256": "'
                            + "e" * 64
                            + '", "sizeBytes": 397808192, "source": "hf://..."}',
                        }
                    }
                }
            ]
        }
    }
    observation = observe_job(job, [pod])
    assert (observation.succeeded, observation.sha256, observation.size_bytes) == (True, "e" * 64, 397808192)
    status = status_for(owner, plan, ObservedChildren(claim_phase="Bound", fetch_job=observation))
    assert status["model"]["sha256"] == "e" * 64
    assert status["cache"]["bytesDownloaded"] == status["cache"]["totalBytes"] == 397808192


def test_rollout_and_replica_states(owner: Owner, plan: Plan) -> None:
    cached = JobObservation(name=JOB, succeeded=True)
    rolling = DeploymentObservation(generation=2, observed_generation=1, replicas=1, ready_replicas=1)
    waiting = DeploymentObservation(generation=1, observed_generation=1, replicas=1, updated_replicas=1)
    stuck = observe_deployment(
        {
            "metadata": {"generation": 3},
            "status": {
                "observedGeneration": 3,
                "replicas": 1,
                "updatedReplicas": 1,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "assistant-5d9" has timed out progressing.',
                    }
                ],
            },
        }
    )
    for deployment, expected in [
        (rolling, ("False", "RollingOut")),
        (waiting, ("False", "WaitingForReplicas")),
        (stuck, ("False", "ProgressDeadlineExceeded")),
    ]:
        observed = ObservedChildren(
            claim_phase="Bound", fetch_job=cached, deployment=deployment, service=True
        )
        assert conditions(status_for(owner, plan, observed))["Ready"] == expected
    observed = ObservedChildren(claim_phase="Bound", fetch_job=cached, deployment=stuck, service=True)
    assert conditions(status_for(owner, plan, observed))["Stalled"] == ("True", "ProgressDeadlineExceeded")


def test_claim_pending_before_the_job_exists(owner: Owner, plan: Plan) -> None:
    status = status_for(owner, plan, ObservedChildren(claim_phase="Pending"))
    assert conditions(status)["ModelCached"] == ("False", "ClaimPending")
    assert conditions(status)["Reconciling"] == ("True", "ClaimPending")
    assert status["replicas"] == 0


def test_a_direct_source_takes_its_quantization_from_the_fetched_file(owner: Owner, plan: Plan) -> None:
    direct = dataclasses.replace(plan, model=dataclasses.replace(plan.model, quantization=""))
    fetched = JobObservation(name=JOB, succeeded=True, quantization="q4_k_m")
    status = status_for(owner, direct, ObservedChildren(claim_phase="Bound", fetch_job=fetched))
    assert status["placement"]["quantization"] == "q4_k_m"
    assert status["model"]["quantization"] == "q4_k_m"
    unknown = status_for(owner, direct, ObservedChildren(claim_phase="Bound"))
    assert unknown["placement"]["quantization"] == ""


BENCHMARK = [
    {
        "tier": "cpu",
        "accelerator": "cpu",
        "quantization": "q4_k_m",
        "recordedAt": "2026-11-30T01:02:03Z",
        "promptTokens": 251,
        "maxTokens": 128,
        "levels": [{"concurrency": 1, "requests": 3, "ttftMs": 45.5, "decodeTokensPerSecond": 38.25}],
    }
]


def test_a_recorded_benchmark_is_carried_over_unchanged(owner: Owner, plan: Plan) -> None:
    observed = ObservedChildren(claim_phase="Bound", fetch_job=JobObservation(name=JOB, succeeded=True))
    before = status_for(owner, plan, observed)
    recorded = {**before, "benchmark": BENCHMARK}
    computed = status_for(owner, plan, observed, previous=recorded, now=T1)
    assert "benchmark" not in computed  # the operator never computes it ...
    carried = carry_user_fields(computed, recorded)
    assert carried == recorded  # ... and writes it back as it found it: nothing changed, no write
    assert carried["benchmark"] is BENCHMARK
    assert carry_user_fields(computed, before) == computed
    assert "benchmark" not in carry_user_fields({**computed, "benchmark": []}, before)


async def test_the_operators_status_writes_keep_a_recorded_benchmark(catalog: Catalog) -> None:
    from slm_operator.controller.reconcile import Reconciler
    from slm_operator.metrics import OperatorMetrics
    from tests.unit.operator.test_reconcile import FakeApi, make_deployment_ready, set_job_condition, slm_body

    api = FakeApi()
    reconciler = Reconciler(api, OperatorSettings(), catalog, OperatorMetrics(), clock=lambda: T0)
    reconciler.set_nodes([cpu_node("cpu-0", memory="64Gi")])
    key = ("ai", "assistant")
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    await reconciler.reconcile(key)
    set_job_condition(api, "Complete")
    reconciler.children.clear()
    await reconciler.reconcile(key)
    make_deployment_ready(api)
    reconciler.children.clear()
    await reconciler.reconcile(key)
    slm = api.objects[("SLMDeployment", "ai", "assistant")]
    slm["status"]["benchmark"] = BENCHMARK  # `slm bench --record`, between two reconciles

    api.writes.clear()
    steady = await reconciler.reconcile(key)
    assert not steady.status_written and api.writes == []

    # A change the operator writes status for (a replica goes away) keeps the benchmark.
    api.objects[("Deployment", "ai", "assistant")]["status"]["readyReplicas"] = 0
    reconciler.children.clear()
    changed = await reconciler.reconcile(key)
    assert changed.status_written
    assert slm["status"]["readyReplicas"] == 0
    assert slm["status"]["benchmark"] == BENCHMARK
