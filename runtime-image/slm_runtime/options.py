"""Request options → SamplingOptions, with the configured defaults (Modelfile PARAMETER) underneath."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from slm_runtime.backends.base import SamplingOptions
from slm_runtime.errors import ApiError

log = logging.getLogger(__name__)

# Ollama option name → (SamplingOptions field, type). Load-time options (num_ctx, num_gpu, …) are
# fixed per replica by the operator and are accepted but not applied per request.
_SAMPLING: dict[str, tuple[str, type]] = {
    "num_predict": ("max_tokens", int),
    "temperature": ("temperature", float),
    "top_k": ("top_k", int),
    "top_p": ("top_p", float),
    "min_p": ("min_p", float),
    "typical_p": ("typical_p", float),
    "repeat_penalty": ("repeat_penalty", float),
    "repeat_last_n": ("repeat_last_n", int),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
}
LOAD_TIME_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "num_keep", "draft_num_predict"}
)


# Caps on what a request may ask for, so one request cannot make the server allocate or scan
# without bound. OpenAI allows 4 stop strings; Ollama sets no limit; 16 covers real chat templates.
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters per stop string
MAX_SCHEMA_BYTES = 64 * 1024  # a JSON schema, serialized; its grammar is compiled per request
_INT32_MAX = 2**31 - 1  # llama.cpp takes these options as int32


def _convert(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"option {name} must be a number, got {type(value).__name__}", param=name)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ApiError(400, f"option {name} must be an integer", param=name)
        return int(value)
    if not math.isfinite(value):  # Python's JSON parser accepts NaN and Infinity
        raise ApiError(400, f"option {name} must be a finite number", param=name)
    return float(value)


def _bound(fields: dict[str, Any], context_length: int) -> None:
    """Clamps or refuses integer options whose size llama.cpp would allocate or loop over."""
    if "repeat_last_n" in fields:
        last_n = fields["repeat_last_n"]
        if last_n < -1:
            raise ApiError(
                400, "option repeat_last_n must be -1 (the whole context) or more", param="repeat_last_n"
            )
        # The penalty window is a ring buffer of that many tokens; beyond the context it sees nothing more.
        fields["repeat_last_n"] = context_length if last_n == -1 else min(last_n, context_length)
    if "max_tokens" in fields:
        # Negative (Ollama's -1 and -2) means until the context is full; nothing goes beyond it.
        predict = fields["max_tokens"]
        fields["max_tokens"] = -1 if predict < 0 else min(predict, context_length)
    if "top_k" in fields:
        fields["top_k"] = min(max(fields["top_k"], 0), _INT32_MAX)  # <= 0: off, as llama.cpp has it
    seed = fields.get("seed")
    if seed is not None:
        fields["seed"] = None if seed < 0 else seed & 0xFFFFFFFF  # llama.cpp seeds are 32-bit


def _stops(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"{name} must be a string or a list of strings", param=name)
    # Every stop string is searched for after every token, so their number and length are capped.
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, f"{name} takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", param=name)
    if any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise ApiError(400, f"{name} strings are at most {MAX_STOP_LENGTH} characters each", param=name)
    return tuple(stops)


def check_schema_size(schema: dict[str, Any], name: str) -> None:
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > MAX_SCHEMA_BYTES:
        raise ApiError(
            400,
            f"{name}: the JSON schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted",
            param=name,
        )


def merge_ollama_options(defaults: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    merged = dict(defaults)
    merged.update(options or {})
    return merged


def sampling_from_ollama(
    options: dict[str, Any],
    *,
    context_length: int,
    json_mode: bool = False,
    json_schema: dict[str, Any] | None = None,
) -> SamplingOptions:
    fields: dict[str, Any] = {}
    for name, value in options.items():
        if name in _SAMPLING:
            field, kind = _SAMPLING[name]
            if value is not None:
                fields[field] = _convert(name, value, kind)
        elif name == "stop":
            fields["stop"] = _stops(value, "stop")
        elif name not in LOAD_TIME_OPTIONS:
            log.debug("ignoring unknown option %s", name)
    _bound(fields, context_length)
    return SamplingOptions(json_mode=json_mode, json_schema=json_schema, **fields)


def sampling_from_openai(
    defaults: dict[str, Any], body: dict[str, Any], *, context_length: int
) -> SamplingOptions:
    """OpenAI fields mapped onto Ollama option names, over the configured defaults."""
    options = dict(defaults)
    renames = {
        "temperature": "temperature",
        "top_p": "top_p",
        "seed": "seed",
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
    }
    for openai_name, ollama_name in renames.items():
        if body.get(openai_name) is not None:
            options[ollama_name] = body[openai_name]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, "max_tokens must be a positive integer", param="max_tokens")
        options["num_predict"] = max_tokens
    if body.get("stop") is not None:
        options["stop"] = list(_stops(body["stop"], "stop"))
    json_mode, schema = False, None
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise ApiError(400, "response_format must be an object", param="response_format")
        kind = response_format.get("type")
        if kind == "json_object":
            json_mode = True
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ApiError(
                    400, "response_format.json_schema.schema must be an object", param="response_format"
                )
            schema = spec["schema"]
            check_schema_size(schema, "response_format")
        elif kind != "text":
            raise ApiError(400, f"unsupported response_format type {kind!r}", param="response_format")
    return sampling_from_ollama(
        options, context_length=context_length, json_mode=json_mode, json_schema=schema
    )


def ollama_format(value: Any) -> tuple[bool, dict[str, Any] | None]:
    """Ollama's `format`: "json", a JSON schema object, or empty."""
    if value in (None, ""):
        return False, None
    if value == "json":
        return True, None
    if isinstance(value, dict):
        check_schema_size(value, "format")
        return False, value
    raise ApiError(400, 'format must be "json" or a JSON schema object', param="format")
