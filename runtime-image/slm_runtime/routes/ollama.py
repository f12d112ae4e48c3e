"""The Ollama API: field names, NDJSON streaming and nanosecond statistics as Ollama has them.

Past 400 lines because each of generate, chat, embed and the model routes still walks the request
path itself (render, tokenize, start, stream); one shared `complete()` path for both APIs is the
redesign's step (issue 10), after which this module keeps only Ollama's shapes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from slm_runtime.backends.base import (
    BackendError,
    ContextLengthExceededError,
    GenerationStats,
    SamplingOptions,
)
from slm_runtime.errors import ApiError
from slm_runtime.options import merge_ollama_options, ollama_format, sampling_from_ollama
from slm_runtime.runtime import (
    ClosingStreamingResponse,
    Runtime,
    chat_messages,
    collect,
    generate,
    now_rfc3339,
    runtime_of,
)
from slm_runtime.scheduler import Ticket
from slm_runtime.tool_calls import ToolCall, ToolCallStream, parse_tool_calls, template_messages
from slm_runtime.tool_use import ToolPlan, plan_tools

OLLAMA_COMPAT_VERSION = "0.12.0"
# An expiry far away, as Ollama reports models kept loaded forever (keep_alive < 0).
_NEVER = "2318-11-30T00:00:00Z"
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)?$")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateRequest(_Request):
    model: str = ""
    prompt: str = ""
    suffix: str | None = None
    images: list[str] | None = None
    think: bool | str | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    system: str | None = None
    template: str | None = None
    stream: bool = True
    raw: bool = False
    keep_alive: str | float | None = None
    context: list[int] | None = None


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class ChatRequest(_Request):
    model: str = ""
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    # Not Ollama's: OpenAI's tool_choice, so an Ollama-API client can force a call too.
    tool_choice: str | dict[str, Any] | None = None
    think: bool | str | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: str | float | None = None


class EmbedRequest(_Request):
    model: str = ""
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    dimensions: int | None = Field(default=None, ge=1)


class EmbeddingsRequest(_Request):
    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None


class ShowRequest(_Request):
    model: str = ""
    name: str = ""  # older clients send name
    verbose: bool = False


def parse_keep_alive(value: str | float | None) -> float | None:
    """Seconds (negative = forever), validating like Ollama: a Go duration or a number of seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value.strip())
    if not match:
        raise ApiError(400, f"invalid keep_alive duration {value!r}", param="keep_alive")
    number, unit = float(match.group(1)), match.group(2) or "s"
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return number * scale


def _stats_fields(stats: GenerationStats) -> dict[str, Any]:
    return {
        "done_reason": stats.done_reason,
        "total_duration": stats.total_ns,
        "load_duration": stats.queued_ns,
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": stats.prompt_eval_ns,
        "eval_count": stats.completion_tokens,
        "eval_duration": stats.eval_ns,
    }


def _model_digest(runtime: Runtime) -> str:
    """The fetch Job's recorded sha256 when there is one; otherwise a digest of the file's identity."""
    settings = runtime.settings
    record = settings.model.parent / ".slm-fetch.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text())
            if isinstance(data, dict) and data.get("sha256"):
                return str(data["sha256"])
        except (OSError, ValueError):
            pass
    stat = settings.model.stat()
    return hashlib.sha256(f"{settings.model}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


def _details(runtime: Runtime) -> dict[str, Any]:
    d = runtime.require_backend().details
    return {
        "parent_model": "",
        "format": d.format,
        "family": d.family,
        "families": [d.family],
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


def _modified_at(runtime: Runtime) -> str:
    mtime = runtime.settings.model.stat().st_mtime
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


async def _chunks(
    stream: AsyncGenerator[str | GenerationStats, None],
    partial: Callable[[str], dict[str, Any]],
    final: Callable[[GenerationStats, str], dict[str, Any]],
) -> AsyncGenerator[dict[str, Any], None]:
    """NDJSON objects of a generation: one per piece of text, then the final statistics."""
    async with aclosing(stream):
        async for item in stream:
            yield final(item, "") if isinstance(item, GenerationStats) else partial(item)


def _ndjson(items: AsyncGenerator[dict[str, Any], None], ticket: Ticket) -> ClosingStreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        try:
            async with aclosing(items):
                async for item in items:
                    yield json.dumps(item, ensure_ascii=False).encode() + b"\n"
        except ApiError as exc:  # the status is already sent: Ollama ends the stream with an error line
            yield json.dumps({"error": exc.message}).encode() + b"\n"

    return ClosingStreamingResponse(lines(), media_type="application/x-ndjson", ticket=ticket)


def _check_unsupported(runtime: Runtime, images: list[str] | None, think: bool | str | None) -> None:
    if images:
        raise ApiError(400, f"model '{runtime.model_name}' does not support images")
    if think not in (None, False):
        raise ApiError(400, f'"{runtime.model_name}" does not support thinking')


def _sampling(
    runtime: Runtime, options: dict[str, Any] | None, response_format: str | dict[str, Any] | None
) -> SamplingOptions:
    json_mode, schema = ollama_format(response_format)
    return sampling_from_ollama(
        merge_ollama_options(runtime.settings.default_parameters, options),
        context_length=runtime.require_backend().details.context_length,
        json_mode=json_mode,
        json_schema=schema,
    )


def _checked_context(vocab_size: int, context: list[int] | None) -> list[int]:
    """`context` comes back from the client; an id outside the vocabulary would fail the decode."""
    tokens = list(context or [])
    if vocab_size:
        for token in tokens:
            if not 0 <= token < vocab_size:
                raise ApiError(
                    400,
                    f"context holds token id {token}, outside the model's vocabulary (0 to {vocab_size - 1})",
                    param="context",
                )
    return tokens


def _tokenize(runtime: Runtime, text: str) -> list[int]:
    try:
        return runtime.require_backend().tokenize(text, add_special=True)
    except BackendError as exc:
        raise ApiError(400, str(exc)) from exc


def _ollama_calls(calls: list[ToolCall] | None) -> dict[str, Any]:
    """Ollama's tool_calls (arguments an object, not OpenAI's string), or nothing when there are none."""
    if not calls:
        return {}
    return {"tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]}


async def _chat_chunks(
    stream: AsyncGenerator[str | GenerationStats, None],
    plan: ToolPlan,
    reply: Callable[[str, list[ToolCall] | None], dict[str, Any]],
) -> AsyncGenerator[dict[str, Any], None]:
    """Chat chunks: text as it comes (held back where it may open a tool call), the calls in a chunk
    of their own, then the final statistics (as Ollama sends them)."""
    calls_stream = ToolCallStream(plan.dialect) if plan.dialect is not None else None
    async with aclosing(stream):
        async for item in stream:
            if not isinstance(item, GenerationStats):
                text = calls_stream.feed(item) if calls_stream is not None else item
                if text:
                    yield reply(text, None)
                continue
            if calls_stream is not None:
                rest, calls = calls_stream.finish()
                if rest or calls:
                    yield reply(rest, calls)
            yield {**reply("", None), "done": True, **_stats_fields(item)}


def build_router() -> APIRouter:
    router = APIRouter()

    @router.api_route("/api/version", methods=["GET", "HEAD"])
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_COMPAT_VERSION}

    @router.api_route("/api/tags", methods=["GET", "HEAD"])
    async def tags(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        if runtime.backend is None:
            return {"models": []}
        return {
            "models": [
                {
                    "name": runtime.model_name,
                    "model": runtime.model_name,
                    "modified_at": _modified_at(runtime),
                    "size": runtime.backend.details.size_bytes,
                    "digest": _model_digest(runtime),
                    "details": _details(runtime),
                }
            ]
        }

    @router.get("/api/ps")
    async def ps(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        if runtime.backend is None:
            return {"models": []}
        details = runtime.backend.details
        return {
            "models": [
                {
                    "name": runtime.model_name,
                    "model": runtime.model_name,
                    "size": details.size_bytes,
                    "digest": _model_digest(runtime),
                    "details": _details(runtime),
                    "expires_at": _NEVER,
                    "size_vram": details.size_bytes if details.device != "cpu" else 0,
                    "context_length": details.context_length,
                }
            ]
        }

    @router.post("/api/show")
    async def show(request: Request, body: ShowRequest) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model or body.name)
        details = runtime.require_backend().details
        settings = runtime.settings
        parameters = "\n".join(
            f"{name} {json.dumps(v) if isinstance(v, str) else v}"
            for name, value in settings.default_parameters.items()
            for v in (value if isinstance(value, list) else [value])
        )
        modelfile = [f"# Modelfile served by slm-runtime for {runtime.model_name}", f"FROM {settings.model}"]
        if details.chat_template:
            modelfile.append(f'TEMPLATE """{details.chat_template}"""')
        if settings.system_prompt:
            modelfile.append(f'SYSTEM """{settings.system_prompt}"""')
        modelfile.extend(f"PARAMETER {line}" for line in parameters.splitlines())
        return {
            "modelfile": "\n".join(modelfile) + "\n",
            "parameters": parameters,
            "template": details.chat_template,
            "system": settings.system_prompt,
            "details": _details(runtime),
            "model_info": details.model_info,
            "capabilities": list(details.capabilities),
            "modified_at": _modified_at(runtime),
        }

    @router.post("/api/generate", response_model=None)
    async def generate_route(request: Request, body: GenerateRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        keep_alive = parse_keep_alive(body.keep_alive)
        backend = runtime.require_backend()
        if not body.prompt and not body.context:
            # Ollama: an empty prompt loads (or with keep_alive 0 unloads) the model.
            reason = "unload" if keep_alive == 0 else "load"
            return {
                "model": runtime.model_name,
                "created_at": now_rfc3339(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        _check_unsupported(runtime, body.images, body.think)
        options = _sampling(runtime, body.options, body.format)
        if body.raw:
            text = body.prompt
        else:
            messages = chat_messages(runtime, [{"role": "user", "content": body.prompt}], body.system)
            try:
                text = backend.render_chat(messages, None)
            except BackendError as exc:
                raise ApiError(400, str(exc)) from exc
        context = _checked_context(backend.details.vocab_size, body.context)
        prompt_tokens = context + _tokenize(runtime, text)
        ticket = await runtime.start(prompt_tokens, options)
        stream = generate(runtime, request, ticket, prompt_tokens, options)
        model = runtime.model_name

        def final(stats: GenerationStats, response: str) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": now_rfc3339(),
                "response": response,
                "done": True,
                **_stats_fields(stats),
                "context": prompt_tokens + stats.output_tokens,
            }

        if not body.stream:
            text_out, stats = await collect(stream)
            return final(stats, text_out)

        def partial(text: str) -> dict[str, Any]:
            return {"model": model, "created_at": now_rfc3339(), "response": text, "done": False}

        return _ndjson(_chunks(stream, partial, final), ticket)

    @router.post("/api/chat", response_model=None)
    async def chat(request: Request, body: ChatRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        keep_alive = parse_keep_alive(body.keep_alive)
        backend = runtime.require_backend()
        model = runtime.model_name
        if not body.messages:
            reason = "unload" if keep_alive == 0 else "load"
            return {
                "model": model,
                "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            }
        for message in body.messages:
            _check_unsupported(runtime, message.images, None)
        _check_unsupported(runtime, None, body.think)
        plan = plan_tools(
            body.tools,
            body.tool_choice,
            None,
            setting=runtime.settings.tool_call_format,
            details=backend.details,
            options=_sampling(runtime, body.options, body.format),
        )
        messages = chat_messages(
            runtime, template_messages([m.model_dump(exclude_none=True) for m in body.messages])
        )
        try:
            text = backend.render_chat(messages, plan.tools)
        except BackendError as exc:
            raise ApiError(400, str(exc)) from exc
        prompt_tokens = _tokenize(runtime, text)
        ticket = await runtime.start(prompt_tokens, plan.options)
        stream = generate(runtime, request, ticket, prompt_tokens, plan.options)

        def reply(content: str, calls: list[ToolCall] | None = None) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": content, **_ollama_calls(calls)},
                "done": False,
            }

        if not body.stream:
            text_out, stats = await collect(stream)
            parsed = parse_tool_calls(text_out, plan.dialect)
            return {**reply(parsed.content, parsed.calls), "done": True, **_stats_fields(stats)}

        return _ndjson(_chat_chunks(stream, plan, reply), ticket)

    _model_management(router)

    @router.post("/api/embed")
    async def embed(request: Request, body: EmbedRequest) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        parse_keep_alive(body.keep_alive)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        started = asyncio.get_running_loop().time()
        if not inputs:
            return {"model": runtime.model_name, "embeddings": [], "total_duration": 0, "load_duration": 0}
        vectors, tokens = await embed_texts(runtime, inputs, truncate=body.truncate)
        if body.dimensions:
            vectors = [_truncate_dimensions(v, body.dimensions) for v in vectors]
        elapsed = int((asyncio.get_running_loop().time() - started) * 1e9)
        return {
            "model": runtime.model_name,
            "embeddings": vectors,
            "total_duration": elapsed,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }

    @router.post("/api/embeddings")
    async def embeddings(request: Request, body: EmbeddingsRequest) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        parse_keep_alive(body.keep_alive)
        if not body.prompt:
            return {"embedding": []}
        vectors, _ = await embed_texts(runtime, [body.prompt], truncate=True)
        return {"embedding": vectors[0]}

    return router


# Models come from the SLMDeployment; a client pulling or deleting one here would diverge from it.
MANAGED_BY_CLUSTER = (
    "models are managed by the cluster: change the SLMDeployment's spec.model (kubectl edit slm NAME) instead"
)
_MANAGEMENT_ROUTES = {
    "/api/pull": "POST",
    "/api/push": "POST",
    "/api/create": "POST",
    "/api/copy": "POST",
    "/api/delete": "DELETE",
    "/api/blobs/{digest}": "POST",
}


def _model_management(router: APIRouter) -> None:
    """Ollama's model-management routes answer 501 Not Implemented with the way to do it instead.

    501, not 405: the method is right and there is no other method to list in Allow; this server
    does not do model management at all. Not 403: no credential would make it work.
    """

    async def refuse() -> None:
        raise ApiError(501, MANAGED_BY_CLUSTER)

    for path, method in _MANAGEMENT_ROUTES.items():
        router.add_api_route(path, refuse, methods=[method, "HEAD"] if "blobs" in path else [method])


def _truncate_dimensions(vector: list[float], dimensions: int) -> list[float]:
    cut = vector[:dimensions]
    norm = sum(x * x for x in cut) ** 0.5
    return [x / norm for x in cut] if norm > 0 else cut


async def embed_texts(runtime: Runtime, texts: list[str], *, truncate: bool) -> tuple[list[list[float]], int]:
    backend = runtime.require_backend()
    if "embedding" not in backend.details.capabilities:
        raise ApiError(400, f"model '{runtime.model_name}' does not support embeddings")
    try:
        async with runtime.slot():
            vectors, tokens = await asyncio.to_thread(backend.embed, texts, truncate=truncate)
    except ContextLengthExceededError as exc:
        raise ApiError(400, str(exc), param="input", code="context_length_exceeded") from exc
    except BackendError as exc:
        raise ApiError(400, str(exc), param="input") from exc
    runtime.metrics.embedding_inputs.labels(runtime.model_name).inc(len(texts))
    runtime.metrics.prompt_tokens.labels(runtime.model_name).inc(tokens)
    return vectors, tokens


def root_route(router: APIRouter) -> None:
    @router.api_route("/", methods=["GET", "HEAD"])
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")
