"""Kopf registrations only: parse what Kopf hands over and ask the reconciler to act.

Everything is driven by watch events, so the operator is level-triggered: an
SLMDeployment event (create, update, the initial listing after a restart, our own
status writes), an event on a child it labelled, or a change of the node inventory
all enqueue the same reconcile. No handler writes Kopf progress annotations: the
objects carry nothing but what the user and the status say.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from slm_operator.api.v1alpha1 import GROUP, PLURAL, VERSION
from slm_operator.catalog import load_catalog
from slm_operator.controller.reconcile import Reconciler
from slm_operator.facts import NodeFacts
from slm_operator.k8s.client import Kubernetes
from slm_operator.metrics import OperatorMetrics
from slm_operator.naming import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from slm_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

CHILD_SELECTOR: dict[str, Any] = {MANAGED_BY_LABEL: MANAGED_BY, INSTANCE_LABEL: kopf.PRESENT}
RESYNC_SECONDS = 600.0


class OperatorState:
    """What the handlers share; built at start-up (no module-level I/O)."""

    reconciler: Reconciler | None = None
    kube: Kubernetes | None = None
    metrics: OperatorMetrics = OperatorMetrics()
    resync_task: asyncio.Task[None] | None = None


state = OperatorState()


def reconciler() -> Reconciler:
    if state.reconciler is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return state.reconciler


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's own bookkeeping, should it ever need any, goes under our prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.slm.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.slm.dev")
    settings.persistence.finalizer = "slm.dev/kopf-finalizer"
    settings.posting.level = logging.WARNING  # our reconciler posts the Events users need
    settings.watching.server_timeout = 300  # re-establish watches every 5 minutes at most
    settings.networking.request_timeout = 60
    select_children_server_side(settings)
    operator_settings = OperatorSettings()
    catalog = load_catalog(operator_settings.catalog_overrides())
    state.kube = await Kubernetes.connect(state.metrics)
    state.reconciler = Reconciler(state.kube, operator_settings, catalog, state.metrics)
    state.resync_task = asyncio.get_running_loop().create_task(_resync_forever())
    log.info(
        "slm-operator started: %d catalog models, tiers %s",
        len(catalog.names()),
        list(operator_settings.tiers),
    )


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if state.resync_task is not None:
        state.resync_task.cancel()
    if state.reconciler is not None:
        await state.reconciler.idle()
    if state.kube is not None:
        await state.kube.close()


async def _resync_forever() -> None:
    """A periodic pass over every object: catches anything a missed event left behind."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        reconciler().resync()


@kopf.index("nodes")
def node_inventory(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeFacts]:
    """The node inventory comes from this watch, never from a list per reconcile."""
    return {name: NodeFacts.from_node(body)}


def _inventory(index: kopf.Index[str, NodeFacts]) -> list[NodeFacts]:
    return [facts for store in index.values() for facts in store]


@kopf.on.event("nodes")  # type: ignore[arg-type]
async def node_changed(node_inventory: kopf.Index[str, NodeFacts], **_: Any) -> None:
    current = reconciler()
    if current.set_nodes(_inventory(node_inventory)):
        # Something placement reads changed (a node came, went, or changed devices or
        # labels): every deployment is re-resolved (Stalled ones may now be placed).
        state.metrics.nodes.set(len(current.nodes))
        current.enqueue_all()


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
async def slmdeployment_event(
    type: str | None,
    namespace: str,
    name: str,
    meta: kopf.Meta,
    node_inventory: kopf.Index[str, NodeFacts],
    **_: Any,
) -> None:
    current = reconciler()
    current.set_nodes(_inventory(node_inventory))
    key = (namespace, name)
    if type == "DELETED":
        current.forget(key)
    elif not (type == "MODIFIED" and current.is_own_write(key, str(meta.get("resourceVersion", "")))):
        current.enqueue(key)
    state.metrics.managed.set(len(current.known))


def _child_handler(kind: str) -> Any:
    async def child_event(
        type: str | None, namespace: str, name: str, body: kopf.Body, labels: kopf.Labels, **_: Any
    ) -> None:
        """A child changed (status, a hand edit, a deletion): remember it, reconcile its owner."""
        current = reconciler()
        current.remember_child(kind, namespace, name, None if type == "DELETED" else dict(body))
        owner = labels.get(INSTANCE_LABEL)
        if owner:
            current.enqueue((namespace, owner))

    return child_event


CHILD_RESOURCES = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("batch", "v1", "jobs", "Job"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
)


def select_children_server_side(settings: kopf.OperatorSettings) -> None:
    """The apiserver sends only our children's events (labelSelector on the watch), so the operator
    neither receives nor caches every Deployment, Service, Job and claim of the cluster; the
    handlers' own label filter stays as a second check."""
    for group, version, plural, _ in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = f"{MANAGED_BY_LABEL}={MANAGED_BY}"


for _group, _version, _plural, _kind in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=CHILD_SELECTOR, id=f"child-{_plural}")(
        _child_handler(_kind)
    )
