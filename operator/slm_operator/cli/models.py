"""`slm models list`: the catalog, filtered like `foundry-local models list`, and what fits the cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.api.v1alpha1 import TIERS, SLMDeploymentSpec
from slm_operator.catalog import Catalog, CatalogModel
from slm_operator.cli.errors import CliError
from slm_operator.facts import Facts, NodeFacts
from slm_operator.plan import Owner, Plan
from slm_operator.resolve import resolve
from slm_operator.settings import OperatorSettings

SIZES = ("small", "medium", "large")
TYPES = ("instruct", "base", "embedding")
TASKS = ("chat", "embedding")
DEVICES = TIERS
# Parameter counts: small below 1B, medium below 4B, large from 4B.
SMALL_BELOW = 1_000_000_000
MEDIUM_BELOW = 4_000_000_000


def size_class(parameters: int) -> str:
    if parameters < SMALL_BELOW:
        return "small"
    return "medium" if parameters < MEDIUM_BELOW else "large"


def model_type(model: CatalogModel) -> str:
    # Every chat entry of the catalog is an instruction-tuned build; base models are not listed.
    return "embedding" if model.embedding else "instruct"


def task(model: CatalogModel) -> str:
    return "embedding" if model.embedding else "chat"


def devices(model: CatalogModel) -> list[str]:
    """Tiers some variant runs on: GGUF on cpu and gpu (llama.cpp), ONNX per its export."""
    found: set[str] = set()
    for variant in model.variants:
        if variant.format == "gguf":
            found |= {"cpu", "gpu"}
        elif variant.device is None:
            found |= set(TIERS)
        else:
            found.add(variant.device)
    return [t for t in TIERS if t in found]


def human_parameters(parameters: int) -> str:
    if parameters >= 1_000_000_000:
        return f"{parameters / 1e9:.1f}B"
    return f"{parameters / 1e6:.0f}M"


@dataclass(frozen=True)
class Filters:
    device: str = ""
    task: str = ""
    size: str = ""
    type: str = ""

    @classmethod
    def parse(cls, filters: Sequence[str], size: str | None, type_: str | None) -> Filters:
        values: dict[str, str] = {}
        for item in filters:
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip().lower()
            allowed = {"device": DEVICES, "task": TASKS}.get(key)
            if not sep or allowed is None:
                raise CliError(
                    f"cannot read --filter {item!r}: use device=npu|gpu|cpu or task=chat|embedding"
                )
            if value not in allowed:
                raise CliError(f"--filter {key}={value}: {key} is one of {', '.join(allowed)}")
            values[key] = value
        return cls(
            device=values.get("device", ""), task=values.get("task", ""), size=size or "", type=type_ or ""
        )

    def match(self, model: CatalogModel) -> bool:
        return (
            (not self.device or self.device in devices(model))
            and (not self.task or self.task == task(model))
            and (not self.size or self.size == size_class(model.parameters))
            and (not self.type or self.type == model_type(model))
        )


def fits(name: str, catalog: Catalog, nodes: Sequence[Mapping[str, Any]], settings: OperatorSettings) -> str:
    """Each tier that could serve `name` today, as tier/accelerator quantization; '-' when none."""
    facts = Facts(catalog=catalog, nodes=[NodeFacts.from_node(n) for n in nodes], settings=settings)
    owner = Owner(name="probe", namespace="default", uid="")
    found: list[str] = []
    for tier in TIERS:
        spec = SLMDeploymentSpec.model_validate(
            {"model": {"name": name}, "hardware": {"preferred": tier, "fallback": []}}
        )
        plan = resolve(owner, spec, facts)
        if isinstance(plan, Plan):
            placement = plan.placement
            where = tier if placement.accelerator in ("", tier) else f"{tier}/{placement.accelerator}"
            found.append(f"{where} {plan.model.quantization}")
    return ", ".join(found) or "-"
