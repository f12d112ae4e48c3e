"""The nodes of one tier: which can take a model, how much memory each offers, and why the others cannot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.facts import LINUX, OS_LABEL, NodeFacts
from slm_operator.resolve.quantities import parse_device_memory, parse_quantity
from slm_operator.resolve.tolerations import placement_tolerations, untolerated_taints
from slm_operator.settings import AcceleratorSettings


@dataclass(frozen=True)
class EligibleNode:
    """A node that can take the model if its memory suffices, with the accelerator it offers."""

    node: NodeFacts
    accelerator: AcceleratorSettings
    device_memory_bytes: int | None  # per device, from the memory label
    node_memory_bytes: int


@dataclass
class NodeSurvey:
    """Nodes of one tier: the eligible ones, and why the others are not."""

    eligible: list[EligibleNode] = field(default_factory=list)
    advertising: int = 0  # nodes with the device resource (or Linux nodes on cpu)
    problems: list[str] = field(default_factory=list)


def _is_linux(node: NodeFacts) -> bool:
    # kubelets always set kubernetes.io/os; a node without it (hand-made) is taken as Linux.
    return node.labels.get(OS_LABEL, LINUX) == LINUX


def survey_nodes(
    accelerators: Sequence[AcceleratorSettings],
    spec: SLMDeploymentSpec,
    nodes: Sequence[NodeFacts],
) -> NodeSurvey:
    """Sort the Linux nodes of `accelerators` into eligible ones and problems, one line per kind."""
    survey = NodeSurvey()
    count = spec.hardware.count
    not_ready: list[str] = []
    tainted: list[str] = []
    too_few: list[str] = []
    selector_mismatch: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if not _is_linux(node):
            continue
        for accelerator in accelerators:
            resource = accelerator.resource_name
            if resource:
                have = parse_quantity(node.allocatable.get(resource, "0"))
                if have <= 0:
                    continue
            if any(node.labels.get(k) != v for k, v in accelerator.node_selector.items()):
                if resource:
                    selector_mismatch.append(node.name)
                continue
            survey.advertising += 1
            if not node.ready or node.unschedulable:
                not_ready.append(node.name)
                break
            if resource and have < count:
                too_few.append(f"{node.name} has {int(have)} {resource}")
                break
            if any(node.labels.get(k) != v for k, v in spec.hardware.node_selector.items()):
                selector_mismatch.append(node.name)
                break
            blocking = untolerated_taints(node, placement_tolerations(accelerator, spec))
            if blocking:
                tainted.append(f"{node.name} ({', '.join(str(t) for t in blocking)})")
                break
            device_memory = None
            if accelerator.memory_label and accelerator.memory_label in node.labels:
                device_memory = parse_device_memory(
                    node.labels[accelerator.memory_label], accelerator.memory_label_unit
                )
            survey.eligible.append(
                EligibleNode(
                    node=node,
                    accelerator=accelerator,
                    device_memory_bytes=device_memory,
                    node_memory_bytes=int(parse_quantity(node.allocatable.get("memory", "0"))),
                )
            )
            break
    # Report and choose in the settings' accelerator order, nodes by name within one.
    survey.eligible.sort(key=lambda e: (list(accelerators).index(e.accelerator), e.node.name))
    if not_ready:
        survey.problems.append(f"not Ready or cordoned: {', '.join(not_ready)}")
    if too_few:
        survey.problems.append(f"{count} device(s) per replica requested but {'; '.join(too_few)}")
    if selector_mismatch:
        survey.problems.append(f"node selector not matched by {', '.join(sorted(set(selector_mismatch)))}")
    if tainted:
        survey.problems.append(f"untolerated taints on {'; '.join(tainted)}")
    return survey


def usable_memory(eligible: EligibleNode, count: int) -> tuple[int, bool]:
    """Memory the model may use on this node, and whether it is device memory."""
    if eligible.accelerator.resource_name and eligible.device_memory_bytes is not None:
        return eligible.device_memory_bytes * count, True
    return eligible.node_memory_bytes, False
