"""An SLMDeployment through its life, as the operator's status writes it (ARCHITECTURE.md section 3).

Each step is the whole object as `kubectl get -o yaml` would show it, with the five conditions
(Ready, Reconciling, Stalled, ModelCached, Placed), each carrying observedGeneration, plus the
kstatus and Argo CD health each tool should report for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
T0 = "2026-11-30T10:00:00Z"

SPEC: Obj = {
    "model": {"name": "phi4:mini"},
    "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
    "replicas": 1,
}


def condition(type_: str, status: str, reason: str, message: str, generation: int) -> Obj:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": T0,
    }


def slmd(generation: int, status: Obj | None = None, **metadata: Any) -> Obj:
    obj: Obj = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {
            "name": "assistant",
            "namespace": "ai",
            "generation": generation,
            "uid": "u-1",
            **metadata,
        },
        "spec": copy.deepcopy(SPEC),
    }
    if generation > 1:
        obj["spec"]["replicas"] = 2
        obj["spec"]["cache"] = {"accessMode": "ReadWriteMany"}
    if status is not None:
        obj["status"] = status
    return obj


def status(
    observed: int,
    *,
    ready: tuple[str, str, str],
    reconciling: tuple[str, str, str],
    stalled: tuple[str, str, str],
    cached: tuple[str, str, str],
    placed: tuple[str, str, str],
    condition_generation: int | None = None,
    ready_replicas: int = 0,
    replicas: int = 0,
    phase: str = "Pending",
) -> Obj:
    gen = observed if condition_generation is None else condition_generation
    result: Obj = {
        "observedGeneration": observed,
        "conditions": [
            condition("Ready", *ready, gen),
            condition("Reconciling", *reconciling, gen),
            condition("Stalled", *stalled, gen),
            condition("ModelCached", *cached, gen),
            condition("Placed", *placed, gen),
        ],
        "cache": {"claimName": "assistant-cache", "phase": phase},
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "selector": "app.kubernetes.io/instance=assistant,app.kubernetes.io/name=slm-runtime",
        "endpoint": "http://assistant.ai.svc.cluster.local:8080",
    }
    if placed[0] == "True":
        result["placement"] = {
            "tier": "gpu",
            "accelerator": "nvidia",
            "resourceName": "nvidia.com/gpu",
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "quantization": "q8_0",
            "format": "gguf",
            "backend": "llama-cpp",
            "reason": "npu: no node advertises an NPU; gpu: 2 nodes with nvidia.com/gpu and 24 GiB",
        }
    return result


PLACED = ("True", "Placed", "npu: no node advertises an NPU; gpu: 2 nodes with nvidia.com/gpu")
NO_TIER = (
    "NoTierFits",
    "npu: no node advertises an NPU; gpu: no node has a free nvidia.com/gpu; cpu: phi4:mini needs 5.1 GiB, "
    "the largest node has 4 GiB",
)


def scaled_to_zero(status_: Obj) -> Obj:
    obj = slmd(3, status_)
    obj["spec"]["replicas"] = 0
    return obj


@dataclass(frozen=True)
class Step:
    name: str
    obj: Obj
    kstatus: str
    argocd: str
    argocd_message: str = ""


def lifecycle() -> list[Step]:
    fetching = ("False", "Fetching", "fetching hf://second-state/... into assistant-cache (41% of 4080 MB)")
    waiting = ("False", "WaitingForReplicas", "0 of 1 replicas ready")
    serving = ("True", "Available", "1 replica(s) serving at http://assistant.ai.svc.cluster.local:8080")
    cached = ("True", "Cached", "phi4:mini (q8_0) is cached in assistant-cache")
    return [
        # Just applied: the operator has not written status yet.
        Step(
            "created",
            slmd(1),
            kstatus="Current",
            argocd="Progressing",
            argocd_message="Waiting for the operator",
        ),
        Step(
            "placed, fetching the model",
            slmd(
                1,
                status(
                    1,
                    ready=fetching,
                    reconciling=("True", *fetching[1:]),
                    stalled=("False", "Progressing", ""),
                    cached=fetching,
                    placed=PLACED,
                    phase="Fetching",
                ),
            ),
            kstatus="InProgress",
            argocd="Progressing",
            argocd_message="fetching hf://",
        ),
        Step(
            "cached, replicas starting",
            slmd(
                1,
                status(
                    1,
                    ready=waiting,
                    reconciling=("True", *waiting[1:]),
                    stalled=("False", "Progressing", ""),
                    cached=cached,
                    placed=PLACED,
                    replicas=1,
                    phase="Ready",
                ),
            ),
            kstatus="InProgress",
            argocd="Progressing",
            argocd_message="0 of 1 replicas ready",
        ),
        Step(
            "serving",
            slmd(
                1,
                status(
                    1,
                    ready=serving,
                    reconciling=("False", "Available", ""),
                    stalled=("False", "Available", ""),
                    cached=cached,
                    placed=PLACED,
                    replicas=1,
                    ready_replicas=1,
                    phase="Ready",
                ),
            ),
            kstatus="Current",
            argocd="Healthy",
            argocd_message="1 replica(s) serving",
        ),
        # The user scales to 2 (generation 2); the status still describes generation 1.
        Step(
            "spec changed, not yet observed",
            slmd(
                2,
                status(
                    1,
                    ready=serving,
                    reconciling=("False", "Available", ""),
                    stalled=("False", "Available", ""),
                    cached=cached,
                    placed=PLACED,
                    replicas=1,
                    ready_replicas=1,
                    phase="Ready",
                ),
            ),
            kstatus="InProgress",
            argocd="Progressing",
            argocd_message="generation 2",
        ),
        # No tier can take the model any more (say the GPU nodes went away): stuck until nodes change.
        Step(
            "stalled",
            slmd(
                2,
                status(
                    2,
                    ready=("False", *NO_TIER),
                    reconciling=(
                        "False",
                        "NoTierFits",
                        "waiting for a change of the spec, the nodes or the settings",
                    ),
                    stalled=("True", *NO_TIER),
                    cached=("Unknown", "NotPlaced", "the model is fetched once a tier can run it"),
                    placed=("False", *NO_TIER),
                ),
            ),
            kstatus="Failed",
            argocd="Degraded",
            argocd_message="cpu: phi4:mini needs 5.1 GiB",
        ),
        # A CPU node with room joins: the operator places it again and rolls out.
        Step(
            "recovering",
            slmd(
                2,
                status(
                    2,
                    ready=("False", "RollingOut", "1 of 2 replicas updated to the current configuration"),
                    reconciling=(
                        "True",
                        "RollingOut",
                        "1 of 2 replicas updated to the current configuration",
                    ),
                    stalled=("False", "Progressing", ""),
                    cached=cached,
                    placed=PLACED,
                    replicas=2,
                    ready_replicas=1,
                    phase="Ready",
                ),
            ),
            kstatus="InProgress",
            argocd="Progressing",
            argocd_message="1 of 2 replicas updated",
        ),
        Step(
            "serving again",
            slmd(
                2,
                status(
                    2,
                    ready=(
                        "True",
                        "Available",
                        "2 replica(s) serving at http://assistant.ai.svc.cluster.local:8080",
                    ),
                    reconciling=("False", "Available", ""),
                    stalled=("False", "Available", ""),
                    cached=cached,
                    placed=PLACED,
                    replicas=2,
                    ready_replicas=2,
                    phase="Ready",
                ),
            ),
            kstatus="Current",
            argocd="Healthy",
            argocd_message="2 replica(s) serving",
        ),
        # A fetch that failed for good (bad sha256): stalled with the fetcher's error.
        Step(
            "fetch failed",
            slmd(
                2,
                status(
                    2,
                    ready=("False", "FetchFailed", "fetching hf://... failed: sha256 mismatch"),
                    reconciling=(
                        "False",
                        "FetchFailed",
                        "waiting for a change of the spec to retry the fetch",
                    ),
                    stalled=("True", "FetchFailed", "fetching hf://... failed: sha256 mismatch"),
                    cached=("False", "FetchFailed", "fetching hf://... failed: sha256 mismatch"),
                    placed=PLACED,
                    phase="Failed",
                ),
            ),
            kstatus="Failed",
            argocd="Degraded",
            argocd_message="sha256 mismatch",
        ),
        # Scaled to zero on purpose (generation 3, replicas 0): settled, nothing serves.
        Step(
            "scaled to zero",
            scaled_to_zero(
                status(
                    3,
                    ready=("False", "ScaledToZero", "replicas is 0; nothing serves"),
                    reconciling=("False", "ScaledToZero", ""),
                    stalled=("False", "Progressing", ""),
                    cached=cached,
                    placed=PLACED,
                    phase="Ready",
                ),
            ),
            kstatus="Current",
            argocd="Suspended",
            argocd_message="replicas is 0",
        ),
        # Conditions written for an older generation than status.observedGeneration claims.
        Step(
            "stale Ready condition",
            slmd(
                2,
                status(
                    2,
                    ready=serving,
                    reconciling=("False", "Available", ""),
                    stalled=("False", "Available", ""),
                    cached=cached,
                    placed=PLACED,
                    condition_generation=1,
                    replicas=1,
                    ready_replicas=1,
                    phase="Ready",
                ),
            ),
            kstatus="Current",
            argocd="Progressing",
            argocd_message="generation 1",
        ),
        Step(
            "deleting",
            slmd(1, None, deletionTimestamp="2026-11-30T11:00:00Z"),
            kstatus="Terminating",
            argocd="Progressing",
            argocd_message="deleted",
        ),
    ]
