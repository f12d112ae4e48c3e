"""Operator settings: hardware tiers, runtime images, catalog additions and defaults.

Everything placement knows about hardware is data here (device resources, labels, taints, images
per accelerator), so a cluster with other devices is supported by configuration, not code. Values
come, highest priority first, from init arguments, `SLM_OPERATOR_*` environment variables (complex
values as JSON), and the YAML file named by `SLM_OPERATOR_CONFIG_FILE` (the Helm chart mounts its
ConfigMap there), then the defaults below and the built-in tiers of `data/default_tiers.yaml`.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from slm_operator.api.v1alpha1 import TIERS, Tier

ENV_PREFIX = "SLM_OPERATOR_"
CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG_FILE"
GiB = 1 << 30
MiB = 1 << 20

ModelFileFormat = Literal["gguf", "onnx"]
MemoryUnit = Literal["bytes", "MiB", "GiB"]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
ImageReference = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^\s]+$")]


class _Data(BaseModel):
    # Settings files are written by people in camelCase (Helm values) or snake_case; accept both.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        # The file may say storageClassName and the environment storage_class_name: sources are
        # merged lowest priority first, so the later spelling wins.
        if not isinstance(data, dict):
            return data
        names = {
            **{f.alias: name for name, f in cls.model_fields.items() if f.alias},
            **{n: n for n in cls.model_fields},
        }
        return {names.get(key, key): value for key, value in data.items()}


class TolerationSettings(_Data):
    """A toleration placement adds for an accelerator's nodes."""

    key: str = ""
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class AcceleratorSettings(_Data):
    """One kind of device a tier can use, and how nodes advertise it."""

    name: NonEmptyStr = Field(description="Short name, shown in status.placement.accelerator (e.g. nvidia).")
    resource_name: str = Field(
        default="", description="Extended resource requested per device (e.g. nvidia.com/gpu); empty on cpu."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Labels a node must carry (also added to the Pods' nodeSelector). The device resource "
        "alone already selects nodes, so the defaults need none except where a device plugin's docs ask "
        "for one (Ascend); presence labels such as nvidia.com/gpu.present come only with GPU feature "
        "discovery, which not every cluster runs.",
    )
    memory_label: str = Field(
        default="", description="Node label with the memory of one device; empty = use node memory."
    )
    memory_label_unit: MemoryUnit = Field(
        default="MiB",
        description="Unit of a plain number in memory_label; suffixed values (64G) say their own.",
    )
    product_label: str = Field(default="", description="Node label naming the device model, for messages.")
    tolerations: list[TolerationSettings] = Field(default_factory=list)
    formats: list[ModelFileFormat] = Field(
        min_length=1, description="Model formats the runtime runs on this device."
    )
    runtime: NonEmptyStr = Field(description="Key into images: the image variant for this device.")
    execution_provider: str = Field(
        default="cpu", description="ONNX Runtime execution provider for ONNX models on this device."
    )
    runtime_class_name: str = Field(default="", description="Pod runtimeClassName, e.g. nvidia.")


class TinyModelRule(_Data):
    """Prefer a higher-precision quantization for tiny models when memory is plentiful (cpu tier)."""

    max_parameters: int = Field(ge=0, description="Models with at most this many parameters count as tiny.")
    memory_factor: float = Field(
        default=4.0,
        gt=0,
        description="Node memory must exceed the estimate at that precision this many times.",
    )
    quantizations: dict[ModelFileFormat, list[str]] = Field(description="Tried before the tier's list.")


class TierSettings(_Data):
    """A hardware tier: its accelerators (tried in order) and its automatic quantization ladder."""

    accelerators: list[AcceleratorSettings] = Field(
        min_length=1, description="Devices of this tier, tried in order."
    )
    auto_quantization: dict[ModelFileFormat, list[str]] = Field(
        description="quantization: auto tries these, best quality first, per format."
    )
    tiny_model: TinyModelRule | None = None


DEFAULT_TIERS_RESOURCE = "data/default_tiers.yaml"
_TIER_MAP = TypeAdapter(dict[Tier, TierSettings])


def default_tiers_yaml() -> str:
    """The text of the built-in tiers' data file (the chart's values.yaml shows it)."""
    return resources.files("slm_operator").joinpath(DEFAULT_TIERS_RESOURCE).read_text(encoding="utf-8")


def parse_tiers(text: str, where: str) -> dict[Tier, TierSettings]:
    """A complete tier map (every tier defined) from YAML; errors name `where`."""
    try:
        tiers = _TIER_MAP.validate_python(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as error:
        raise ValueError(
            f"{where}: not a valid map of tier name ({', '.join(TIERS)}) to tier: {error}"
        ) from error
    missing = [tier for tier in TIERS if tier not in tiers]
    if missing:
        raise ValueError(f"{where}: every tier needs a definition; add {', '.join(missing)}")
    return tiers


@functools.cache
def _builtin_tiers() -> dict[Tier, TierSettings]:
    return parse_tiers(default_tiers_yaml(), f"slm_operator/{DEFAULT_TIERS_RESOURCE}")


def default_tiers() -> dict[Tier, TierSettings]:
    """The built-in hardware knowledge (device plugins' resource names, labels and taints): a data file."""
    return dict(_builtin_tiers())  # a copy: callers may add to it; the tiers themselves are frozen


RUNTIME_IMAGE_REPOSITORY = "ghcr.io/slm-operator/slm-runtime"
RUNTIME_IMAGE_TAG = "0.1.0"


def default_runtime_images() -> dict[str, str]:
    """Image per runtime variant; the Helm chart's `settings.images` uses the same keys."""
    variants = ("cpu", "cuda", "rocm", "intel", "openvino", "cann", "qnn")
    return {variant: f"{RUNTIME_IMAGE_REPOSITORY}:{RUNTIME_IMAGE_TAG}-{variant}" for variant in variants}


class SecretReference(_Data):
    """A Secret by name, as core/v1 LocalObjectReference spells it in Helm values."""

    name: NonEmptyStr


class DefaultsSettings(_Data):
    """Defaults for the children the operator creates (the chart's `settings.defaults`)."""

    storage_class_name: str = Field(
        default="", description="StorageClass of cache claims that name none; empty = the cluster default."
    )
    cache_headroom: float = Field(
        default=0.2,
        ge=0.0,
        le=10.0,
        description="Extra room on top of the model size for cache claims (fraction).",
    )
    image_pull_secrets: list[NonEmptyStr] = Field(
        default_factory=list, description="Image pull Secret names added to runtime and fetch Pods."
    )

    @field_validator(
        "image_pull_secrets", mode="before", json_schema_input_type=list[SecretReference | NonEmptyStr]
    )
    @classmethod
    def _secret_names(cls, value: Any) -> Any:
        # Helm values usually spell these as core/v1 LocalObjectReference ({name: ...}).
        if isinstance(value, list):
            return [item.get("name", "") if isinstance(item, dict) else item for item in value]
        return value


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML (or JSON) file named by SLM_OPERATOR_CONFIG_FILE, if any."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get(CONFIG_FILE_ENV, "")
        self._data: dict[str, Any] = {}
        if path:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: operator settings must be a mapping, got {type(loaded).__name__}")
            self._data = loaded

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for key in (field_name, field.alias, to_camel(field_name)):
            if key and key in self._data:
                return self._data[key], field_name, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[key] = value
        return values


class OperatorSettings(BaseSettings):
    """Everything the operator is configured with."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    config_file: str = Field(default="", description="YAML file with these settings (the chart's ConfigMap).")
    tiers: dict[Tier, TierSettings] = Field(
        default_factory=default_tiers,
        description="Hardware tiers (npu, gpu, cpu). A tier given replaces the built-in one whole (see "
        "slm_operator/data/default_tiers.yaml); tiers left out keep theirs.",
    )
    images: dict[str, ImageReference] = Field(
        default_factory=default_runtime_images,
        description="Runtime image per variant (cpu, cuda, rocm, intel, openvino, cann, qnn); merged over the "
        "defaults.",
    )
    fetch_image: str = Field(default="", description="Image of the fetch Job; empty = images['cpu'].")
    allowed_images: list[NonEmptyStr] = Field(
        default_factory=list,
        description="Images an SLMDeployment's spec.image may name (shell-style patterns, e.g. "
        "'registry.example.com/ml/*'); empty = any image. Whoever may create SLMDeployments chooses the "
        "image their pods run: set this where that is not everyone's call.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="imagePullPolicy of runtime and fetch Pods."
    )
    defaults: DefaultsSettings = Field(
        default_factory=DefaultsSettings, description="Defaults for the children the operator creates."
    )
    catalog: dict[str, Any] | str = Field(
        default="",
        description="Catalog additions (same schema as the built-in one), as a mapping or YAML/JSON text, merged "
        "over it.",
    )
    catalog_file: str = Field(default="", description="Path of a catalog file merged over the built-in one.")
    container_port: int = Field(default=8080, ge=1024, le=65535, description="Port the runtime listens on.")
    memory_overhead_bytes: int = Field(
        default=512 * MiB, ge=0, description="Fixed memory per replica on top of weights and KV cache."
    )
    memory_limit_factor: float = Field(
        default=1.25, ge=1.0, description="Memory limit = request x this factor (estimates are estimates)."
    )
    default_cpu_request: NonEmptyStr = Field(default="1", description="CPU request when threads is 0.")
    unknown_model_bytes: int = Field(
        default=4 * GiB, ge=0, description="Assumed weights size of a direct source not fetched yet."
    )
    unknown_kv_bytes_per_token: int = Field(
        default=128 * 1024, ge=0, description="Assumed KV cache bytes per token for models of unknown shape."
    )
    cache_min_bytes: int = Field(default=1 * GiB, ge=0, description="Smallest cache claim.")
    fetch_backoff_limit: int = Field(default=4, ge=0, description="Fetch Job backoffLimit.")
    fetch_active_deadline_seconds: int = Field(default=4 * 3600, ge=60, description="Fetch Job deadline.")
    fetch_retry_base_seconds: float = Field(
        default=30.0,
        gt=0,
        description="After a fetch Job fails for good, the operator retries it after this many seconds, "
        "doubling per failed attempt.",
    )
    fetch_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Longest wait between fetch retries."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level of the runtime Pods (SLM_LOG_LEVEL)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @field_validator("tiers", mode="after")
    @classmethod
    def _every_tier_present(cls, tiers: dict[Tier, TierSettings]) -> dict[Tier, TierSettings]:
        # A tier left out of a settings file keeps its built-in definition.
        return {**default_tiers(), **tiers}

    @field_validator("images", mode="after")
    @classmethod
    def _images_over_defaults(cls, images: dict[str, str]) -> dict[str, str]:
        return {**default_runtime_images(), **images}

    def effective_fetch_image(self) -> str:
        return self.fetch_image or self.images.get("cpu", "")

    def image_allowed(self, image: str) -> bool:
        """Whether spec.image may name ``image``: the configured images always, others per allowedImages."""
        if not self.allowed_images or image in self.images.values() or image == self.fetch_image:
            return True
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.allowed_images)

    def catalog_overrides(self) -> list[dict[str, Any]]:
        """Catalog documents to merge over the built-in catalog: the file, then the inline text."""
        documents: list[dict[str, Any]] = []
        if self.catalog_file:
            documents.append(
                _parse_mapping(Path(self.catalog_file).read_text(encoding="utf-8"), self.catalog_file)
            )
        if isinstance(self.catalog, dict):
            if self.catalog:
                documents.append(self.catalog)
        elif self.catalog.strip():
            documents.append(_parse_mapping(self.catalog, f"{ENV_PREFIX}CATALOG"))
        return documents


def _parse_mapping(text: str, where: str) -> dict[str, Any]:
    # YAML is a superset of JSON, so one parser takes both.
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML or JSON: {error}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{where}: a catalog must be a mapping with 'models' and 'aliases'")
    plain: dict[str, Any] = json.loads(json.dumps(loaded, default=str))  # JSON types only (no YAML dates)
    return plain
