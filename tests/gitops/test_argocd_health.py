"""The Argo CD health check (gitops/argocd/health.lua), run with Lua 5.1 (Argo CD embeds gopher-lua, a
Lua 5.1) through lupa, on the same lifecycle as the kstatus tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # type: ignore[import-untyped]
import pytest
import yaml

from tests.gitops.kstatus import Status, compute
from tests.gitops.lifecycle import Step, condition, lifecycle, slmd

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "gitops" / "argocd" / "health.lua"
CM_PATCH = ROOT / "gitops" / "argocd" / "argocd-cm-patch.yaml"
STEPS = lifecycle()
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(runtime: Any, value: Any) -> Any:
    """Python -> Lua the way Argo CD hands `obj` over: maps and arrays become tables (1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(obj: dict[str, Any], script: str | None = None) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(script if script is not None else HEALTH_LUA.read_text(encoding="utf-8"))
    assert result is not None, "the script returned nothing"
    status, message = result["status"], result["message"]
    assert status in ARGO_STATUSES, status
    assert isinstance(message, str) and message, "Argo CD shows the message; it must say something"
    return status, message


def test_runs_on_lua_51() -> None:
    assert lua51.LuaRuntime().eval("_VERSION") == "Lua 5.1"


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_health_through_the_lifecycle(step: Step) -> None:
    status, message = health(step.obj)
    assert status == step.argocd, message
    assert step.argocd_message in message


def test_degraded_carries_the_stalled_message() -> None:
    step = next(s for s in STEPS if s.name == "stalled")
    stalled = next(c for c in step.obj["status"]["conditions"] if c["type"] == "Stalled")
    assert health(step.obj) == ("Degraded", stalled["message"])


def test_agrees_with_kstatus_where_both_have_an_opinion() -> None:
    """Healthy <-> Current, Progressing <-> InProgress, Degraded <-> Failed, except the documented
    cases where the Lua check is stricter (no status yet, stale per-condition generation,
    deletion) or says Suspended (scaled to zero)."""
    mapping = {"Healthy": Status.CURRENT, "Progressing": Status.IN_PROGRESS, "Degraded": Status.FAILED}
    stricter = {"created", "stale Ready condition", "deleting", "scaled to zero"}
    for step in STEPS:
        if step.name in stricter:
            continue
        assert mapping[health(step.obj)[0]] == compute(step.obj).status, step.name


def test_stalled_wins_over_reconciling() -> None:
    conditions = [
        condition("Reconciling", "True", "R", "working", 1),
        condition("Stalled", "True", "S", "stuck", 1),
    ]
    assert health(slmd(1, {"observedGeneration": 1, "conditions": conditions})) == ("Degraded", "stuck")


def test_missing_ready_is_progressing() -> None:
    status, _ = health(slmd(1, {"observedGeneration": 1, "conditions": []}))
    assert status == "Progressing"


def test_missing_messages_fall_back_to_reasons() -> None:
    conditions = [{"type": "Stalled", "status": "True", "reason": "NoTierFits"}]
    assert health(slmd(1, {"observedGeneration": 1, "conditions": conditions})) == ("Degraded", "NoTierFits")


def test_a_broken_script_fails_the_tests() -> None:
    broken = HEALTH_LUA.read_text(encoding="utf-8").replace(
        'hs.status = "Healthy"', 'hs.status = "Progressing"'
    )
    serving = next(s for s in STEPS if s.name == "serving")
    assert health(serving.obj, broken)[0] != serving.argocd


def test_argocd_cm_patch_embeds_the_script_verbatim() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text(encoding="utf-8"))
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"] == {"resource.customizations.health.slm.dev_SLMDeployment": HEALTH_LUA.read_text()}


def test_no_lua_5_2_plus_syntax() -> None:
    """gopher-lua is Lua 5.1: no goto, no integer division, no bitwise operators."""
    code = HEALTH_LUA.read_text(encoding="utf-8")
    for token in ("goto ", "//", "::", "~", "<<", ">>"):
        code_lines = [line.split("--", 1)[0] for line in code.splitlines()]
        assert not any(token in line.replace("~=", "") for line in code_lines), token


def test_does_not_mutate_obj() -> None:
    step = next(s for s in STEPS if s.name == "serving")
    before = copy.deepcopy(step.obj)
    health(step.obj)
    assert step.obj == before
