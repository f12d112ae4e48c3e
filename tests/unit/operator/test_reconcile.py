"""Reconcile against an in-memory API: what it applies, when it writes status, and when not."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from slm_operator.catalog import Catalog
from slm_operator.children import FETCH_PROGRESS_SECONDS, RUNTIME_POLL_SECONDS
from slm_operator.children.actions import fetch_retry_delay
from slm_operator.children.objects import CACHED_MODELS_ANNOTATION, cached_models, contains
from slm_operator.controller.reconcile import Reconciler
from slm_operator.k8s.client import ApiError, Kubernetes
from slm_operator.metrics import OperatorMetrics
from slm_operator.settings import OperatorSettings
from tests.unit.operator.conftest import cpu_node

NOW = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
KEY = ("ai", "assistant")


class FakeApi:
    """Stores objects by (kind, namespace, name); records every write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.lists: list[str] = []
        self.fail_apply: dict[str, ApiError] = {}
        self.logs: dict[tuple[str, str], str | ApiError] = {}  # (pod, container) -> text or error

    def put(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def list(self, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self.lists.append(f"{kind} {label_selector}")
        wanted = dict(term.split("=", 1) for term in label_selector.split(","))
        return [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind
            and ns == namespace
            and all(o["metadata"].get("labels", {}).get(key) == value for key, value in wanted.items())
        ]

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        kind = str(manifest["kind"])
        if kind in self.fail_apply:
            raise self.fail_apply[kind]
        meta = manifest["metadata"]
        self.writes.append(f"apply {kind}/{meta['name']}")
        live = self.objects.get((kind, meta.get("namespace", ""), meta["name"]), {})
        merged = {**copy.deepcopy(dict(manifest)), "status": live.get("status", {})}
        merged["metadata"] = {**live.get("metadata", {}), **copy.deepcopy(dict(meta))}
        self.put(merged)
        return copy.deepcopy(merged)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.writes.append(f"delete {kind}/{name}")
        self.objects.pop((kind, namespace, name), None)

    async def annotate(self, kind: str, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self.writes.append(f"annotate {kind}/{name}")
        meta = self.objects[(kind, namespace, name)]["metadata"]
        meta["annotations"] = {**meta.get("annotations", {}), **annotations}

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.writes.append(f"status {kind}/{name}")
        obj = self.objects[(kind, namespace, name)]
        obj["status"] = copy.deepcopy(dict(status))
        return copy.deepcopy(obj)

    async def event(
        self, involved: Mapping[str, Any], *, reason: str, message: str, type_: str = "Normal"
    ) -> None:
        self.events.append((reason, message))

    async def pod_log(self, namespace: str, name: str, container: str, *, tail_lines: int) -> str:
        text = self.logs.get((name, container), ApiError(404, f"pods {name} not found"))
        if isinstance(text, ApiError):
            raise text
        return "\n".join(text.splitlines()[-tail_lines:])


def slm_body(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "assistant", "namespace": "ai", "uid": "uid-1", "generation": generation},
        "spec": spec,
    }


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def reconciler(api: FakeApi, catalog: Catalog) -> Reconciler:
    settings = OperatorSettings(fetch_retry_base_seconds=30, fetch_retry_max_seconds=3600)
    current = Reconciler(api, settings, catalog, OperatorMetrics(), clock=lambda: NOW)
    current.set_nodes([cpu_node("cpu-0", memory="64Gi")])
    return current


def watched(reconciler: Reconciler) -> None:
    """What the watch would do after a test changes objects behind the reconciler's back."""
    reconciler.children.clear()


def set_job_condition(api: FakeApi, type_: str, *, failed: int = 0, when: datetime = NOW) -> str:
    job = next(o for (k, _, _), o in api.objects.items() if k == "Job")
    job["status"] = {
        "failed": failed,
        "conditions": [
            {"type": type_, "status": "True", "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        ],
    }
    return str(job["metadata"]["name"])


def make_deployment_ready(api: FakeApi) -> None:
    deployment = api.objects[("Deployment", "ai", "assistant")]
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
    }


def conditions(api: FakeApi) -> dict[str, tuple[str, str]]:
    status = api.objects[("SLMDeployment", "ai", "assistant")]["status"]
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


async def test_converges_in_steps_then_writes_nothing(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))

    first = await reconciler.reconcile(KEY)
    job_name = next(name for (kind, _, name) in api.objects if kind == "Job")
    assert first.applied == [
        "PersistentVolumeClaim/assistant-model-cache",
        f"Job/{job_name}",
        "Service/assistant",
    ]
    assert first.status_written
    assert conditions(api)["ModelCached"][0] == "False"
    assert ("Deployment", "ai", "assistant") not in api.objects  # nothing serves an uncached model
    assert api.events[0][0] == "Placed"

    set_job_condition(api, "Complete")
    watched(reconciler)
    second = await reconciler.reconcile(KEY)
    assert second.applied == [
        "PersistentVolumeClaim/assistant-model-cache#cached",
        "Deployment/assistant",
    ]
    make_deployment_ready(api)
    watched(reconciler)
    await reconciler.reconcile(KEY)
    assert conditions(api) == {
        "Ready": ("True", "Available"),
        "Reconciling": ("False", "Available"),
        "Stalled": ("False", "Available"),
        "ModelCached": ("True", "Cached"),
        "Placed": ("True", "Placed"),
    }

    api.writes.clear()
    api.lists.clear()
    steady = await reconciler.reconcile(KEY)
    assert steady.applied == []
    assert not steady.status_written
    assert api.writes == []
    assert api.lists == []  # no Pods are read while every replica is available
    assert steady.requeue_after is None
    assert len([e for e in api.events if e[0] == "Placed"]) == 1


async def test_hand_edits_are_reverted(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    await reconciler.reconcile(KEY)
    set_job_condition(api, "Complete")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    api.objects[("Deployment", "ai", "assistant")]["spec"]["replicas"] = 5
    del api.objects[("Service", "ai", "assistant")]
    watched(reconciler)
    api.writes.clear()
    result = await reconciler.reconcile(KEY)
    assert result.applied == ["Deployment/assistant", "Service/assistant"]
    assert api.objects[("Deployment", "ai", "assistant")]["spec"]["replicas"] == 1


async def test_a_cached_model_is_not_fetched_again(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    await reconciler.reconcile(KEY)
    job_name = set_job_condition(api, "Complete")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    claim = api.objects[("PersistentVolumeClaim", "ai", "assistant-model-cache")]
    assert list(cached_models(claim)) == [
        api.objects[("Job", "ai", job_name)]["metadata"]["annotations"]["slm.dev/model-cache-key"]
    ]

    # The SLMDeployment is deleted (its Job with it) and created again; the claim was retained.
    for kind in ("Job", "Deployment", "Service", "SLMDeployment"):
        for key in [k for k in api.objects if k[0] == kind]:
            del api.objects[key]
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    watched(reconciler)
    api.writes.clear()
    result = await reconciler.reconcile(KEY)
    assert not any(name.startswith("Job/") for name in result.applied)
    assert "Deployment/assistant" in result.applied
    assert conditions(api)["ModelCached"] == ("True", "Cached")


async def test_failed_fetch_is_retried_with_doubling_backoff(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    await reconciler.reconcile(KEY)
    job_name = set_job_condition(api, "Failed", failed=5, when=NOW - timedelta(seconds=10))
    watched(reconciler)
    waiting = await reconciler.reconcile(KEY)
    assert waiting.requeue_after == 20.0  # 30 s after the failure, 10 s of which have passed
    assert ("Job", "ai", job_name) in api.objects
    assert conditions(api)["ModelCached"] == ("False", "FetchFailed")
    assert api.events[-1] == ("FetchFailed", "fetch attempt 1 failed: the fetch Job failed; retrying in 30s")

    set_job_condition(api, "Failed", failed=5, when=NOW - timedelta(seconds=31))
    watched(reconciler)
    retried = await reconciler.reconcile(KEY)
    assert retried.applied == [f"-Job/{job_name}"]
    assert ("Job", "ai", job_name) not in api.objects
    recreated = await reconciler.reconcile(KEY)
    assert f"Job/{job_name}" in recreated.applied

    set_job_condition(api, "Failed", failed=5, when=NOW - timedelta(seconds=31))
    watched(reconciler)
    second_wait = await reconciler.reconcile(KEY)
    assert second_wait.requeue_after == 29.0  # attempt 2 waits 60 s


async def test_unplaceable_writes_stalled_and_creates_nothing(api: FakeApi, reconciler: Reconciler) -> None:
    reconciler.set_nodes([])
    api.put(
        slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "gpu", "fallback": ["cpu"]}})
    )
    result = await reconciler.reconcile(KEY)
    assert result.applied == []
    assert result.outcome == "Unplaceable"
    assert conditions(api)["Stalled"] == ("True", "Unplaceable")
    assert api.events[-1][0] == "Unplaceable"
    assert reconciler.set_nodes([cpu_node("cpu-9")])  # a node arriving is a change
    assert not reconciler.set_nodes([cpu_node("cpu-9")])  # the same inventory is not


async def test_a_claim_that_cannot_grow_is_kept(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    await reconciler.reconcile(KEY)
    claim = api.objects[("PersistentVolumeClaim", "ai", "assistant-model-cache")]
    claim["spec"]["resources"]["requests"]["storage"] = "1Mi"  # differs from what is wanted
    watched(reconciler)
    api.fail_apply["PersistentVolumeClaim"] = ApiError(403, "only dynamically provisioned pvc can be resized")
    result = await reconciler.reconcile(KEY)
    assert "PersistentVolumeClaim/assistant-model-cache" not in result.applied
    assert any(reason == "CacheNotResized" for reason, _ in api.events)


async def test_deleted_object_is_forgotten(api: FakeApi, reconciler: Reconciler) -> None:
    reconciler.known.add(KEY)
    result = await reconciler.reconcile(KEY)
    assert result.applied == [] and KEY not in reconciler.known


def test_contains_ignores_server_additions_and_compares_quantities() -> None:
    live = {"spec": {"a": 1, "b": [{"x": "1Gi", "y": 2}], "extra": True}, "status": {}}
    assert contains(live, {"spec": {"a": 1, "b": [{"x": "1024Mi"}]}})
    assert not contains(live, {"spec": {"a": 2}})
    assert not contains(live, {"spec": {"b": [{"x": "1Gi"}, {"x": "2Gi"}]}})
    assert not contains({"flag": 1}, {"flag": True})
    assert not contains({"name": "abc"}, {"name": "abd"})


def test_fetch_retry_delay_doubles_up_to_the_cap() -> None:
    assert [fetch_retry_delay(n, 30, 100) for n in (1, 2, 3, 4)] == [30.0, 60.0, 100.0, 100.0]


def test_cached_models_tolerates_garbage() -> None:
    assert cached_models(None) == {}
    assert cached_models({"metadata": {"annotations": {CACHED_MODELS_ANNOTATION: "not json"}}}) == {}
    assert cached_models(
        {"metadata": {"annotations": {CACHED_MODELS_ANNOTATION: '{"k": {"sha256": "ab"}}'}}}
    ) == {"k": {"sha256": "ab"}}


async def test_a_child_that_cannot_be_applied_shows_in_status(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    api.fail_apply["Service"] = ApiError(422, "failed to allocate a serviceIP: range is full")
    with pytest.raises(ApiError):
        await reconciler.reconcile(KEY)
    assert conditions(api)["Ready"] == ("False", "ApplyFailed")
    assert conditions(api)["Reconciling"] == ("True", "ApplyFailed")
    assert conditions(api)["Placed"] == ("True", "Placed")
    assert ("ApplyFailed", "failed to allocate a serviceIP: range is full") in api.events


async def test_own_status_write_is_recognised_and_children_come_from_the_watch(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    api.objects[("SLMDeployment", "ai", "assistant")]["metadata"]["resourceVersion"] = "41"
    await reconciler.reconcile(KEY)
    assert reconciler.is_own_write(KEY, "41")  # the fake keeps the version; a server bumps it
    assert not reconciler.is_own_write(KEY, "42")

    gets: list[str] = []
    original_get = api.get

    async def counting_get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        gets.append(kind)
        return await original_get(kind, namespace, name)

    api.get = counting_get  # type: ignore[method-assign]
    await reconciler.reconcile(KEY)
    assert gets == ["SLMDeployment"]  # children (and their absence) are known from the watch
    reconciler.remember_child("Service", "ai", "assistant", None)  # the watch says it was deleted
    result = await reconciler.reconcile(KEY)
    assert result.applied == ["Service/assistant"]


async def test_a_burst_of_triggers_runs_one_reconcile(api: FakeApi, reconciler: Reconciler) -> None:
    reconciler.debounce_seconds = 0.05
    runs: list[tuple[str, str]] = []

    async def counting(key: tuple[str, str]) -> Any:
        runs.append(key)
        return await Reconciler.reconcile(reconciler, key)

    reconciler.reconcile = counting  # type: ignore[method-assign]
    for _ in range(5):
        reconciler.enqueue(KEY)
    reconciler.enqueue(("ai", "other"))
    await reconciler.idle()
    assert sorted(runs) == [KEY, ("ai", "other")]
    reconciler.enqueue(KEY)  # a trigger after the run starts a new one
    await reconciler.idle()
    assert runs.count(KEY) == 2


# --- fetch failures that name their cause, and a model corrupted on the claim -----------------

SPEC = {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}
GOOD = "e" * 64
BAD = "b" * 64
NOT_WRITABLE = (
    "cache volume not writable: /models/x (uid 65532, gid 65532): /models is owned by 0:0 with mode 0755 "
    "and the volume does not apply fsGroup (hostPath and some CSI drivers); make it writable for uid 65532 "
    "(chown 65532:65532 or chmod on the node, or a StorageClass whose driver honours fsGroup)"
)


def full_conditions(api: FakeApi) -> dict[str, tuple[str, str, str]]:
    status = api.objects[("SLMDeployment", "ai", "assistant")]["status"]
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def put_fetch_pod(api: FakeApi, job_name: str, exit_code: int, message: str, suffix: str = "a1") -> None:
    api.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": f"{job_name}-{suffix}",
                "namespace": "ai",
                "labels": {"job-name": job_name},
                "creationTimestamp": f"2026-11-30T01:00:{suffix[-1]}0Z",
            },
            "status": {
                "containerStatuses": [
                    {"name": "fetch", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
                ]
            },
        }
    )


def put_runtime_pod(
    api: FakeApi, cache_key: str, container: dict[str, Any], name: str = "assistant-6d4f-x2"
) -> None:
    api.put(
        {
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "ai",
                "labels": {
                    "app.kubernetes.io/instance": "assistant",
                    "app.kubernetes.io/name": "slm-runtime",
                },
                "annotations": {"slm.dev/model-cache-key": cache_key},
            },
            "status": {"containerStatuses": [{"name": "runtime", "ready": False, **container}]},
        }
    )


def make_deployment_unavailable(api: FakeApi) -> None:
    make_deployment_ready(api)
    api.objects[("Deployment", "ai", "assistant")]["status"] |= {
        "readyReplicas": 0,
        "availableReplicas": 0,
        "unavailableReplicas": 1,
    }


def fetched_record(size: int = 397808192) -> str:
    return json.dumps({"phase": "Ready", "sha256": GOOD, "sizeBytes": size, "quantization": "q4_k_m"})


async def test_an_unwritable_cache_is_named_stalled_and_still_retried(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.put(slm_body(SPEC))
    await reconciler.reconcile(KEY)
    job_name = set_job_condition(api, "Running")
    api.objects[("Job", "ai", job_name)]["status"] = {"failed": 1, "active": 1}
    put_fetch_pod(api, job_name, 1, f"CacheNotWritable: {NOT_WRITABLE}")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    message = f"cache claim assistant-model-cache: {NOT_WRITABLE}"
    waiting = "retrying the fetch with backoff; it succeeds once the cache volume is writable"
    conditions_now = full_conditions(api)
    assert {k: v for k, v in conditions_now.items() if k != "Placed"} == {
        "Ready": ("False", "CacheNotWritable", message),
        "Reconciling": ("False", "CacheNotWritable", waiting),
        "Stalled": ("True", "CacheNotWritable", message),
        "ModelCached": ("False", "CacheNotWritable", message),
    }
    cache = api.objects[("SLMDeployment", "ai", "assistant")]["status"]["cache"]
    assert (cache["phase"], cache["message"]) == ("Failed", NOT_WRITABLE)

    # The Job gives up: same status (nothing to rewrite), the retry backoff runs as for any failure.
    set_job_condition(api, "Failed", failed=5, when=NOW - timedelta(seconds=10))
    watched(reconciler)
    waiting_pass = await reconciler.reconcile(KEY)
    assert not waiting_pass.status_written
    assert waiting_pass.requeue_after == 20.0
    assert api.events[-1] == ("CacheNotWritable", f"fetch attempt 1 failed: {NOT_WRITABLE}; retrying in 30s")
    set_job_condition(api, "Failed", failed=5, when=NOW - timedelta(seconds=31))
    watched(reconciler)
    assert (await reconciler.reconcile(KEY)).applied == [f"-Job/{job_name}"]

    # Someone fixed the volume: the next Job succeeds and the model is cached.
    del api.objects[("Pod", "ai", f"{job_name}-a1")]
    assert f"Job/{job_name}" in (await reconciler.reconcile(KEY)).applied
    set_job_condition(api, "Complete")
    put_fetch_pod(api, job_name, 0, fetched_record())
    watched(reconciler)
    await reconciler.reconcile(KEY)
    assert full_conditions(api)["ModelCached"][:2] == ("True", "Cached")
    assert full_conditions(api)["Stalled"][:2] == ("False", "Progressing")


async def test_a_corrupted_model_is_forgotten_fetched_again_and_served(
    api: FakeApi, catalog: Catalog
) -> None:
    clock = [NOW]
    settings = OperatorSettings(fetch_retry_base_seconds=30, fetch_retry_max_seconds=3600)
    reconciler = Reconciler(api, settings, catalog, OperatorMetrics(), clock=lambda: clock[0])
    reconciler.set_nodes([cpu_node("cpu-0", memory="64Gi")])
    api.put(slm_body(SPEC))
    await reconciler.reconcile(KEY)
    job_name = set_job_condition(api, "Complete")
    put_fetch_pod(api, job_name, 0, fetched_record())
    watched(reconciler)
    await reconciler.reconcile(KEY)
    claim_key = ("PersistentVolumeClaim", "ai", "assistant-model-cache")
    api.objects[claim_key]["status"] = {"phase": "Bound"}  # as the volume controller would
    cache_key = api.objects[("Job", "ai", job_name)]["metadata"]["annotations"]["slm.dev/model-cache-key"]
    assert cached_models(api.objects[claim_key]) == {
        cache_key: {
            "source": "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q8_0.gguf",
            "sha256": GOOD,
            "sizeBytes": 397808192,
            "quantization": "q4_k_m",
            "cachedAt": "2026-11-30T02:00:00Z",
        }
    }
    env = api.objects[("Deployment", "ai", "assistant")]["spec"]["template"]["spec"]["containers"][0]["env"]
    model_path = env[0]["value"]
    assert env[:2] == [
        {"name": "SLM_MODEL", "value": model_path},
        {"name": "SLM_MODEL_SHA256", "value": GOOD},
    ]
    make_deployment_ready(api)
    watched(reconciler)
    await reconciler.reconcile(KEY)
    assert conditions(api)["Ready"] == ("True", "Available")

    # The file is changed on the claim; the replacement runtime Pod refuses it and crash-loops.
    report = (
        f"{model_path} sha256 {BAD} does not match the cached model's {GOOD}; the operator fetches it again"
    )
    make_deployment_unavailable(api)
    put_runtime_pod(
        api,
        cache_key,
        {
            "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting"}},
            "lastState": {
                "terminated": {
                    "exitCode": 3,
                    "finishedAt": "2026-11-30T02:01:00Z",
                    "message": f"ModelCorrupted: {report}",
                }
            },
        },
    )
    clock[0] = NOW + timedelta(seconds=70)
    watched(reconciler)
    api.writes.clear()
    api.lists.clear()
    detected = await reconciler.reconcile(KEY)
    assert api.lists == ["Pod app.kubernetes.io/instance=assistant,app.kubernetes.io/name=slm-runtime"]
    assert detected.applied == ["-PersistentVolumeClaim/assistant-model-cache#cached", f"-Job/{job_name}"]
    assert api.writes == [
        "annotate PersistentVolumeClaim/assistant-model-cache",
        f"delete Job/{job_name}",
        "status SLMDeployment/assistant",
    ]
    assert detected.requeue_after == 1.0
    assert cached_models(api.objects[claim_key]) == {}
    assert ("Job", "ai", job_name) not in api.objects
    message = f"runtime pod assistant-6d4f-x2: {report}"
    assert api.events[-1] == ("ModelCorrupted", message)
    assert {k: v for k, v in full_conditions(api).items() if k != "Placed"} == {
        "Ready": ("False", "ModelCorrupted", message),
        "Reconciling": ("True", "ModelCorrupted", message),
        "Stalled": ("False", "Progressing", ""),
        "ModelCached": ("False", "ModelCorrupted", message),
    }

    # The next pass (the claim as the operator left it, before any watch event) fetches again;
    # the Pod's report from before is not a reason to drop anything now.
    del api.objects[("Pod", "ai", f"{job_name}-a1")]
    recreated = await reconciler.reconcile(KEY)
    assert recreated.applied == [f"Job/{job_name}"]
    assert recreated.requeue_after == FETCH_PROGRESS_SECONDS  # sooner than RUNTIME_POLL_SECONDS
    assert full_conditions(api)["ModelCached"] == ("False", "ModelCorrupted", message)
    api.objects[("Job", "ai", job_name)]["status"] = {"active": 1}
    watched(reconciler)
    await reconciler.reconcile(KEY)
    assert full_conditions(api)["ModelCached"] == ("False", "ModelCorrupted", message)  # while fetching
    assert api.objects[("SLMDeployment", "ai", "assistant")]["status"]["cache"]["phase"] == "Fetching"

    # Fetched again: cached (a new cachedAt), and the crash before it no longer counts.
    clock[0] = NOW + timedelta(seconds=120)
    set_job_condition(api, "Complete")
    put_fetch_pod(api, job_name, 0, fetched_record(), suffix="b2")
    watched(reconciler)
    refetched = await reconciler.reconcile(KEY)
    assert refetched.applied == ["PersistentVolumeClaim/assistant-model-cache#cached"]
    assert cached_models(api.objects[claim_key])[cache_key]["cachedAt"] == "2026-11-30T02:02:00Z"
    assert full_conditions(api)["ModelCached"][:2] == ("True", "Cached")
    assert conditions(api)["Ready"] == ("False", "WaitingForReplicas")
    watched(reconciler)
    assert (await reconciler.reconcile(KEY)).applied == []  # the old report is stale: nothing dropped
    assert len([e for e in api.events if e[0] == "ModelCorrupted"]) == 1

    # The kubelet restarts the container, which now verifies the model and serves.
    del api.objects[("Pod", "ai", "assistant-6d4f-x2")]
    make_deployment_ready(api)
    watched(reconciler)
    api.lists.clear()
    served = await reconciler.reconcile(KEY)
    assert conditions(api)["Ready"] == ("True", "Available")
    assert api.lists == [] and served.requeue_after is None


async def test_a_runtime_that_keeps_failing_shows_in_ready(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body(SPEC))
    await reconciler.reconcile(KEY)
    job_name = set_job_condition(api, "Complete")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    cache_key = api.objects[("Job", "ai", job_name)]["metadata"]["annotations"]["slm.dev/model-cache-key"]
    make_deployment_unavailable(api)
    watched(reconciler)
    starting = await reconciler.reconcile(KEY)  # no Pod says anything yet: look again soon
    assert conditions(api)["Ready"] == ("False", "WaitingForReplicas")
    assert starting.requeue_after == RUNTIME_POLL_SECONDS
    put_runtime_pod(
        api,
        cache_key,
        {
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
            "lastState": {"terminated": {"exitCode": 1, "message": "loading\nerror: out of memory"}},
        },
    )
    await reconciler.reconcile(KEY)
    assert full_conditions(api)["Ready"] == (
        "False",
        "RuntimeFailing",
        "runtime pod assistant-6d4f-x2 is in CrashLoopBackOff: error: out of memory",
    )
    assert full_conditions(api)["Reconciling"][:2] == ("True", "RuntimeFailing")
    assert conditions(api)["ModelCached"] == ("True", "Cached")  # nothing is fetched again
    assert [w for w in api.writes if w.startswith(("delete", "annotate PersistentVolumeClaim"))] == [
        "annotate PersistentVolumeClaim/assistant-model-cache"  # the first caching only
    ]


# --- failures that are not API errors, and children lost while the watch was down --------------


def reconcile_errors(reconciler: Reconciler) -> float:
    value = reconciler.metrics.registry.get_sample_value("slm_operator_reconcile_errors_total")
    return float(value or 0.0)


@pytest.mark.parametrize(
    "error",
    [aiohttp.ServerDisconnectedError(), RuntimeError("a bug")],
    ids=["server-disconnected", "any-exception"],
)
async def test_any_exception_in_a_reconcile_is_counted_and_retried(
    api: FakeApi, reconciler: Reconciler, error: Exception
) -> None:
    api.put(slm_body(SPEC))
    reconciler.debounce_seconds = 0
    calls: list[int] = []

    async def failing_once(key: tuple[str, str]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return await Reconciler.reconcile(reconciler, key)

    reconciler.reconcile = failing_once  # type: ignore[method-assign]
    reconciler.enqueue(KEY)
    await reconciler.idle()
    assert reconcile_errors(reconciler) == 1.0
    timer = reconciler.queue.timers[KEY]  # the retry, after the first backoff step
    loop = asyncio.get_running_loop()
    assert timer.when() - loop.time() == pytest.approx(2.0, abs=0.5)
    timer.cancel()
    reconciler.enqueue(KEY)  # what the timer does when it fires
    await reconciler.idle()
    assert len(calls) == 2
    assert ("Deployment", "ai", "assistant") not in api.objects  # not fetched yet, but converging
    assert api.objects[("PersistentVolumeClaim", "ai", "assistant-model-cache")]


async def test_the_api_client_wraps_a_dropped_connection_as_an_api_error() -> None:
    class DroppingClient:
        async def call_api(self, *args: Any, **kwargs: Any) -> Any:
            raise aiohttp.ServerDisconnectedError()

    kube = Kubernetes(DroppingClient())  # type: ignore[arg-type]
    with pytest.raises(ApiError) as raised:
        await kube.get("Service", "ai", "assistant")
    assert raised.value.status == 0
    assert "ServerDisconnectedError" in raised.value.message


async def test_a_resync_recreates_a_child_deleted_while_the_watch_was_down(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.put(slm_body(SPEC))
    await reconciler.reconcile(KEY)
    set_job_condition(api, "Complete")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    assert ("Service", "ai", "assistant") in api.objects
    assert (await reconciler.reconcile(KEY)).applied == []  # converged; children remembered
    del api.objects[("Service", "ai", "assistant")]  # deleted while no watch saw it
    assert (await reconciler.reconcile(KEY)).applied == []  # the cache still has it
    reconciler.debounce_seconds = 0
    reconciler.known.add(KEY)  # as the SLMDeployment watch recorded it
    reconciler.resync()
    await reconciler.idle()
    assert ("Service", "ai", "assistant") in api.objects


async def test_an_invalid_spec_is_reported_once_and_then_left_alone(api: FakeApi, catalog: Catalog) -> None:
    # Only with a CRD older than the operator: the schema let through what the models refuse.
    clock = [NOW]
    reconciler = Reconciler(api, OperatorSettings(), catalog, OperatorMetrics(), clock=lambda: clock[0])
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "replicas": "many"}))
    first = await reconciler.reconcile(KEY)
    assert first.status_written
    status = api.objects[("SLMDeployment", "ai", "assistant")]["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ConfigurationError")
    assert ready["message"].startswith("spec is invalid: spec.replicas: ")
    assert ready["lastTransitionTime"] == "2026-11-30T02:00:00Z"
    clock[0] = NOW + timedelta(minutes=10)  # the resync, much later
    api.writes.clear()
    again = await reconciler.reconcile(KEY)
    assert not again.status_written and api.writes == []


@pytest.mark.parametrize(("access_mode", "pinned"), [("ReadWriteOnce", "cpu-0"), ("ReadWriteMany", None)])
async def test_a_new_fetch_follows_a_single_attach_claim_to_its_node(
    api: FakeApi, reconciler: Reconciler, access_mode: str, pinned: str | None
) -> None:
    spec = {**SPEC, "cache": {"accessMode": access_mode}}
    api.put(slm_body(spec))
    await reconciler.reconcile(KEY)
    first_job = set_job_condition(api, "Complete")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    make_deployment_ready(api)
    put_runtime_pod(api, "old-model", {"state": {"running": {}}, "ready": True})
    pod = api.objects[("Pod", "ai", "assistant-6d4f-x2")]
    pod["spec"] = {"nodeName": "cpu-0"}
    pod["status"]["phase"] = "Running"
    # A new model version on the same claim: its fetch Job must reach the volume where it is mounted.
    api.put(slm_body({**spec, "model": {"name": "qwen2.5:0.5b", "quantization": "q4_k_m"}}, generation=2))
    watched(reconciler)
    await reconciler.reconcile(KEY)
    jobs = [o for (k, _, n), o in api.objects.items() if k == "Job" and n != first_job]
    assert len(jobs) == 1
    node_selector = jobs[0]["spec"]["template"]["spec"].get("nodeSelector", {})
    assert node_selector.get("kubernetes.io/hostname") == pinned


def fetch_pod(job_name: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": f"{job_name}-x7k2p", "namespace": "ai", "labels": {"job-name": job_name}},
        "status": {"phase": phase},
    }


async def test_a_running_fetch_shows_its_bytes_total_and_rate(api: FakeApi, reconciler: Reconciler) -> None:
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    first = await reconciler.reconcile(KEY)
    assert first.requeue_after == FETCH_PROGRESS_SECONDS  # a Job runs: look at its progress again
    job_name = next(name for (kind, _, name) in api.objects if kind == "Job")
    api.objects[("Job", "ai", job_name)]["status"] = {"active": 1}
    pod = fetch_pod(job_name)
    api.put(pod)
    api.logs[(pod["metadata"]["name"], "fetch")] = (
        "fetch: downloading https://example.test/model.gguf\n"
        "fetch: 1000/4000 bytes (25.0%) at 0 B/s\n"
        "fetch: 2000/4000 bytes (50.0%) at 500 B/s\n"
    )
    watched(reconciler)
    seen = await reconciler.reconcile(KEY)
    assert seen.status_written and seen.requeue_after == FETCH_PROGRESS_SECONDS
    status = api.objects[("SLMDeployment", "ai", "assistant")]["status"]
    assert {k: status["cache"][k] for k in ("phase", "bytesDownloaded", "totalBytes", "bytesPerSecond")} == {
        "phase": "Fetching",
        "bytesDownloaded": 2000,
        "totalBytes": 4000,
        "bytesPerSecond": 500,
    }
    cached = next(c for c in status["conditions"] if c["type"] == "ModelCached")
    assert "(50% of 4000 bytes)" in cached["message"]

    # Once complete, the rate is gone and the size is the cached file's.
    set_job_condition(api, "Complete")
    watched(reconciler)
    await reconciler.reconcile(KEY)
    cache = api.objects[("SLMDeployment", "ai", "assistant")]["status"]["cache"]
    assert cache["phase"] == "Ready" and cache.get("bytesPerSecond", 0) == 0


async def test_fetch_progress_is_best_effort(api: FakeApi, reconciler: Reconciler) -> None:
    """A log the API refuses (no RBAC, container not started) changes nothing and fails nothing."""
    api.put(slm_body({"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}}))
    await reconciler.reconcile(KEY)
    job_name = next(name for (kind, _, name) in api.objects if kind == "Job")
    api.objects[("Job", "ai", job_name)]["status"] = {"active": 1}
    pod = fetch_pod(job_name)
    api.put(pod)
    api.logs[(pod["metadata"]["name"], "fetch")] = ApiError(403, "pods/log is forbidden")
    watched(reconciler)
    result = await reconciler.reconcile(KEY)
    assert result.requeue_after == FETCH_PROGRESS_SECONDS
    assert api.objects[("SLMDeployment", "ai", "assistant")]["status"]["cache"]["phase"] == "Fetching"
    assert api.objects[("SLMDeployment", "ai", "assistant")]["status"]["cache"].get("bytesPerSecond", 0) == 0
