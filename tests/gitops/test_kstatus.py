"""kstatus on an SLMDeployment's lifecycle: what Flux and other kstatus clients will report."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests.crdschema import load_crd, version_schema
from tests.gitops.kstatus import Status, compute
from tests.gitops.lifecycle import NO_TIER, Step, condition, lifecycle, slmd

STEPS = lifecycle()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(version_schema(load_crd()))


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_lifecycle_objects_fit_the_crd(step: Step, validator: jsonschema.Draft7Validator) -> None:
    """The status shapes these tests reason about are ones the CRD accepts."""
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(step.obj)
    ]
    assert problems == []


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_kstatus_through_the_lifecycle(step: Step) -> None:
    assert compute(step.obj).status == step.kstatus


def test_sequence_reaches_current_then_failed() -> None:
    statuses = [compute(step.obj).status for step in STEPS]
    assert Status.IN_PROGRESS in statuses
    assert statuses.index(Status.CURRENT, 1) < statuses.index(Status.FAILED)


def test_generation_mismatch_message() -> None:
    result = compute(next(s for s in STEPS if s.name == "spec changed, not yet observed").obj)
    assert result.reason == "LatestGenerationNotObserved"
    assert result.message == "SLMDeployment generation is 2, but latest observed generation is 1"


def test_stalled_message_is_the_operators() -> None:
    result = compute(next(s for s in STEPS if s.name == "stalled").obj)
    assert result.message == NO_TIER[1]
    assert result.reason == "NoTierFits"


def test_first_true_condition_in_list_order_wins() -> None:
    """kstatus walks the conditions in order: Reconciling=True before Stalled=True means InProgress."""
    both = [condition("Reconciling", "True", "R", "", 1), condition("Stalled", "True", "S", "", 1)]
    assert compute(slmd(1, {"observedGeneration": 1, "conditions": both})).status == Status.IN_PROGRESS
    assert compute(slmd(1, {"observedGeneration": 1, "conditions": both[::-1]})).status == Status.FAILED


def test_ready_decides_only_for_resources_without_kstatus_conditions() -> None:
    not_ready = [condition("Ready", "False", "Waiting", "not yet", 1)]
    ready = [condition("Ready", "True", "Available", "ok", 1)]
    assert compute(slmd(1, {"observedGeneration": 1, "conditions": not_ready})).status == Status.IN_PROGRESS
    assert compute(slmd(1, {"observedGeneration": 1, "conditions": ready})).status == Status.CURRENT
    adopted = [
        *not_ready,
        condition("Reconciling", "False", "Idle", "", 1),
        condition("Stalled", "False", "Ok", "", 1),
    ]
    assert compute(slmd(1, {"observedGeneration": 1, "conditions": adopted})).status == Status.CURRENT


def test_no_status_is_current_a_kstatus_blind_spot() -> None:
    """Before the operator writes anything, kstatus reports Current: the operator must write status
    (observedGeneration, Reconciling=True) on its first pass, and tools that wait should also look
    at Ready (the Flux example's healthCheckExprs, the Argo CD health script)."""
    assert compute(slmd(1)).status == Status.CURRENT
    assert compute(slmd(1, {})).status == Status.CURRENT


def test_observed_generation_ahead_or_behind_is_in_progress() -> None:
    step = next(s for s in STEPS if s.name == "serving")
    obj = copy.deepcopy(step.obj)
    obj["status"]["observedGeneration"] = 0
    assert compute(obj).status == Status.IN_PROGRESS


def test_terminating() -> None:
    assert compute(slmd(1, None, deletionTimestamp="2026-11-30T11:00:00Z")).status == Status.TERMINATING
