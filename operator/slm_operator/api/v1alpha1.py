"""`SLMDeployment` (slm.dev/v1alpha1): the pydantic models that are the single source of truth.

The CRD in `crds/` is generated from these classes (`python -m slm_operator.generate`), so every
field carries a description (it becomes `kubectl explain` text) and cross-field rules are CEL
expressions attached through `json_schema_extra`. Python names are snake_case; the wire format is
camelCase through the alias generator.

Past 400 lines: the whole API of one version, spec and status, with the descriptions and CEL rules
users read; splitting one version's types across files would hide the shape a reader wants whole.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "slm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SLMDeployment"
PLURAL = "slmdeployments"
SINGULAR = "slmdeployment"
SHORT_NAMES = ("slm", "slmd")

# The longest child name is the fetch Job, `<name>-fetch-<8 hex>` (15 characters added), and Job
# names must stay label values (63 characters) because the Job controller copies them into labels.
MAX_NAME_LENGTH = 48

Tier = Literal["npu", "gpu", "cpu"]
TIERS: tuple[Tier, ...] = ("npu", "gpu", "cpu")
ModelFormat = Literal["auto", "gguf", "onnx"]
CachePhase = Literal["", "Pending", "Fetching", "Ready", "Failed"]

# Quantizations that llama.cpp files carry (Ollama tags use the same spelling).
GGUFQuantization = Literal[
    "f32",
    "bf16",
    "f16",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_1",
    "q5_0",
    "q4_k_m",
    "q4_k_s",
    "q4_1",
    "q4_0",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
]
# Precisions that ONNX Runtime GenAI model folders come in.
ONNXQuantization = Literal["fp32", "fp16", "int8", "int4"]
GGUF_QUANTIZATIONS: tuple[str, ...] = get_args(GGUFQuantization)
ONNX_QUANTIZATIONS: tuple[str, ...] = get_args(ONNXQuantization)
Quantization = Literal["auto", GGUFQuantization, ONNXQuantization]

QUANTITY_PATTERN = r"^([+]?[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?)?$"
SOURCE_PATTERN = r"^((https?|hf|pvc|s3|file)://.+)?$"
MODEL_NAME_PATTERN = r"^([a-zA-Z0-9][a-zA-Z0-9._/-]*(:[a-zA-Z0-9._-]+)?)?$"
SHA256_PATTERN = r"^([a-fA-F0-9]{64})?$"
# Child names double as Service names, which must be DNS-1035 labels.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# An HTTP field name is a token (RFC 9110 5.1); a prefix is visible ASCII and spaces, one line.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_PREFIX_PATTERN = r"^[ -~]*$"
# Headers a Secret may not set: the fetcher owns the transfer's (resumption, encoding, target) and
# the connection's framing. Lower case; the runtime's fetcher refuses the same list.
FETCHER_OWNED_HEADERS: tuple[str, ...] = (
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "range",
    "if-range",
    "accept-encoding",
)
# Sources fetched over HTTP, the only ones that take headers: pvc:// and file:// are read from a
# volume, and s3:// is not fetched by this runtime.
HTTP_SOURCE_PATTERN = r"^(https?|hf)://"


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    validation: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def _set(field: str) -> str:
    """CEL: the optional string field is present and non-empty."""
    return f"(has(self.{field}) && size(self.{field}) > 0)"


# CEL: ModelSpec's credentials are given (an empty Secret reference counts as none).
_HF_TOKEN_SET = (
    "(has(self.hfTokenSecretRef) && has(self.hfTokenSecretRef.name) && size(self.hfTokenSecretRef.name) > 0)"
)
_HEADERS_SET = "(has(self.headersFrom) && size(self.headersFrom) > 0)"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


class SecretKeySelector(_Model):
    """A key of a Secret in the SLMDeployment's namespace."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"{_set('name')} == {_set('key')}",
                    "a Secret reference needs both name and key, or neither",
                )
            ]
        }
    )

    name: str = Field(default="", max_length=253, description="Secret name.")
    key: str = Field(default="", max_length=253, description="Key in the Secret whose value is the API key.")


class SourceHeader(_Model):
    """An HTTP request header for the model source, its value read from a Secret key."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"!self.header.matches('(?i)^({'|'.join(FETCHER_OWNED_HEADERS)})$')",
                    "model.headersFrom[].header cannot be Host, Content-Length, Transfer-Encoding, Connection, "
                    "Keep-Alive, TE, Trailer, Upgrade, Proxy-Connection, Range, If-Range or Accept-Encoding: "
                    "the fetcher sets those itself",
                    ".header",
                ),
                _cel(
                    f"{_set('secretKeyRef.name')} && {_set('secretKeyRef.key')}",
                    "model.headersFrom[].secretKeyRef needs both name and key",
                    ".secretKeyRef",
                ),
            ]
        }
    )

    header: str = Field(
        min_length=1,
        max_length=64,
        pattern=HEADER_NAME_PATTERN,
        description="Header name, e.g. Authorization, X-Api-Key or Cookie: letters, digits and "
        "!#$%&'*+.^_`|~- only.",
    )
    prefix: str = Field(
        default="",
        max_length=64,
        pattern=HEADER_PREFIX_PATTERN,
        description='Text sent before the Secret value, e.g. "Bearer " (with its space): the header is '
        "prefix + value. Printable ASCII, one line.",
    )
    secret_key_ref: SecretKeySelector = Field(
        description="The Secret key whose value the header carries (one line; a trailing newline is "
        "dropped). Mounted as a file into the fetch Job only, never into its spec or environment."
    )


class ModelSpec(_Model):
    """Which model to serve: a catalog name or a direct source, its format and quantization."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"{_set('name')} != {_set('source')}",
                    "exactly one of model.name (a catalog name such as phi4:mini) and model.source "
                    "(a URI such as hf://org/repo/file.gguf) must be set",
                ),
                _cel(
                    "!has(self.format) || self.format != 'gguf' || !has(self.quantization) || "
                    f"!(self.quantization in {_cel_list(ONNX_QUANTIZATIONS)})",
                    "format gguf takes a GGUF quantization (auto, f16, q8_0, q4_k_m, ...), "
                    "not the ONNX precisions fp32, fp16, int8, int4",
                    ".quantization",
                ),
                _cel(
                    "!has(self.format) || self.format != 'onnx' || !has(self.quantization) || "
                    f"self.quantization in {_cel_list(('auto', *ONNX_QUANTIZATIONS))}",
                    "format onnx takes an ONNX precision: auto, fp32, fp16, int8 or int4",
                    ".quantization",
                ),
                _cel(
                    "!has(self.source) || !self.source.endsWith('.gguf') || "
                    "(!(has(self.format) && self.format == 'onnx') && (!has(self.quantization) || "
                    f"!(self.quantization in {_cel_list(ONNX_QUANTIZATIONS)})))",
                    "a .gguf source is a GGUF file: format must be auto or gguf and the quantization "
                    "a GGUF one",
                ),
                _cel(
                    f"!({_HEADERS_SET} && {_set('source')} && !self.source.matches('{HTTP_SOURCE_PATTERN}'))",
                    "model.headersFrom is for http://, https:// and hf:// sources and catalog names: pvc:// "
                    "and file:// sources are read from a volume and take no credentials (nor s3://, which "
                    "is not fetched over HTTP)",
                    ".headersFrom",
                ),
                _cel(
                    f"!({_HF_TOKEN_SET} && {_set('source')} && !self.source.startsWith('hf://'))",
                    "model.hfTokenSecretRef is sent to the Hugging Face endpoint, so it needs an hf:// source "
                    "or a catalog name; for an http(s):// source send the token with model.headersFrom",
                    ".hfTokenSecretRef",
                ),
                _cel(
                    f"!({_HF_TOKEN_SET} && {_HEADERS_SET} && "
                    "self.headersFrom.exists(h, h.header.matches('(?i)^authorization$')))",
                    "model.hfTokenSecretRef already sends the Authorization header: remove it or the "
                    "Authorization entry of model.headersFrom",
                    ".headersFrom",
                ),
            ]
        }
    )

    name: str = Field(
        default="",
        max_length=253,
        pattern=MODEL_NAME_PATTERN,
        description="Catalog name, Ollama style name:tag (e.g. phi4:mini, qwen2.5:0.5b); a name without a "
        "tag means :latest. Exactly one of name and source is set.",
    )
    source: str = Field(
        default="",
        max_length=2048,
        pattern=SOURCE_PATTERN,
        description="Direct model location: https://, http://, hf://org/repo/path[@revision], "
        "pvc://claim/path, s3://bucket/key or file:// (development only). A GGUF file, or a folder "
        "holding an ONNX Runtime GenAI model. Exactly one of name and source is set.",
    )
    format: ModelFormat = Field(
        default="auto",
        description="Model format. auto picks what the chosen hardware tier runs best (catalog models) "
        "or reads it from the source (.gguf is GGUF, otherwise ONNX).",
    )
    sha256: str = Field(
        default="",
        pattern=SHA256_PATTERN,
        description="Expected sha256 of the model file (hex). Verified by the fetch Job when set; the "
        "digest actually fetched is always recorded in status.model.sha256.",
    )
    hf_token_secret_ref: SecretKeySelector | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token, for gated or private hf:// sources (and "
        "catalog models). Sent as Authorization: Bearer <token> to the Hugging Face endpoint only, never "
        "to the CDN it redirects downloads to. Only the fetch Job sees it, as a mounted file.",
    )
    headers_from: Annotated[
        list[SourceHeader],
        Field(
            max_length=8,
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["header"]},
        ),
    ] = Field(
        default_factory=list,
        description="HTTP headers whose values come from Secret keys, e.g. [{header: Authorization, prefix: "
        '"Bearer ", secretKeyRef: {name: registry, key: token}}], for http(s):// sources (and hf:// ones '
        "behind a private endpoint). Sent on every request to the source's own host, never after a redirect "
        "to another host (a CDN, a presigned URL). Only the fetch Job sees the values, as mounted files; "
        "changing them is not a new model version.",
    )
    quantization: Quantization = Field(
        default="auto",
        description="Weight quantization. auto picks, per hardware tier, the best quality that fits: "
        "gpu f16, q8_0, q4_k_m; cpu q4_k_m (q8_0 for tiny models); npu int8, int4. GGUF takes f16, "
        "q8_0, q4_k_m and the other llama.cpp types; ONNX takes fp32, fp16, int8, int4. An explicit "
        "value is honoured or the resource reports why it cannot fit.",
    )


class Toleration(_Model):
    """A Pod toleration, as in core/v1 Toleration."""

    key: str = Field(default="", description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Exists matches any value; Equal matches value."
    )
    value: str = Field(default="", description="Taint value the toleration matches (operator Equal).")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        default="", description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the Pod stays bound after the taint appears.",
    )


class HardwareSpec(_Model):
    """Hardware preference: tiers tried in order, devices per replica and scheduling additions."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.fallback) || !has(self.preferred) || !(self.preferred in self.fallback)",
                    "hardware.fallback must not contain the preferred tier",
                    ".fallback",
                ),
            ]
        }
    )

    preferred: Tier = Field(
        default="gpu",
        description="Hardware tier tried first: npu, gpu or cpu.",
    )
    fallback: (
        Annotated[list[Tier], Field(max_length=2, json_schema_extra={"x-kubernetes-list-type": "set"})] | None
    ) = Field(
        default=None,
        description="Tiers tried in order when the preferred tier cannot take the model. When omitted: "
        "the tiers after the preferred one in the order npu, gpu, cpu. Set [] to never fall back.",
    )
    accelerator: str = Field(
        default="",
        max_length=63,
        description="Restrict the gpu and npu tiers to one accelerator of the operator's settings (e.g. "
        "nvidia, amd, intel-gpu, intel-npu, ascend-910, qualcomm-ai100); empty allows all.",
    )
    count: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Accelerator devices per replica (ignored on the cpu tier). The model is split "
        "across them.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the Pods must match, merged with the labels placement selects.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Extra Pod tolerations, merged with the ones placement adds for accelerator taints.",
    )


class ResourceRequirements(_Model):
    """Compute resources per replica, as in core/v1 ResourceRequirements."""

    requests: dict[str, int | str] = Field(
        default_factory=dict,
        description="Minimum resources (e.g. cpu: 2, memory: 8Gi). Unset keys come from the model's "
        "memory estimate.",
    )
    limits: dict[str, int | str] = Field(
        default_factory=dict,
        description="Maximum resources. Unset keys come from the model's memory estimate.",
    )


class OptimizationSpec(_Model):
    """Inference engine knobs (Foundry Local optimization/performance blocks, Ollama environment)."""

    max_context: int = Field(
        default=4096, ge=128, le=1048576, description="Context window per sequence, in tokens."
    )
    batch_size: int = Field(default=512, ge=1, le=65536, description="Prompt tokens processed per step.")
    parallel_requests: int = Field(
        default=4, ge=1, le=256, description="Sequences generated concurrently per replica."
    )
    max_queue: int = Field(
        default=64, ge=0, le=100000, description="Requests allowed to wait; beyond it the server answers 503."
    )
    threads: int = Field(default=0, ge=0, le=1024, description="CPU threads; 0 = the cores the Pod may use.")
    gpu_layers: int = Field(
        default=-1,
        ge=-1,
        le=100000,
        description="Layers offloaded to the GPU on the gpu tier; -1 = all. Ignored on other tiers.",
    )
    flash_attention: Literal["auto", "on", "off"] = Field(default="auto", description="Flash attention.")
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = Field(
        default="f16", description="KV cache data type; q8_0 and q4_0 halve or quarter its memory."
    )


class PromptSpec(_Model):
    """Modelfile equivalents: SYSTEM, TEMPLATE and PARAMETER."""

    system: str = Field(default="", max_length=65536, description="Default system prompt.")
    template: str = Field(
        default="",
        max_length=65536,
        description="Jinja chat template overriding the one in the model's metadata.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Default Ollama options: temperature, top_p, top_k, stop, num_predict, seed, "
        "repeat_penalty, ...",
    )


class ApiSpec(_Model):
    """The HTTP API the Service exposes."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.openai) || !has(self.ollama) || self.openai || self.ollama",
                    "at least one of api.openai and api.ollama must be enabled",
                )
            ]
        }
    )

    port: int = Field(default=8080, ge=1, le=65535, description="Service port for every API.")
    openai: bool = Field(default=True, description="Serve the OpenAI API under /v1.")
    ollama: bool = Field(default=True, description="Serve the Ollama API under /api.")
    embeddings: bool | None = Field(
        default=None,
        description="Serve embedding endpoints. Unset: on for embedding models of the catalog, and left "
        "to the runtime for direct sources.",
    )
    api_key_secret_ref: SecretKeySelector | None = Field(
        default=None,
        description="Secret key holding an API key; when set, every API request needs "
        "Authorization: Bearer <key>. Mounted as a file: a rotated key applies without a restart.",
    )


class CacheSpec(_Model):
    """The PersistentVolumeClaim the model is fetched into once and mounted read-only."""

    size: str = Field(
        default="",
        pattern=QUANTITY_PATTERN,
        description="Claim size (e.g. 20Gi); empty = the model's size with headroom.",
    )
    storage_class_name: str = Field(
        default="",
        description="StorageClass of the claim; empty = the operator's default, else the cluster's.",
    )
    access_mode: Literal["", "ReadWriteOnce", "ReadWriteMany"] = Field(
        default="",
        description="Claim access mode; empty = ReadWriteOnce for one replica, ReadWriteMany above. "
        "An existing claim keeps its mode.",
    )
    retain: bool = Field(
        default=True,
        description="Keep the claim (and the downloaded model) when the SLMDeployment is deleted.",
    )


class SLMDeploymentSpec(_Model):
    """Desired state: the model, where it may run, how it is served and cached."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.replicas) || self.replicas <= 1 || !has(self.cache) || "
                    "!has(self.cache.accessMode) || self.cache.accessMode != 'ReadWriteOnce'",
                    "replicas above 1 need cache.accessMode ReadWriteMany (or empty): Pods on several nodes "
                    "cannot share a ReadWriteOnce claim",
                    ".replicas",
                ),
            ]
        }
    )

    model: ModelSpec = Field(description="The model to serve.")
    hardware: HardwareSpec = Field(
        default_factory=HardwareSpec,
        json_schema_extra={"default": {}},
        description="Hardware preference and scheduling.",
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Number of serving Pods; 0 stops serving.")
    image: str = Field(
        default="",
        max_length=1024,
        description="Runtime image override; empty = the operator's image for the chosen accelerator.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements,
        description="Per-replica resources; memory and device counts default from the placement.",
    )
    optimization: OptimizationSpec = Field(
        default_factory=OptimizationSpec,
        json_schema_extra={"default": {}},
        description="Inference engine settings.",
    )
    prompt: PromptSpec = Field(
        default_factory=PromptSpec,
        description="System prompt, chat template and default parameters.",
    )
    api: ApiSpec = Field(
        default_factory=ApiSpec, json_schema_extra={"default": {}}, description="Served APIs."
    )
    cache: CacheSpec = Field(
        default_factory=CacheSpec, json_schema_extra={"default": {}}, description="Model cache claim."
    )

    def effective_fallback(self) -> tuple[Tier, ...]:
        """The fallback tiers: as given, else the tiers after the preferred one in npu, gpu, cpu order."""
        if self.hardware.fallback is not None:
            return tuple(self.hardware.fallback)
        return TIERS[TIERS.index(self.hardware.preferred) + 1 :]

    def tier_order(self) -> tuple[Tier, ...]:
        return (self.hardware.preferred, *self.effective_fallback())


# ---------------------------------------------------------------------------------------------
# Status


class Condition(_Model):
    """A status condition (metav1.Condition)."""

    type: str = Field(description="Ready, Reconciling, Stalled, ModelCached or Placed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    observed_generation: int = Field(
        default=0, description="metadata.generation the condition was computed from."
    )
    last_transition_time: str = Field(
        default="",
        json_schema_extra={"format": "date-time"},
        description="When status last changed.",
    )


class PlacementStatus(_Model):
    """What placement decided, and why."""

    tier: str = Field(default="", description="Chosen tier: npu, gpu or cpu.")
    accelerator: str = Field(default="", description="Chosen accelerator of the tier (e.g. nvidia, cpu).")
    resource_name: str = Field(default="", description="Device resource requested (e.g. nvidia.com/gpu).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector applied.")
    quantization: str = Field(default="", description="Quantization served.")
    format: str = Field(default="", description="Model format served: gguf or onnx.")
    backend: str = Field(default="", description="Inference backend: llama-cpp or onnxruntime-genai.")
    execution_provider: str = Field(default="", description="ONNX Runtime execution provider (ONNX only).")
    memory_estimate_bytes: int = Field(
        default=0,
        json_schema_extra={"format": "int64"},
        description="Estimated memory per replica: weights + KV cache + overhead.",
    )
    reason: str = Field(default="", description="Every tier tried and why it was taken or passed over.")


class ModelStatus(_Model):
    """The model actually resolved and fetched."""

    name: str = Field(default="", description="Model name served (catalog name or derived from the source).")
    source: str = Field(default="", description="Resolved source URI.")
    format: str = Field(default="", description="gguf or onnx.")
    quantization: str = Field(default="", description="Quantization of the cached model.")
    sha256: str = Field(default="", description="sha256 of the fetched model file.")
    size_bytes: int = Field(default=0, json_schema_extra={"format": "int64"}, description="Size in bytes.")


class CacheStatus(_Model):
    """The model cache claim and fetch progress."""

    claim_name: str = Field(default="", description="PersistentVolumeClaim name.")
    phase: CachePhase = Field(default="", description="Pending, Fetching, Ready or Failed.")
    bytes_downloaded: int = Field(
        default=0, json_schema_extra={"format": "int64"}, description="Bytes fetched so far."
    )
    total_bytes: int = Field(default=0, json_schema_extra={"format": "int64"}, description="Bytes to fetch.")
    bytes_per_second: int = Field(
        default=0,
        json_schema_extra={"format": "int64"},
        description="Download rate over the last few seconds while fetching (0 otherwise).",
    )
    message: str = Field(default="", description="Detail, e.g. why the fetch failed.")


class BenchmarkLevel(_Model):
    """What `slm bench` measured at one concurrency level."""

    concurrency: int = Field(ge=1, description="Requests in flight at once (streams started together).")
    requests: int = Field(default=0, ge=0, description="Requests measured at this level (warmup excluded).")
    errors: int = Field(default=0, ge=0, description="Requests among them that failed.")
    ttft_ms: float = Field(
        default=0,
        ge=0,
        description="Median time to the first answer token in milliseconds, clocked by the client from "
        "sending the request (queueing, prompt processing and the network path included).",
    )
    ttft_p95_ms: float = Field(
        default=0, ge=0, description="95th percentile of the time to the first token, in milliseconds."
    )
    prefill_tokens_per_second: float = Field(
        default=0,
        ge=0,
        description="Prompt processing rate as the server reports it: prompt_eval_count over "
        "prompt_eval_duration, summed over the requests.",
    )
    decode_tokens_per_second: float = Field(
        default=0,
        ge=0,
        description="Generation rate of one stream as the server reports it: eval_count over "
        "eval_duration, summed over the requests.",
    )
    aggregate_tokens_per_second: float = Field(
        default=0,
        ge=0,
        description="Generation rate of all streams together: every generated token over the wall "
        "time of the epochs at this level.",
    )
    generated_tokens: int = Field(
        default=0,
        ge=0,
        json_schema_extra={"format": "int64"},
        description="Tokens generated by the requests at this level (the server's eval_count, summed); "
        "below requests x maxTokens when the model ended answers early.",
    )


class BenchmarkResult(_Model):
    """One `slm bench --record` result, for one device and quantization."""

    tier: str = Field(max_length=16, description="Hardware tier measured (status.placement.tier then).")
    accelerator: str = Field(
        max_length=63, description="Accelerator measured (status.placement.accelerator then)."
    )
    quantization: str = Field(
        max_length=32, description="Quantization measured (status.placement.quantization then)."
    )
    recorded_at: str = Field(
        default="", json_schema_extra={"format": "date-time"}, description="When it was recorded."
    )
    model: str = Field(default="", max_length=253, description="Model name served (status.model.name).")
    model_sha256: str = Field(
        default="", pattern=SHA256_PATTERN, description="Digest of the model measured (status.model.sha256)."
    )
    prompt_tokens: int = Field(
        default=0,
        ge=0,
        description="Prompt tokens per request as the server counted them (median); the synthetic "
        "prompt aims at the --prompt-tokens asked.",
    )
    max_tokens: int = Field(
        default=0, ge=0, description="Tokens each answer could generate at most (num_predict)."
    )
    load_seconds: float = Field(
        default=0,
        ge=0,
        description="Seconds the runtime took to load the model (its /readyz load_seconds); 0 = unknown.",
    )
    levels: Annotated[
        list[BenchmarkLevel],
        Field(
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["concurrency"],
            },
        ),
    ] = Field(default_factory=list, description="One entry per concurrency level, in the order measured.")


class SLMDeploymentStatus(_Model):
    """Observed state, following the Kubernetes API conventions and kstatus."""

    observed_generation: int = Field(
        default=0, description="metadata.generation the status was computed from."
    )
    conditions: Annotated[
        list[Condition],
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            }
        ),
    ] = Field(default_factory=list, description="Ready, Reconciling, Stalled, ModelCached, Placed.")
    placement: PlacementStatus | None = Field(default=None, description="Placement decision.")
    model: ModelStatus | None = Field(default=None, description="Resolved model.")
    cache: CacheStatus | None = Field(default=None, description="Model cache.")
    replicas: int = Field(default=0, description="Serving Pods (scale subresource).")
    ready_replicas: int = Field(default=0, description="Serving Pods that are ready.")
    selector: str = Field(default="", description="Label selector of the serving Pods (scale subresource).")
    endpoint: str = Field(default="", description="In-cluster URL of the APIs.")
    benchmark: (
        Annotated[
            list[BenchmarkResult],
            Field(
                max_length=32,
                json_schema_extra={
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["tier", "accelerator", "quantization"],
                },
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="Benchmarks recorded by `slm bench --record` with the user's credentials (RBAC patch on "
        "slmdeployments/status), one per device (tier and accelerator) and quantization; recording "
        "again for the same ones replaces the entry. The operator keeps this field as it finds it.",
    )


class ObjectMeta(_Model):
    """The parts of metadata the operator reads."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SLMDeployment(_Model):
    """An SLMDeployment as read from the API server (spec parsed, status as last written)."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: SLMDeploymentSpec
    status: SLMDeploymentStatus = Field(default_factory=SLMDeploymentStatus)
