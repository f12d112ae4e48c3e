"""The Ollama API's generating and embedding routes: field names, NDJSON streaming and nanosecond
statistics as Ollama has them. Requests become a CompletionRequest; `complete()` (completion.py)
does the generating, this module only Ollama's shapes. The model routes are in ollama_models.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from slm_runtime.backends.base import GenerationStats, PositionLogprobs, SamplingOptions, TokenEvent
from slm_runtime.completion import CompletionRequest, Finished, ToolRequest, complete
from slm_runtime.embedding import embed_texts
from slm_runtime.errors import ApiError
from slm_runtime.options import merge_ollama_options, ollama_format, sampling_from_ollama
from slm_runtime.routes.logprobs import checked_request, ollama_logprobs, with_logprobs
from slm_runtime.routes.ollama_models import add_model_routes
from slm_runtime.runtime import ClosingStreamingResponse, Runtime, now_rfc3339, runtime_of
from slm_runtime.scheduler import Ticket
from slm_runtime.tool_calls import ToolCall

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
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    # Not Ollama's: clients that speak both APIs (LiteLLM) send OpenAI's id of the call a tool
    # result answers; kept so the result is named after its call like on the OpenAI route.
    tool_call_id: str | None = None
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
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None


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
    runtime: Runtime,
    options: dict[str, Any] | None,
    response_format: str | dict[str, Any] | None,
    logprobs: tuple[bool, int],
) -> SamplingOptions:
    json_mode, schema = ollama_format(response_format)
    sampling = sampling_from_ollama(
        merge_ollama_options(runtime.settings.default_parameters, options),
        context_length=runtime.details.context_length,
        json_mode=json_mode,
        json_schema=schema,
    )
    return with_logprobs(sampling, *logprobs)


def _checked_logprobs(logprobs: bool | None, top_logprobs: int | None) -> tuple[bool, int]:
    # Ollama itself ignores top_logprobs when logprobs is off; here that is a 400, not a silent drop.
    return checked_request(logprobs, top_logprobs, enabled_by="logprobs: true")


def _ollama_calls(calls: list[ToolCall] | None) -> dict[str, Any]:
    """Ollama's tool_calls (arguments an object, not OpenAI's string), or nothing when there are none."""
    if not calls:
        return {}
    return {"tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]}


ChatReply = Callable[[str, list[ToolCall] | None, list[PositionLogprobs]], dict[str, Any]]


async def _chat_chunks(
    events: AsyncGenerator[TokenEvent | Finished, None], reply: ChatReply
) -> AsyncGenerator[dict[str, Any], None]:
    """Chat chunks: text as it comes, the calls in a chunk of their own, then the final statistics
    (as Ollama sends them). Log probabilities ride on the chunk that carries their tokens' text, or
    the next one for text that became a tool call."""
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TokenEvent):
                yield reply(event.text, None, list(event.logprobs))
                continue
            pending = list(event.logprobs)
            if event.text or event.calls:
                yield reply(event.text, event.calls, pending)
                pending = []
            yield {**reply("", None, pending), "done": True, **_stats_fields(event.stats)}


def build_router() -> APIRouter:
    router = APIRouter()
    add_model_routes(router)

    @router.post("/api/generate", response_model=None)
    async def generate_route(request: Request, body: GenerateRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        logprob_request = _checked_logprobs(body.logprobs, body.top_logprobs)
        keep_alive = parse_keep_alive(body.keep_alive)
        runtime.require_backend()
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
        options = _sampling(runtime, body.options, body.format, logprob_request)
        context = body.context or ()
        if body.raw:
            completion = CompletionRequest(options, prompt=body.prompt, context=context)
        else:
            user = [{"role": "user", "content": body.prompt}]
            completion = CompletionRequest(options, messages=user, system=body.system, context=context)
        stream = await complete(runtime, completion, request)
        model = runtime.model_name

        def final(
            stats: GenerationStats, response: str, logprobs: list[PositionLogprobs] | None = None
        ) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": now_rfc3339(),
                "response": response,
                "done": True,
                **_stats_fields(stats),
                "context": stream.prompt_tokens + stats.output_tokens,
                **ollama_logprobs(logprobs or []),
            }

        if not body.stream:
            answer = await stream.collect()
            return final(answer.stats, answer.text, answer.logprobs)

        def partial(event: TokenEvent) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": now_rfc3339(),
                "response": event.text,
                "done": False,
                **ollama_logprobs(event.logprobs),
            }

        async def chunks() -> AsyncGenerator[dict[str, Any], None]:
            async with aclosing(stream.events()) as events:
                async for event in events:
                    if isinstance(event, Finished):
                        yield final(event.stats, "", list(event.logprobs))
                    else:
                        yield partial(event)

        return _ndjson(chunks(), stream.ticket)

    @router.post("/api/chat", response_model=None)
    async def chat(request: Request, body: ChatRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        logprob_request = _checked_logprobs(body.logprobs, body.top_logprobs)
        keep_alive = parse_keep_alive(body.keep_alive)
        runtime.require_backend()
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
        completion = CompletionRequest(
            _sampling(runtime, body.options, body.format, logprob_request),
            messages=[m.model_dump(exclude_none=True) for m in body.messages],
            tools=ToolRequest(body.tools, body.tool_choice),
        )
        stream = await complete(runtime, completion, request)

        def reply(
            content: str, calls: list[ToolCall] | None = None, logprobs: list[PositionLogprobs] | None = None
        ) -> dict[str, Any]:
            return {
                "model": model,
                "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": content, **_ollama_calls(calls)},
                "done": False,
                **ollama_logprobs(logprobs or []),
            }

        if not body.stream:
            answer = await stream.collect()
            done = {"done": True, **_stats_fields(answer.stats)}
            return {**reply(answer.content, answer.calls, answer.logprobs), **done}

        return _ndjson(_chat_chunks(stream.events(), reply), stream.ticket)

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


def _truncate_dimensions(vector: list[float], dimensions: int) -> list[float]:
    cut = vector[:dimensions]
    norm = sum(x * x for x in cut) ** 0.5
    return [x / norm for x in cut] if norm > 0 else cut
