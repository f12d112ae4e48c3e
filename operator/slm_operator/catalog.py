"""The model catalog: Ollama-style names mapped to architectures and downloadable variants.

The built-in catalog is the data file `slm_operator/data/catalog.yaml`; operators add or replace
entries through settings (`catalog`, `catalog_file`), merged over it entry by entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

BUILTIN_CATALOG_RESOURCE = "data/catalog.yaml"
DEFAULT_TAG = "latest"


class _Entry(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class CatalogVariant(_Entry):
    """One downloadable file (GGUF) or folder (ONNX) of a model."""

    format: Literal["gguf", "onnx"]
    quantization: str
    source: str
    size_bytes: int | None = Field(default=None, alias="sizeBytes", ge=0)
    sha256: str = ""
    # ONNX Runtime GenAI exports are built per device (cpu, gpu/cuda, npu); GGUF runs anywhere.
    device: Literal["cpu", "gpu", "npu"] | None = None

    @field_validator("quantization", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        # Hugging Face file names say Q4_K_M; the API and the ladders say q4_k_m.
        return value.lower() if isinstance(value, str) else value

    def runs_on(self, tier: str) -> bool:
        return self.device is None or self.device == tier


class CatalogModel(_Entry):
    """A model: the shape placement needs for its memory estimate, and its variants."""

    family: str
    parameters: int = Field(gt=0)
    context_length: int = Field(alias="contextLength", gt=0)
    layers: int = Field(gt=0)
    kv_heads: int = Field(alias="kvHeads", gt=0)
    head_dim: int = Field(alias="headDim", gt=0)
    embedding: bool = False
    description: str = ""
    variants: list[CatalogVariant] = Field(min_length=1)

    def variant(self, format: str, quantization: str, tier: str) -> CatalogVariant | None:
        """The variant with this format and quantization that runs on `tier`, if the catalog has one."""
        for candidate in self.variants:
            if (
                candidate.format == format
                and candidate.quantization == quantization
                and candidate.runs_on(tier)
            ):
                return candidate
        return None

    def formats(self) -> set[str]:
        return {variant.format for variant in self.variants}


class Catalog(_Entry):
    """Models by canonical name (`name:tag`) plus alias redirects."""

    models: dict[str, CatalogModel] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)

    def lookup(self, name: str) -> tuple[str, CatalogModel] | None:
        """Resolve `name` like Ollama: exact name, alias, then the `:latest` tag; case-insensitive."""
        wanted = name.strip().lower()
        candidates = [wanted] if ":" in wanted else [wanted, f"{wanted}:{DEFAULT_TAG}"]
        models = {key.lower(): key for key in self.models}
        aliases = {key.lower(): target for key, target in self.aliases.items()}
        for candidate in candidates:
            # Aliases may chain (qwen2.5 -> qwen2.5:latest -> qwen2.5:7b); a bound stops loops.
            for _ in range(8):
                if candidate in models:
                    key = models[candidate]
                    return key, self.models[key]
                if candidate not in aliases:
                    break
                candidate = aliases[candidate].lower()
        return None

    def names(self) -> list[str]:
        return sorted([*self.models, *self.aliases])


def parse_catalog(document: Mapping[str, Any]) -> Catalog:
    """Validate one catalog document (`models:` and `aliases:`)."""
    return Catalog.model_validate(
        {"models": document.get("models") or {}, "aliases": document.get("aliases") or {}}
    )


def merge_catalogs(base: Catalog, overrides: Iterable[Catalog]) -> Catalog:
    """Later catalogs replace whole entries of earlier ones and add new ones."""
    models = dict(base.models)
    aliases = dict(base.aliases)
    for override in overrides:
        models.update(override.models)
        aliases.update(override.aliases)
    return Catalog(models=models, aliases=aliases)


def load_builtin_catalog() -> Catalog:
    """The catalog shipped in the package (empty if the data file is absent)."""
    resource = resources.files("slm_operator").joinpath(BUILTIN_CATALOG_RESOURCE)
    if not resource.is_file():
        return Catalog()
    document = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    return parse_catalog(document)


def load_catalog(override_documents: Iterable[Mapping[str, Any]] = ()) -> Catalog:
    """The built-in catalog with the settings' additions merged over it."""
    return merge_catalogs(load_builtin_catalog(), (parse_catalog(doc) for doc in override_documents))
