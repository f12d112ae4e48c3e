"""Placement and quantization: `resolve(owner, spec, facts) -> Plan | ResolveFailure` (pure).

Walks the spec's tiers (preferred, then fallback) against the node inventory. A tier takes the
model when a Ready, schedulable Linux node of one of its accelerators has the device resource in
allocatable, tolerable taints, and enough memory (device memory from labels, else node memory)
for the model at a quantization that tier's runtime supports. Every tier tried leaves a line in
the human reason, whether it was taken or passed over.

One concern per module: `sources` (what a source URI says), `quantities`, `memory`,
`candidates` (the model and its (format, quantization)s), `tolerations`, `survey` (a tier's
nodes), `tiers` (trying one tier, with its reason), `assemble` (the Plan for the tier taken).
"""

from __future__ import annotations

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.facts import Facts
from slm_operator.plan import Owner, Plan, ResolveFailure
from slm_operator.resolve.assemble import assemble_plan
from slm_operator.resolve.candidates import model_info
from slm_operator.resolve.errors import ResolveError
from slm_operator.resolve.tiers import try_tier

__all__ = ["resolve"]


def resolve(owner: Owner, spec: SLMDeploymentSpec, facts: Facts) -> Plan | ResolveFailure:
    """Choose model variant, tier, accelerator, quantization and resources for `spec`."""
    try:
        info = model_info(spec, facts)
        notes: list[str] = []
        for tier in spec.tier_order():
            choice, note = try_tier(tier, info, spec, facts)
            notes.append(f"{tier}: {note}")
            if choice is not None:
                return assemble_plan(owner, spec, facts, info, tier, choice, "; ".join(notes))
        return ResolveFailure(
            "Unplaceable",
            f"no tier can run {info.display_name}: " + "; ".join(notes),
            info.display_name,
        )
    except ResolveError as error:
        return ResolveFailure(error.reason, error.message, spec.model.name or spec.model.source)
