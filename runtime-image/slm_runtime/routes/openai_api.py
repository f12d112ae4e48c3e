"""The OpenAI API: chat and text completions (SSE streaming ending in `data: [DONE]`), embeddings, models."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from slm_runtime.backends.base import BackendError, GenerationStats
from slm_runtime.errors import ApiError, error_body
from slm_runtime.options import sampling_from_openai
from slm_runtime.routes.ollama import embed_texts
from slm_runtime.runtime import (
    ClosingStreamingResponse,
    Runtime,
    chat_messages,
    collect,
    generate,
    runtime_of,
)
from slm_runtime.scheduler import Ticket
from slm_runtime.tool_calls import ToolCall, ToolCallStream, parse_tool_calls, template_messages
from slm_runtime.tool_use import ToolPlan, call_id, limit_calls, plan_tools


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Request):
    model: str
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    echo: bool = False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


async def start_chat(
    runtime: Runtime, request: Request, messages: list[dict[str, Any]], plan: ToolPlan, *, param: str
) -> tuple[Ticket, AsyncGenerator[str | GenerationStats, None]]:
    """Render the conversation (tools included), take a slot and start generating: the path that
    chat completions and the Responses API share. A template that refuses the input is a 400 on ``param``."""
    backend = runtime.require_backend()
    try:
        text = backend.render_chat(chat_messages(runtime, template_messages(messages)), plan.tools)
        prompt_tokens = backend.tokenize(text, add_special=True)
    except BackendError as exc:
        raise ApiError(400, str(exc), param=param) from exc
    ticket = await runtime.start(prompt_tokens, plan.options)
    return ticket, generate(runtime, request, ticket, prompt_tokens, plan.options)


def _usage(stats: GenerationStats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }


def _text_content(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ApiError(400, f"content part type {part.get('type')!r} is not supported", param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _refuse_unsupported(raw: dict[str, Any], *, chat: bool) -> None:
    """Fields that would change the answer but are not implemented are refused by name, not dropped.

    Their neutral values (n 1, logprobs false, null) pass, as clients send them.
    """
    refusals: list[tuple[str, bool, str]] = [
        ("n", raw.get("n") not in (None, 1), "only one choice per request is supported"),
        ("logit_bias", bool(raw.get("logit_bias")), "token biases are not supported"),
    ]
    if chat:
        refusals += [
            ("logprobs", raw.get("logprobs") not in (None, False), "log probabilities are not supported"),
            ("top_logprobs", raw.get("top_logprobs") not in (None, 0), "log probabilities are not supported"),
        ]
    else:
        refusals += [
            ("logprobs", raw.get("logprobs") is not None, "log probabilities are not supported"),
            ("best_of", raw.get("best_of") not in (None, 1), "only one candidate per request is supported"),
            ("suffix", bool(raw.get("suffix")), "completing between a prompt and a suffix is not supported"),
        ]
    for name, refused, reason in refusals:
        if refused:
            raise ApiError(400, f"{name}: {reason}", param=name)


def _sse(events: AsyncGenerator[dict[str, Any], None], ticket: Ticket) -> ClosingStreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        try:
            async with aclosing(events):
                async for event in events:
                    yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
        except ApiError as exc:  # headers are gone; send the error as an event, then end the stream
            yield b"data: " + json.dumps(error_body("openai", exc.status, exc.message)).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return ClosingStreamingResponse(lines(), media_type="text/event-stream", ticket=ticket)


def _openai_call(call: ToolCall, id_: str, index: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {} if index is None else {"index": index}
    entry.update(
        {
            "id": id_,
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
        }
    )
    return entry


async def _chat_events(
    stream: AsyncGenerator[str | GenerationStats, None],
    plan: ToolPlan,
    chunk: Callable[[dict[str, Any], str | None], dict[str, Any]],
    include_usage: bool,
) -> AsyncGenerator[dict[str, Any], None]:
    """Chat chunks: text as it comes (held back where it may open a tool call), then the calls, one
    chunk each with the whole arguments, then the finish reason and the usage."""
    calls_stream = ToolCallStream(plan.dialect) if plan.dialect is not None else None
    yield chunk({"role": "assistant", "content": ""}, None)
    async with aclosing(stream):
        async for item in stream:
            if not isinstance(item, GenerationStats):
                text = calls_stream.feed(item) if calls_stream is not None else item
                if text:
                    yield chunk({"content": text}, None)
                continue
            calls: list[ToolCall] = []
            if calls_stream is not None:
                rest, calls = calls_stream.finish()
                calls = limit_calls(calls, plan)
                if rest:
                    yield chunk({"content": rest}, None)
            for index, call in enumerate(calls):
                yield chunk({"tool_calls": [_openai_call(call, call_id(), index)]}, None)
            yield chunk({}, "tool_calls" if calls else item.done_reason)
            if include_usage:
                usage_event = chunk({}, None)
                usage_event["choices"] = []
                usage_event["usage"] = _usage(item)
                yield usage_event


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def models(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        created = int(runtime.loaded_at.timestamp()) if runtime.loaded_at else 0
        data = [{"id": runtime.model_name, "object": "model", "created": created, "owned_by": "slm-runtime"}]
        return {"object": "list", "data": data if runtime.backend is not None else []}

    @router.get("/models/{model_id:path}")
    async def model(request: Request, model_id: str) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(model_id)
        created = int(runtime.loaded_at.timestamp()) if runtime.loaded_at else 0
        return {"id": runtime.model_name, "object": "model", "created": created, "owned_by": "slm-runtime"}

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        backend = runtime.require_backend()
        raw = body.model_dump()
        _refuse_unsupported(raw, chat=True)
        options = sampling_from_openai(
            runtime.settings.default_parameters, raw, context_length=backend.details.context_length
        )
        plan = plan_tools(
            body.tools,
            body.tool_choice,
            body.parallel_tool_calls,
            setting=runtime.settings.tool_call_format,
            details=backend.details,
            options=options,
        )
        messages = []
        for m in body.messages:
            entry: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
            entry["content"] = _text_content(m.content)
            if m.tool_calls:
                entry["tool_calls"] = m.tool_calls
            if m.tool_call_id:
                entry["tool_call_id"] = m.tool_call_id
            if m.name and m.role == "tool":
                entry["name"] = m.name
            messages.append(entry)
        ticket, stream = await start_chat(runtime, request, messages, plan, param="messages")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model_name = runtime.model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        if not body.stream:
            output, stats = await collect(stream)
            parsed = parse_tool_calls(output, plan.dialect)
            calls = limit_calls(parsed.calls, plan)
            message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if calls:
                message["content"] = parsed.content or None
                message["tool_calls"] = [_openai_call(call, call_id()) for call in calls]
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "system_fingerprint": "slm-runtime",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if calls else stats.done_reason,
                    }
                ],
                "usage": _usage(stats),
            }

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            event: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": "slm-runtime",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                event["usage"] = None
            return event

        return _sse(_chat_events(stream, plan, chunk, include_usage), ticket)

    @router.post("/completions", response_model=None)
    async def completions(request: Request, body: CompletionRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        backend = runtime.require_backend()
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise ApiError(400, "exactly one prompt per request is supported", param="prompt")
            prompt = body.prompt[0]
        else:
            prompt = body.prompt
        raw = body.model_dump()
        _refuse_unsupported(raw, chat=False)
        options = sampling_from_openai(
            runtime.settings.default_parameters, raw, context_length=backend.details.context_length
        )
        try:
            prompt_tokens = backend.tokenize(prompt, add_special=True)
        except BackendError as exc:
            raise ApiError(400, str(exc), param="prompt") from exc
        ticket = await runtime.start(prompt_tokens, options)
        stream = generate(runtime, request, ticket, prompt_tokens, options)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model_name = runtime.model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        prefix = prompt if body.echo else ""

        if not body.stream:
            text, stats = await collect(stream)
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [
                    {"index": 0, "text": prefix + text, "logprobs": None, "finish_reason": stats.done_reason}
                ],
                "usage": _usage(stats),
            }

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            event: dict[str, Any] = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                event["usage"] = None
            return event

        async def events() -> AsyncGenerator[dict[str, Any], None]:
            if prefix:
                yield chunk(prefix, None)
            async with aclosing(stream):
                async for item in stream:
                    if isinstance(item, GenerationStats):
                        yield chunk("", item.done_reason)
                        if include_usage:
                            usage_event = chunk("", None)
                            usage_event["choices"] = []
                            usage_event["usage"] = _usage(item)
                            yield usage_event
                    else:
                        yield chunk(item, None)

        return _sse(events(), ticket)

    @router.post("/embeddings")
    async def embeddings(request: Request, body: EmbeddingRequest) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs or any(not text for text in inputs):
            raise ApiError(
                400, "input must be a non-empty string or list of non-empty strings", param="input"
            )
        vectors, tokens = await embed_texts(runtime, inputs, truncate=True)
        data = []
        for index, vector in enumerate(vectors):
            if body.dimensions:
                cut = np.asarray(vector[: body.dimensions])
                norm = float(np.linalg.norm(cut))
                vector = (cut / norm if norm > 0 else cut).tolist()
            embedding: list[float] | str = vector
            if body.encoding_format == "base64":
                embedding = base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": runtime.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router
