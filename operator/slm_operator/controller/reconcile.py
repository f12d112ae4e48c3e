"""Level-triggered reconcile of one SLMDeployment: read, decide (pure), execute, report.

The same pass runs on create, update, resume, child changes, node changes and a periodic resync:
read the object and its children (from the watch-fed cache), resolve a plan from the spec and the
node inventory, let `plan_children` decide (after the Pod reads it asks for), execute its actions
(server-side apply under one field manager, deletes, annotations, Events) and write status only
when it changed. In steady state it writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, assert_never

import pydantic

from slm_operator.api.v1alpha1 import SLMDeploymentSpec, SLMDeploymentStatus
from slm_operator.builders.fetch_job import FETCH_CONTAINER
from slm_operator.catalog import Catalog
from slm_operator.children import observed_children, plan_children
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
from slm_operator.children.objects import claim_phase, node_holding_claim, running_pod
from slm_operator.controller.queue import Key, WorkQueue
from slm_operator.controller.report import Reporter
from slm_operator.facts import ExistingClaim, Facts, NodeFacts
from slm_operator.k8s.cache import ChildCache
from slm_operator.k8s.client import ApiError, KubeApi
from slm_operator.metrics import OperatorMetrics
from slm_operator.naming import cache_claim_name, fetch_job_name, selector_string
from slm_operator.observe import ObservedChildren, observe_runtime_pods
from slm_operator.plan import Owner, Plan, ResolveFailure
from slm_operator.resolve import resolve
from slm_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

FETCH_LOG_LINES = 5  # of a running fetch Pod's log: its last progress line is among them
# The API refuses a change to an object that exists (forbidden, invalid): an Apply may tolerate it.
REFUSED_STATUSES = (403, 422)
# plan_children asks for each read at most once (runtime Pods, then the fetch's): more is a bug.
MAX_READ_ROUNDS = 3


@dataclass
class ReconcileResult:
    """What one reconcile did (for logs, metrics and tests)."""

    applied: list[str] = field(default_factory=list)
    status_written: bool = False
    outcome: str = ""  # tier placed on, or the failure reason
    requeue_after: float | None = None


class Reconciler:
    """Reconciles SLMDeployments, through a queue that runs one at a time per object."""

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
        self.children = ChildCache(api)
        self.queue = WorkQueue(
            self._work, metrics, concurrency=concurrency, debounce_seconds=debounce_seconds
        )
        self.reporter = Reporter(api, metrics, clock)
        self.backoff = FetchBackoff(settings.fetch_retry_base_seconds, settings.fetch_retry_max_seconds)
        # Fetch attempts per (object, Job name); in memory: after a restart retries start over.
        self._fetch_attempts: dict[tuple[Key, str], int] = {}

    # --- inputs and the queue -----------------------------------------------------------------
    def set_nodes(self, nodes: Iterable[NodeFacts]) -> bool:
        """Replace the inventory; True when anything placement reads changed."""
        fresh = {node.name: node for node in nodes}
        changed = fresh != self.nodes
        self.nodes = fresh
        return changed

    def remember_child(self, kind: str, namespace: str, name: str, body: Mapping[str, Any] | None) -> None:
        """Record a child as a watch event showed it (None: deleted)."""
        self.children.remember(kind, namespace, name, body)

    def is_own_write(self, key: Key, resource_version: str) -> bool:
        return self.reporter.is_own_write(key, resource_version)

    @property
    def known(self) -> set[Key]:
        """Every SLMDeployment enqueued and not deleted."""
        return self.queue.known

    @property
    def debounce_seconds(self) -> float:
        return self.queue.debounce_seconds

    @debounce_seconds.setter
    def debounce_seconds(self, seconds: float) -> None:
        self.queue.debounce_seconds = seconds

    def enqueue(self, key: Key) -> None:
        self.queue.enqueue(key)

    def enqueue_all(self) -> None:
        self.queue.enqueue_all()

    def enqueue_after(self, key: Key, delay: float) -> None:
        self.queue.enqueue_after(key, delay)

    async def idle(self) -> None:
        await self.queue.idle()

    def resync(self) -> None:
        """A periodic pass over every object with the children read afresh (the cache is only as
        good as the watch: see ChildCache)."""
        self.children.clear()
        self.queue.enqueue_all()

    def forget(self, key: Key) -> None:
        self.queue.forget(key)
        self.reporter.forget(key)
        for attempt_key in [k for k in self._fetch_attempts if k[0] == key]:
            del self._fetch_attempts[attempt_key]

    async def _work(self, key: Key) -> float | None:
        result = await self.reconcile(key)
        if result.applied or result.status_written:
            log.info(
                "reconciled %s/%s (%s): applied %s%s",
                key[0],
                key[1],
                result.outcome or "deleted",
                ", ".join(result.applied) or "nothing",
                "; status updated" if result.status_written else "",
            )
        return result.requeue_after

    # --- the reconcile itself -------------------------------------------------------------------
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
            result.status_written = await self.reporter.write_status(
                body, owner, None, generation, failure, ObservedChildren(), previous
            )
            return result

        claim = await self.children.get("PersistentVolumeClaim", namespace, cache_claim_name(name))
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
            observed = ObservedChildren(claim_phase=claim_phase(claim))
            result.status_written = await self.reporter.write_status(
                body, owner, spec, generation, outcome, observed, previous
            )
            return result

        plan = outcome
        result.outcome = plan.placement.tier
        try:
            observed = await self._converge_children(plan, claim, result)
        except ApiError as error:
            # Say so in status (the object must never look untouched), then back off.
            if error.status == 0:
                raise
            observed = ObservedChildren(claim_phase=claim_phase(claim), apply_error=error.message)
            await self.reporter.write_status(body, owner, spec, generation, plan, observed, previous)
            await self.reporter.notify(owner, "ApplyFailed", error.message, "Warning")
            raise
        result.status_written = await self.reporter.write_status(
            body, owner, spec, generation, plan, observed, previous
        )
        return result

    async def _converge_children(
        self, plan: Plan, claim: Mapping[str, Any] | None, result: ReconcileResult
    ) -> ObservedChildren:
        """Read the children, let plan_children decide (reading what it asks for), execute."""
        owner = plan.owner
        job_name = fetch_job_name(owner.name, plan.model.cache_key)
        observed = Observed(
            now=self.clock(),
            claim=claim,
            fetch_job=await self.children.get("Job", owner.namespace, job_name),
            deployment=await self.children.get("Deployment", owner.namespace, owner.name),
            service=await self.children.get("Service", owner.namespace, owner.name),
            fetch_attempt=self._fetch_attempts.get(((owner.namespace, owner.name), job_name), 0),
        )
        pod_lists: dict[str, list[dict[str, Any]]] = {}  # by label selector, for this pass
        decision = plan_children(plan, observed, self.backoff)
        rounds = 0
        while decision.reads:
            rounds += 1
            if rounds > MAX_READ_ROUNDS:
                raise RuntimeError(f"plan_children keeps asking for reads: {decision.reads}")
            observed = await self._read(plan, observed, decision.reads, pod_lists)
            decision = plan_children(plan, observed, self.backoff)
        return await self._execute(plan, observed, decision, result)

    async def _read(
        self,
        plan: Plan,
        observed: Observed,
        reads: Iterable[Read],
        pod_lists: dict[str, list[dict[str, Any]]],
    ) -> Observed:
        """`observed` with what `reads` asked for."""
        namespace = plan.owner.namespace

        async def pods(selector: str) -> list[dict[str, Any]]:
            if selector not in pod_lists:
                pod_lists[selector] = await self.api.list("Pod", namespace, selector)
            return pod_lists[selector]

        for read in reads:
            if isinstance(read, ReadRuntimePods):
                serving = await pods(selector_string(plan.owner.name))
                runtime = observe_runtime_pods(
                    serving, cache_key=read.cache_key, cached_since=read.cached_since
                )
                observed = dataclasses.replace(observed, runtime=runtime)
            elif isinstance(read, ReadFetchPods):
                fetchers = await pods(f"job-name={read.job_name}")
                observed = dataclasses.replace(observed, fetch_pods=tuple(fetchers))
            elif isinstance(read, ReadFetchProgress):
                text = await self._fetch_log(namespace, await pods(f"job-name={read.job_name}"))
                observed = dataclasses.replace(observed, fetch_log=text)
            elif isinstance(read, ReadClaimHolder):
                holder = node_holding_claim(await pods(selector_string(plan.owner.name)))
                observed = dataclasses.replace(observed, claim_holder=holder)
            else:
                assert_never(read)
        return observed

    async def _fetch_log(self, namespace: str, pods: list[dict[str, Any]]) -> str:
        """The last lines of a running fetch Pod's log; best effort: "" when none runs or the API
        cannot serve the log (a container not started yet, no RBAC)."""
        pod_name = running_pod(pods)
        if not pod_name:
            return ""
        try:
            return await self.api.pod_log(namespace, pod_name, FETCH_CONTAINER, tail_lines=FETCH_LOG_LINES)
        except ApiError as error:
            log.debug("no fetch progress from %s/%s: %s", namespace, pod_name, error.message)
            return ""

    async def _execute(
        self, plan: Plan, observed: Observed, decision: Decision, result: ReconcileResult
    ) -> ObservedChildren:
        """Carry out the actions in order; the children as they leave them, for status."""
        live: dict[str, Mapping[str, Any] | None] = {
            "PersistentVolumeClaim": observed.claim,
            "Deployment": observed.deployment,
            "Service": observed.service,
        }
        for action in decision.actions:
            await self._execute_one(plan.owner, action, live, result)
        return observed_children(
            decision,
            claim=live["PersistentVolumeClaim"],
            deployment=live["Deployment"],
            service=live["Service"],
        )

    async def _execute_one(
        self,
        owner: Owner,
        action: Action,
        live: dict[str, Mapping[str, Any] | None],
        result: ReconcileResult,
    ) -> None:
        namespace = owner.namespace
        key = (namespace, owner.name)
        if isinstance(action, Apply):
            kind = str(action.manifest["kind"])
            try:
                applied = await self._apply(action.manifest, result)
            except ApiError as error:
                refused = action.if_refused
                if refused is None or error.status not in REFUSED_STATUSES:
                    raise
                await self.reporter.notify(
                    owner, refused.reason, f"{refused.message}: {error.message}", refused.type
                )
                return
            if kind in live:
                live[kind] = applied
        elif isinstance(action, Delete):
            log.info("%s/%s: deleting %s/%s: %s", namespace, owner.name, action.kind, action.name, action.why)
            await self.api.delete(action.kind, namespace, action.name)
            self.children.remember(action.kind, namespace, action.name, None)
            if action.kind in live:
                live[action.kind] = None
            result.applied.append(f"-{action.kind}/{action.name}")
        elif isinstance(action, Annotate):
            await self.api.annotate(action.kind, namespace, action.name, action.annotations)
            self.children.remember_annotations(action.kind, namespace, action.name, action.annotations)
            result.applied.append(action.summary)
        elif isinstance(action, Event):
            await self.reporter.notify(owner, action.reason, action.message, action.type)
        elif isinstance(action, Requeue):
            if result.requeue_after is None or action.seconds < result.requeue_after:
                result.requeue_after = action.seconds
        elif isinstance(action, RecordFetchAttempt):
            self._fetch_attempts[(key, action.job_name)] = action.attempt
        elif isinstance(action, ForgetFetchAttempts):
            self._fetch_attempts.pop((key, action.job_name), None)
        else:
            assert_never(action)

    async def _apply(self, manifest: Mapping[str, Any], result: ReconcileResult) -> dict[str, Any]:
        applied = await self.api.apply(manifest)
        meta = manifest["metadata"]
        self.children.remember(
            str(manifest["kind"]), str(meta.get("namespace", "")), str(meta["name"]), applied
        )
        result.applied.append(f"{manifest['kind']}/{meta['name']}")
        return applied


def _previous_status(body: Mapping[str, Any]) -> SLMDeploymentStatus:
    try:
        return SLMDeploymentStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        return SLMDeploymentStatus()


def _first_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"spec.{location}: {first.get('msg', '')}"
