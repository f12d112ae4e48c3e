"""The runtime's settings: the single list of `SLM_*` environment variables and CLI flags.

The operator renders these variables into the Deployment; a contract test checks that every
variable it emits is declared here (`ServeSettings.env_names()`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SLM_"


class _SlmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)

    @classmethod
    def env_names(cls) -> list[str]:
        """Every environment variable this settings class reads, in declaration order."""
        names: list[str] = []
        for field_name, field in cls.model_fields.items():
            extra = field.json_schema_extra
            aliases = extra.get("env_aliases", []) if isinstance(extra, dict) else []
            names.append(ENV_PREFIX + field_name.upper())
            names.extend(str(alias) for alias in aliases)  # type: ignore[union-attr]
        return names


class ServeSettings(_SlmSettings):
    """Settings of `slm_runtime serve`; each field is `SLM_<FIELD>` and `--<field-with-dashes>`."""

    model: Path = Field(description="Model path: a .gguf file, or a folder holding an ONNX model.")
    model_sha256: str = Field(
        default="",
        description="Expected sha256 of the model file (for a folder: the fetcher's manifest digest, each "
        "file checked against the fetch record); checked before loading, and a mismatch exits with code 3 "
        "and a termination message starting 'ModelCorrupted:'. Empty = not checked.",
    )
    model_name: str = Field(
        default="", description="Name the model is served under (e.g. phi4:mini); default from the path."
    )
    format: Literal["auto", "gguf", "onnx"] = Field(default="auto", description="Model format.")
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port for all APIs, probes and metrics.")
    device: Literal["cpu", "gpu", "npu"] = Field(
        default="cpu", description="Device tier chosen by placement."
    )
    execution_provider: Literal["auto", "cpu", "cuda", "rocm", "openvino", "qnn", "dml", "cann"] = Field(
        default="auto", description="ONNX Runtime execution provider; auto picks from the device."
    )
    context_length: int = Field(default=4096, ge=16, description="Context window per sequence in tokens.")
    batch_size: int = Field(default=512, ge=1, description="Prompt tokens decoded per step (n_batch).")
    parallel_requests: int = Field(default=4, ge=1, le=256, description="Sequences generated concurrently.")
    max_queue: int = Field(default=64, ge=0, description="Requests allowed to wait; beyond, 503.")
    max_connections: int = Field(
        default=0,
        ge=0,
        description="Open connections at most; beyond, 503. 0 = parallel_requests + max_queue + 64.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A connection that has not sent a whole request line and headers in this time is closed "
        "(half-open and slow clients).",
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A request body not fully received in this time is answered 408.",
    )
    threads: int = Field(default=0, ge=0, description="CPU threads; 0 = number of usable cores.")
    gpu_layers: int = Field(
        default=-1, ge=-1, description="Layers offloaded to the GPU (-1 = all on GPU builds; ignored on CPU)."
    )
    flash_attention: Literal["auto", "on", "off"] = Field(default="auto", description="Flash attention.")
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = Field(default="f16", description="KV cache data type.")
    system_prompt: str = Field(default="", description="Default system prompt (Modelfile SYSTEM).")
    chat_template: str = Field(
        default="", description="Jinja chat template overriding the one in the model's metadata."
    )
    tool_call_format: Literal["auto", "hermes", "llama3", "mistral", "phi4", "none"] = Field(
        default="auto",
        description="How the model writes tool calls, parsed out of its output into tool_calls when a request "
        "gives tools: hermes (<tool_call>, Qwen), llama3 (<|python_tag|> or a bare JSON object), mistral "
        "([TOOL_CALLS]), phi4 (<|tool_call|>); auto detects it from the chat template (hermes when it names "
        "none); none returns output as text and refuses a forced tool_choice.",
    )
    default_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object of default Ollama options (Modelfile PARAMETER), e.g. temperature, stop.",
    )
    api_key: str = Field(
        default="",
        description="Bearer token required on API routes; empty = no auth. Surrounding whitespace is "
        "stripped, so a key read from a Secret file that ends in a newline still matches.",
    )
    api_key_file: str = Field(
        default="",
        description="File holding the Bearer token (a mounted Secret key); read again when it changes, so a "
        "rotated Secret applies without a restart. Wins over api_key; a missing or empty file refuses "
        "every request.",
    )
    openai_api: bool = Field(default=True, description="Serve the OpenAI API under /v1.")
    ollama_api: bool = Field(default=True, description="Serve the Ollama API under /api.")
    embeddings: bool | None = Field(
        default=None, description="Serve embeddings; unset = on for GGUF and ONNX embedding models."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    log_prompts: bool = Field(default=False, description="Include prompt text in the access log.")
    max_request_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted.")
    drain_timeout_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    drain_delay_seconds: float = Field(
        default=5.0,
        ge=0,
        description="On SIGTERM, how long to keep accepting requests while /readyz already fails, so "
        "the Service stops sending new ones first; responses meanwhile carry Connection: close.",
    )

    termination_log: Path = Field(
        default=Path("/dev/termination-log"),
        description="Where a start-up failure (e.g. 'ModelCorrupted: ...') is written for Kubernetes (the "
        "container's termination message, which the operator reads); skipped when no such writable file exists.",
    )

    @field_validator("model_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if value and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("model_sha256 must be 64 hex characters")
        return value

    @field_validator("api_key")
    @classmethod
    def _strip_key(cls, value: str) -> str:
        return value.strip()  # `kubectl create secret --from-file` keeps the file's trailing newline

    @field_validator("default_parameters", mode="before")
    @classmethod
    def _parse_parameters(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            parsed = json.loads(value)
            if not isinstance(parsed, dict):
                raise ValueError("default_parameters must be a JSON object")
            return parsed
        return value

    @field_validator("embeddings", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _derive_defaults(self) -> ServeSettings:
        if not self.model_name:
            stem = self.model.name
            for suffix in (".gguf", ".onnx"):
                stem = stem.removesuffix(suffix)
            self.model_name = stem
        if ":" not in self.model_name:  # Ollama names always carry a tag
            self.model_name += ":latest"
        if self.format == "auto":
            self.format = "onnx" if self.model.is_dir() or self.model.suffix == ".onnx" else "gguf"
        return self

    def effective_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, len(os.sched_getaffinity(0)))


class HeaderFile(BaseModel):
    """A request header for the source whose value is a file's content (a mounted Secret key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = Field(description="Header name, e.g. Authorization.")
    file: Path = Field(description="File holding the value (one line; one trailing newline is dropped).")
    prefix: str = Field(default="", description='Sent before the value, e.g. "Bearer ".')
    secret: str = Field(default="", description="The Secret the file comes from, named in errors.")
    key: str = Field(default="", description="The Secret's key the file comes from, named in errors.")


class FetchSettings(_SlmSettings):
    """Settings of `slm_runtime fetch`."""

    source: str = Field(description="https://, http://, hf://org/repo/path[@rev], pvc://claim/path, file://")
    dest: Path = Field(description="Destination folder (the model cache).")
    sha256: str = Field(default="", description="Expected sha256 (hex); empty = the source's digest.")
    quantize: str = Field(default="", description="Requantize a GGUF after download: q8_0 or q4_k_m.")
    filename: str = Field(default="", description="File name in dest; default from the source path.")
    hf_token: str = Field(
        default="",
        description="Hugging Face token (also read from HF_TOKEN).",
        json_schema_extra={"env_aliases": ["HF_TOKEN"]},
    )
    hf_endpoint: str = Field(default="https://huggingface.co", description="Hugging Face endpoint.")
    headers_from: list[HeaderFile] = Field(
        default_factory=list,
        description='JSON list of request headers read from files, e.g. [{"header": "Authorization", "prefix": '
        '"Bearer ", "file": "/var/run/secrets/token", "secret": "registry", "key": "token"}]: sent to the '
        "source's host (for hf://, the endpoint's) only, never after a redirect to another host.",
    )
    retries: int = Field(default=5, ge=0, description="Retries after a failed or cut transfer.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Connect and read timeout.")
    backoff_seconds: float = Field(default=1.0, ge=0, description="First retry delay; doubles each retry.")
    pvc_root: Path = Field(default=Path("/mnt/pvc"), description="Where pvc:// claims are mounted.")
    termination_log: Path = Field(
        default=Path("/dev/termination-log"),
        description="Where the outcome is also written for Kubernetes (the container's termination message, "
        "which the operator reads); skipped when no such file exists.",
    )

    _hf_token_fallback: ClassVar[str] = "HF_TOKEN"

    @field_validator("headers_from", mode="before")
    @classmethod
    def _parse_headers_from(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the flag (the environment variable is decoded already)
            if not value.strip():
                return []
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(
                    f'headers_from must be a JSON list of {{"header", "file", "prefix"?}} objects ({exc})'
                ) from exc
        return value

    @model_validator(mode="after")
    def _token_fallback(self) -> FetchSettings:
        if not self.hf_token:
            self.hf_token = os.environ.get(self._hf_token_fallback, "")
        self.sha256 = self.sha256.strip().lower()
        self.quantize = self.quantize.strip().lower()
        return self
