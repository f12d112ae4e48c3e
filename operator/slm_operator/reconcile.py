"""Level-triggered reconcile of one SLMDeployment, and the queue that runs it.

The same function runs on create, update, resume, child changes, node changes and a
periodic resync: read the object, resolve a plan from the spec and the node inventory,
apply the children that differ from what is wanted (server-side apply, one field manager),
observe them and write status only when it changed. In steady state it writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pydantic

from slm_operator.api.v1alpha1 import SLMDeploymentSpec, SLMDeploymentStatus
from slm_operator.builders import build_deployment, build_fetch_job, build_pvc, build_service
from slm_operator.catalog import Catalog
from slm_operator.k8s import ApiError, KubeApi
from slm_operator.metrics import OperatorMetrics
from slm_operator.naming import cache_claim_name, fetch_job_name, selector_string
from slm_operator.resolve import (
    ExistingClaim,
    Facts,
    NodeFacts,
    Owner,
    Plan,
    ResolveFailure,
    parse_quantity,
    resolve,
)
from slm_operator.settings import OperatorSettings
from slm_operator.status import (
    MODEL_CORRUPTED,
    JobObservation,
    ObservedChildren,
    RuntimeObservation,
    compute_status,
    fetch_failure_reason,
    invalid_spec_status,
    observe_deployment,
    observe_job,
    observe_runtime_pods,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

# On the cache claim: JSON {cache key: {source, sha256, sizeBytes, quantization, cachedAt}} of the
# models it holds.
CACHED_MODELS_ANNOTATION = "slm.dev/cached-models"
# While serving replicas are unavailable, how often their Pods are looked at again (Pods are not
# watched: a container that crashes in an already-unavailable Pod changes no watched object).
RUNTIME_POLL_SECONDS = 10.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def fetch_retry_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before fetch attempt ``attempt + 1`` (attempt counts from 1)."""
    return float(min(base * 2 ** max(attempt - 1, 0), cap))


_QUANTITY_TEXT = re.compile(r"^[+]?[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")


def _same_quantity(a: str, b: str) -> bool:
    """Whether two strings are the same Kubernetes quantity written differently."""
    if not (_QUANTITY_TEXT.match(a) and _QUANTITY_TEXT.match(b)):
        return False
    return parse_quantity(a) == parse_quantity(b)


def contains(observed: Any, desired: Any) -> bool:
    """Whether every field the operator sets has the wanted value in the live object.

    Fields the server or other controllers add (defaults, status, clusterIP) are ignored;
    quantities compare by value ("1024Mi" equals "1Gi").
    """
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(contains(observed.get(key), value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return False
        return all(contains(o, d) for o, d in zip(observed, desired, strict=True))
    if isinstance(desired, str) and isinstance(observed, str) and desired != observed:
        return _same_quantity(desired, observed)
    if isinstance(desired, bool) or isinstance(observed, bool):
        return desired is observed
    if isinstance(desired, int | float) and isinstance(observed, int | float):
        return float(desired) == float(observed)
    return bool(observed == desired)


@dataclass
class ReconcileResult:
    """What one reconcile did (for logs, metrics and tests)."""

    applied: list[str] = field(default_factory=list)
    status_written: bool = False
    outcome: str = ""  # tier placed on, or the failure reason
    requeue_after: float | None = None


class Reconciler:
    """Runs reconciles: one at a time per object, coalescing bursts of triggers."""

    def __init__(
        self,
        api: KubeApi,
        settings: OperatorSettings,
        catalog: Catalog,
        metrics: OperatorMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        concurrency: int = 8,
        debounce_seconds: float = 0.5,
    ) -> None:
        self.api = api
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics
        self.clock = clock
        self.nodes: dict[str, NodeFacts] = {}
        self.known: set[Key] = set()
        self._locks: dict[Key, asyncio.Lock] = {}
        self._pending: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._slots = asyncio.Semaphore(concurrency)
        # Children change in bursts (claim bound, Job done, pods ready...): triggers that
        # arrive within this window of the first one share one reconcile.
        self.debounce_seconds = debounce_seconds
        self._failures: dict[Key, int] = {}
        # Fetch attempts per (object, Job name); in memory: after a restart retries start over.
        self._fetch_attempts: dict[tuple[Key, str], int] = {}
        self._last_event: dict[Key, tuple[str, str]] = {}
        self._last_notice: dict[Key, tuple[str, str]] = {}
        # Children as the watch last showed them (kind, namespace, name) -> object; None =
        # known absent. Saves a GET per child per reconcile; a miss falls back to a GET.
        self.children: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        # resourceVersion of our own last status write per object: the watch event it
        # causes needs no reconcile.
        self.own_writes: dict[Key, str] = {}

    # --- inputs ---------------------------------------------------------------------------
    def set_nodes(self, nodes: Iterable[NodeFacts]) -> bool:
        """Replace the inventory; True when anything placement reads changed."""
        fresh = {node.name: node for node in nodes}
        changed = fresh != self.nodes
        self.nodes = fresh
        return changed

    def remember_child(self, kind: str, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """Record a child as a watch event showed it (None: deleted)."""
        if body is None:
            self.children[(kind, namespace, name)] = None
            return
        copy = dict(body)
        copy["metadata"] = {k: v for k, v in dict(body["metadata"]).items() if k != "managedFields"}
        self.children[(kind, namespace, name)] = copy

    async def _child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        if key in self.children:
            cached = self.children[key]
            return dict(cached) if cached is not None else None
        live = await self.api.get(kind, namespace, name)
        self.remember_child(kind, namespace, name, live)
        return live

    def is_own_write(self, key: Key, resource_version: str) -> bool:
        return bool(resource_version) and self.own_writes.get(key) == resource_version

    def forget(self, key: Key) -> None:
        self.known.discard(key)
        self.own_writes.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._failures.pop(key, None)
        self._last_event.pop(key, None)
        self._last_notice.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        for attempt_key in [k for k in self._fetch_attempts if k[0] == key]:
            del self._fetch_attempts[attempt_key]

    # --- queue ----------------------------------------------------------------------------
    def enqueue(self, key: Key) -> None:
        """Ask for a reconcile of ``key`` soon; triggers that arrive before it starts merge."""
        self.known.add(key)
        if key in self._pending:
            return
        self._pending.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def enqueue_all(self) -> None:
        for key in sorted(self.known):
            self.enqueue(key)

    def enqueue_after(self, key: Key, delay: float) -> None:
        previous = self._timers.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    async def idle(self) -> None:
        """Wait until no reconcile is queued or running (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self, key: Key) -> None:
        if self.debounce_seconds:
            await asyncio.sleep(self.debounce_seconds)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock, self._slots:
            self._pending.discard(key)
            started = time.perf_counter()
            try:
                result = await self.reconcile(key)
            except ApiError as error:
                delay = self._failed(key)
                log.warning(
                    "reconcile of %s/%s failed (retry in %.0fs): %s", key[0], key[1], delay, error.message
                )
                return
            except Exception:
                # Anything else (a transport error the client did not wrap, a bug): counted and retried
                # like an API error, never lost as an unretrieved task exception.
                delay = self._failed(key)
                log.exception("reconcile of %s/%s failed (retry in %.0fs)", key[0], key[1], delay)
                return
            finally:
                self.metrics.reconcile_duration.observe(time.perf_counter() - started)
            self._failures.pop(key, None)
            self.metrics.reconciles.labels(result="ok").inc()
            if result.applied or result.status_written:
                log.info(
                    "reconciled %s/%s (%s): applied %s%s",
                    key[0],
                    key[1],
                    result.outcome or "deleted",
                    ", ".join(result.applied) or "nothing",
                    "; status updated" if result.status_written else "",
                )
            if result.requeue_after is not None:
                self.enqueue_after(key, result.requeue_after)

    def _failed(self, key: Key) -> float:
        """Count a failed reconcile and schedule the retry (doubling, at most 5 minutes); the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(2.0**failures, 300.0)
        self.metrics.reconcile_errors.inc()
        self.metrics.reconciles.labels(result="error").inc()
        self.enqueue_after(key, delay)
        return delay

    def resync(self) -> None:
        """A periodic pass over every object with the children read afresh.

        The child cache is only as good as the watch: after a watch outage Kopf re-lists without
        DELETED events, so a child deleted meanwhile would stay remembered. Forgetting them makes
        the next pass GET each child, and a missing one is created again.
        """
        self.children.clear()
        self.enqueue_all()

    # --- the reconcile itself ---------------------------------------------------------------
    async def reconcile(self, key: Key) -> ReconcileResult:
        namespace, name = key
        result = ReconcileResult()
        body = await self.api.get("SLMDeployment", namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(key)
            return result
        meta = body["metadata"]
        owner = Owner(name=name, namespace=namespace, uid=meta["uid"])
        generation = int(meta.get("generation", 1))
        previous = _previous_status(body)
        try:
            spec = SLMDeploymentSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as error:
            # Admission rejects invalid specs; this only happens when the CRD is older than us.
            failure = ResolveFailure("ConfigurationError", f"spec is invalid: {_first_error(error)}")
            await self._write_status(
                body, owner, None, generation, failure, ObservedChildren(), previous, result
            )
            return result

        claim = await self._child("PersistentVolumeClaim", namespace, cache_claim_name(name))
        facts = Facts(
            catalog=self.catalog,
            nodes=list(self.nodes.values()),
            settings=self.settings,
            existing_claim=ExistingClaim.from_pvc(claim) if claim else None,
            fetched_model_bytes=(
                previous.model.size_bytes if previous.model and previous.model.size_bytes else None
            ),
            fetched_model_source=previous.model.source if previous.model else "",
        )
        outcome = resolve(owner, spec, facts)
        if isinstance(outcome, ResolveFailure):
            result.outcome = outcome.reason
            observed = ObservedChildren(claim_phase=_phase(claim))
            await self._write_status(body, owner, spec, generation, outcome, observed, previous, result)
            return result

        plan = outcome
        result.outcome = plan.placement.tier
        try:
            observed = await self._converge_children(key, plan, claim, result)
        except ApiError as error:
            # Say so in status (the object must never look untouched), then back off.
            if error.status == 0:
                raise
            observed = ObservedChildren(claim_phase=_phase(claim), apply_error=error.message)
            await self._write_status(body, owner, spec, generation, plan, observed, previous, result)
            await self._notify(owner, "ApplyFailed", error.message, "Warning")
            raise
        await self._write_status(body, owner, spec, generation, plan, observed, previous, result)
        return result

    async def _apply_if_drifted(
        self, manifest: dict[str, Any], live: Mapping[str, Any] | None, result: ReconcileResult
    ) -> dict[str, Any]:
        if live is not None and contains(live, manifest):
            return dict(live)
        applied = await self.api.apply(manifest)
        meta = manifest["metadata"]
        self.remember_child(str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]), applied)
        result.applied.append(f"{manifest['kind']}/{meta['name']}")
        return applied

    async def _converge_children(
        self, key: Key, plan: Plan, claim: Mapping[str, Any] | None, result: ReconcileResult
    ) -> ObservedChildren:
        namespace, name = key
        try:
            claim = await self._apply_if_drifted(build_pvc(plan), claim, result)
        except ApiError as error:
            if claim is None or error.status not in (403, 422):
                raise
            # The claim exists but cannot change (e.g. its class does not allow expansion):
            # keep using it; a fetch that runs out of space says so in ModelCached.
            await self._notify(
                plan.owner,
                "CacheNotResized",
                f"cache claim {plan.cache.claim_name} cannot be changed to {plan.cache.size}: {error.message}",
                "Warning",
            )

        key_of_model = plan.model.cache_key
        job_name = fetch_job_name(name, key_of_model)
        cached = cached_models(claim)
        record = cached.get(key_of_model)
        deployment = await self._child("Deployment", namespace, name)
        runtime = RuntimeObservation()
        corrupted = ""
        if deployment is not None and observe_deployment(deployment).unavailable_replicas:
            # Only while replicas are unavailable (steady state lists nothing): what the serving
            # Pods say. Pod changes raise no event we watch, so look again until they are available.
            serving = await self.api.list("Pod", namespace, selector_string(name))
            runtime = observe_runtime_pods(serving, cache_key=key_of_model, cached_since=_cached_at(record))
            _requeue(result, RUNTIME_POLL_SECONDS)
            if runtime.corrupted and record is not None:
                corrupted = runtime.corrupted
                await self._drop_corrupted(plan, cached, job_name, corrupted, result)
                record = None

        job_seen: JobObservation | None = None
        job = None if corrupted else await self._child("Job", namespace, job_name)
        if corrupted:
            pass  # the Job was deleted (its name is the model's): the next pass creates a new one
        elif job is None and record is not None:
            # Already in the cache (a retained claim, or a Job since cleaned up): never fetch twice.
            job_seen = _from_record(JobObservation(name="", succeeded=True), record)
        else:
            if job is None:
                attached = await self._node_holding_claim(plan, deployment)
                manifest = build_fetch_job(plan, attached_node=attached)
                job = await self._apply_if_drifted(manifest, None, result)
            pods: list[dict[str, Any]] = []
            if _job_failed(job) or _job_failed_pods(job) or (_job_complete(job) and record is None):
                # The fetcher's last word (error, or its result record) is in the pod's
                # termination message; read once per outcome, not on every pass.
                pods = await self.api.list("Pod", namespace, f"job-name={job_name}")
            job_seen = observe_job(job, pods)
            if job_seen.failed:
                await self._schedule_fetch_retry(plan.owner, job, job_seen, result)
            elif job_seen.succeeded:
                self._fetch_attempts.pop((key, job_name), None)
                if record is None:
                    cached[key_of_model] = {
                        "source": plan.model.source,
                        "sha256": job_seen.sha256,
                        "sizeBytes": job_seen.size_bytes,
                        "quantization": job_seen.quantization,
                        "cachedAt": self.clock().strftime(_TIME_FORMAT),
                    }
                    await self._write_cached_models(plan, cached)
                    result.applied.append(f"PersistentVolumeClaim/{plan.cache.claim_name}#cached")
                else:
                    job_seen = _from_record(job_seen, record)

        if job_seen is not None and job_seen.succeeded:
            # Serve only a cached model; until the new one is cached, the old Deployment keeps serving.
            manifest = build_deployment(plan, model_sha256=job_seen.sha256)
            deployment = await self._apply_if_drifted(manifest, deployment, result)
        service = await self._child("Service", namespace, name)
        service = await self._apply_if_drifted(build_service(plan), service, result)
        return ObservedChildren(
            claim_phase=_phase(claim),
            fetch_job=job_seen,
            deployment=observe_deployment(deployment) if deployment else None,
            service=service is not None,
            runtime=runtime,
            model_corrupted=corrupted,
        )

    async def _node_holding_claim(self, plan: Plan, deployment: Mapping[str, Any] | None) -> str:
        """The node where serving Pods have a single-attach cache claim mounted, else "".

        Asked only when a fetch Job is about to be created (a new model version on a claim that
        serves the old one), so it costs one list per new model, none in steady state.
        """
        if plan.cache.access_mode == "ReadWriteMany" or deployment is None:
            return ""
        owner = plan.owner
        pods = await self.api.list("Pod", owner.namespace, selector_string(owner.name))
        nodes = sorted(
            str(pod["spec"]["nodeName"])
            for pod in pods
            if (pod.get("spec") or {}).get("nodeName")
            and not (pod.get("metadata") or {}).get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") in ("Pending", "Running")
        )
        return nodes[0] if nodes else ""

    async def _write_cached_models(self, plan: Plan, cached: Mapping[str, Any]) -> None:
        """Set the claim's record of the models it holds, and remember it (the watch may lag)."""
        namespace, claim_name = plan.owner.namespace, plan.cache.claim_name
        text = json.dumps(cached, sort_keys=True, separators=(",", ":"))
        await self.api.annotate(
            "PersistentVolumeClaim", namespace, claim_name, {CACHED_MODELS_ANNOTATION: text}
        )
        remembered = self.children.get(("PersistentVolumeClaim", namespace, claim_name))
        if remembered is not None:
            metadata = dict(remembered.get("metadata") or {})
            metadata["annotations"] = {**(metadata.get("annotations") or {}), CACHED_MODELS_ANNOTATION: text}
            self.children[("PersistentVolumeClaim", namespace, claim_name)] = {
                **remembered,
                "metadata": metadata,
            }

    async def _drop_corrupted(
        self,
        plan: Plan,
        cached: dict[str, dict[str, Any]],
        job_name: str,
        message: str,
        result: ReconcileResult,
    ) -> None:
        """A runtime found the cached model corrupted: forget it was cached and fetch it again.

        The record goes from the claim and the completed fetch Job is deleted (the new Job has
        the same name); the fetcher then checks the file against its own record and downloads
        it again. The crashing runtime Pods start serving once it is cached (kubelet restarts them).
        """
        owner = plan.owner
        key = (owner.namespace, owner.name)
        log.warning("%s/%s: %s; fetching the model again", owner.namespace, owner.name, message)
        cached.pop(plan.model.cache_key, None)
        await self._write_cached_models(plan, cached)
        result.applied.append(f"-PersistentVolumeClaim/{plan.cache.claim_name}#cached")
        if await self._child("Job", owner.namespace, job_name) is not None:
            await self.api.delete("Job", owner.namespace, job_name)
            self.remember_child("Job", owner.namespace, job_name, None)
            result.applied.append(f"-Job/{job_name}")
        self._fetch_attempts.pop((key, job_name), None)
        await self._notify(owner, MODEL_CORRUPTED, message, "Warning")
        _requeue(result, 1.0)

    async def _schedule_fetch_retry(
        self, owner: Owner, job: Mapping[str, Any], seen: JobObservation, result: ReconcileResult
    ) -> None:
        """Retry a failed fetch with exponential backoff: delete the Job when its time is up."""
        message = seen.message
        key = (owner.namespace, owner.name)
        job_name = str(job["metadata"]["name"])
        attempt = self._fetch_attempts.setdefault((key, job_name), 1)
        failed_at = _condition_time(job, "Failed") or self.clock()
        delay = fetch_retry_delay(
            attempt, self.settings.fetch_retry_base_seconds, self.settings.fetch_retry_max_seconds
        )
        wait = (failed_at.timestamp() + delay) - self.clock().timestamp()
        if wait > 0:
            _requeue(result, wait)
            await self._notify(
                owner,
                fetch_failure_reason(seen),
                f"fetch attempt {attempt} failed: {message}; retrying in {delay:.0f}s",
                "Warning",
            )
            return
        self._fetch_attempts[(key, job_name)] = attempt + 1
        log.info("retrying the fetch of %s/%s (attempt %d): %s", key[0], key[1], attempt + 1, message)
        await self.api.delete("Job", key[0], job_name)
        self.remember_child("Job", key[0], job_name, None)
        result.applied.append(f"-Job/{job_name}")
        # The Job's pods go with it (background propagation); recreate on the next pass.
        _requeue(result, 1.0)

    async def _notify(self, owner: Owner, reason: str, message: str, type_: str) -> None:
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
        await self.api.event(involved, reason=reason, message=message, type_=type_)

    async def _write_status(
        self,
        body: Mapping[str, Any],
        owner: Owner,
        spec: SLMDeploymentSpec | None,
        generation: int,
        outcome: Plan | ResolveFailure,
        observed: ObservedChildren,
        previous: SLMDeploymentStatus,
        result: ReconcileResult,
    ) -> None:
        if spec is None:
            assert isinstance(outcome, ResolveFailure)
            status = invalid_spec_status(
                body.get("status") or {},
                previous,
                owner=owner,
                generation=generation,
                failure=outcome,
                now=self.clock(),
            )
        else:
            status = compute_status(
                owner=owner,
                spec=spec,
                generation=generation,
                outcome=outcome,
                observed=observed,
                previous=previous,
                now=self.clock(),
            )
        if status == (body.get("status") or {}):
            return
        written = await self.api.patch_status("SLMDeployment", owner.namespace, owner.name, status)
        result.status_written = True
        written_meta = written.get("metadata") or {}
        if int(written_meta.get("generation", 0)) == generation:
            # Our write comes back as a watch event; when nothing else changed meanwhile
            # (same generation), that event needs no reconcile.
            self.own_writes[(owner.namespace, owner.name)] = str(written_meta.get("resourceVersion", ""))
        await self._announce(body, outcome)

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
        if self._last_event.get(key) == event:
            return
        self._last_event[key] = event
        if not isinstance(outcome, ResolveFailure):
            self.metrics.placements.labels(tier=outcome.placement.tier).inc()
        await self.api.event(body, reason=event[0], message=event[1], type_=type_)


def cached_models(claim: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The models a cache claim is known to hold, by cache key (from its annotation)."""
    if claim is None:
        return {}
    text = ((claim.get("metadata") or {}).get("annotations") or {}).get(CACHED_MODELS_ANNOTATION, "")
    try:
        loaded = json.loads(text) if text else {}
    except ValueError:
        return {}
    return (
        {str(k): dict(v) for k, v in loaded.items() if isinstance(v, dict)}
        if isinstance(loaded, dict)
        else {}
    )


def _previous_status(body: Mapping[str, Any]) -> SLMDeploymentStatus:
    try:
        return SLMDeploymentStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        return SLMDeploymentStatus()


def _first_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"spec.{location}: {first.get('msg', '')}"


def _phase(claim: Mapping[str, Any] | None) -> str | None:
    if claim is None:
        return None
    return str((claim.get("status") or {}).get("phase") or "Pending")


def _job_failed(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Failed" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _job_failed_pods(job: Mapping[str, Any]) -> bool:
    return bool((job.get("status") or {}).get("failed"))


def _job_complete(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Complete" and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _requeue(result: ReconcileResult, seconds: float) -> None:
    """Ask for another pass within `seconds` (the soonest of all the reasons wins)."""
    if result.requeue_after is None or seconds < result.requeue_after:
        result.requeue_after = seconds


def _cached_at(record: Mapping[str, Any] | None) -> datetime | None:
    """When the operator recorded a model as cached (None: unknown, e.g. a record from before)."""
    if not record or not record.get("cachedAt"):
        return None
    try:
        return datetime.strptime(str(record["cachedAt"]), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _from_record(seen: JobObservation, record: Mapping[str, Any]) -> JobObservation:
    """A completed fetch as the claim records it (digest, size, quantization)."""
    size = int(record.get("sizeBytes") or 0)
    return dataclasses.replace(
        seen,
        sha256=str(record.get("sha256") or ""),
        size_bytes=size,
        quantization=str(record.get("quantization") or ""),
        total_bytes=size,
        bytes_downloaded=size,
    )


def _condition_time(obj: Mapping[str, Any], type_: str) -> datetime | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_ and condition.get("lastTransitionTime"):
            return datetime.strptime(condition["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=UTC
            )
    return None
