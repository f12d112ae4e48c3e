"""The OpenAI API: chat and text completions (SSE streaming ending in `data: [DONE]`), embeddings, models.

Requests become a CompletionRequest; `complete()` (completion.py) does the generating, this module
only OpenAI's shapes.
"""

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
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from slm_runtime.backends.base import GenerationStats, PositionLogprobs, TokenEvent
from slm_runtime.completion import CompletionRequest, Finished, ToolRequest, complete
from slm_runtime.embedding import embed_texts
from slm_runtime.errors import ApiError, error_body
from slm_runtime.options import sampling_from_openai
from slm_runtime.routes.logprobs import (
    LegacyLogprobs,
    chat_logprobs,
    checked_legacy_request,
    checked_request,
    with_logprobs,
)
from slm_runtime.runtime import ClosingStreamingResponse, runtime_of
from slm_runtime.scheduler import Ticket
from slm_runtime.tool_calls import ToolCall
from slm_runtime.tool_use import call_id


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
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None


class LegacyCompletionRequest(_Request):
    model: str
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    echo: bool = False
    logprobs: StrictInt | None = None  # the legacy API's: how many alternatives per token (0 to 5)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


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

    Their neutral values (n 1, null) pass, as clients send them.
    """
    refusals: list[tuple[str, bool, str]] = [
        ("n", raw.get("n") not in (None, 1), "only one choice per request is supported"),
        ("logit_bias", bool(raw.get("logit_bias")), "token biases are not supported"),
    ]
    if not chat:
        refusals += [
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


ChatChunk = Callable[[dict[str, Any], str | None, list[PositionLogprobs] | None], dict[str, Any]]


async def _chat_events(
    events: AsyncGenerator[TokenEvent | Finished, None],
    chunk: ChatChunk,
    include_usage: bool,
    logprobs: bool,
) -> AsyncGenerator[dict[str, Any], None]:
    """Chat chunks: text as it comes (held back where it may open a tool call), then the calls, one
    chunk each with the whole arguments, then the finish reason and the usage.

    With logprobs, each token's entry rides on the first chunk that carries its text (or, for text
    that became a tool call, the next chunk): every generated token is reported once, in order.
    """
    pending: list[PositionLogprobs] = []

    def take(*, always: bool) -> list[PositionLogprobs] | None:
        nonlocal pending
        if not logprobs or not (pending or always):
            return None
        taken, pending = pending, []
        return taken

    yield chunk({"role": "assistant", "content": ""}, None, None)
    async with aclosing(events):
        async for event in events:
            pending.extend(event.logprobs)
            if isinstance(event, TokenEvent):
                yield chunk({"content": event.text}, None, take(always=True))
                continue
            if event.text:
                yield chunk({"content": event.text}, None, take(always=True))
            for index, call in enumerate(event.calls):
                yield chunk({"tool_calls": [_openai_call(call, call_id(), index)]}, None, take(always=False))
            yield chunk({}, "tool_calls" if event.calls else event.stats.done_reason, take(always=False))
            if include_usage:
                usage_event = chunk({}, None, None)
                usage_event["choices"] = []
                usage_event["usage"] = _usage(event.stats)
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
        runtime.require_backend()  # loading: 503 before anything else is checked
        raw = body.model_dump()
        _refuse_unsupported(raw, chat=True)
        logprobs, top_logprobs = checked_request(
            body.logprobs, body.top_logprobs, enabled_by="logprobs: true"
        )
        options = sampling_from_openai(
            runtime.settings.default_parameters, raw, context_length=runtime.details.context_length
        )
        options = with_logprobs(options, logprobs, top_logprobs)
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
        tools = ToolRequest(body.tools, body.tool_choice, body.parallel_tool_calls)
        completion = CompletionRequest(options, messages=messages, tools=tools, prompt_field="messages")
        stream = await complete(runtime, completion, request)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model_name = runtime.model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        if not body.stream:
            answer = await stream.collect()
            stats, calls = answer.stats, answer.calls
            message: dict[str, Any] = {"role": "assistant", "content": answer.content}
            if calls:
                message["content"] = answer.content or None
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
                        # Every generated token, tool-call text included (the calls are parsed out of it).
                        "logprobs": chat_logprobs(answer.logprobs) if logprobs else None,
                        "finish_reason": "tool_calls" if calls else stats.done_reason,
                    }
                ],
                "usage": _usage(stats),
            }

        def chunk(
            delta: dict[str, Any], finish: str | None, entries: list[PositionLogprobs] | None
        ) -> dict[str, Any]:
            shaped = chat_logprobs(entries) if entries is not None else None
            event: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": "slm-runtime",
                "choices": [{"index": 0, "delta": delta, "logprobs": shaped, "finish_reason": finish}],
            }
            if include_usage:
                event["usage"] = None
            return event

        return _sse(_chat_events(stream.events(), chunk, include_usage, logprobs), stream.ticket)

    @router.post("/completions", response_model=None)
    async def completions(request: Request, body: LegacyCompletionRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        runtime.require_backend()
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise ApiError(400, "exactly one prompt per request is supported", param="prompt")
            prompt = body.prompt[0]
        else:
            prompt = body.prompt
        raw = body.model_dump()
        _refuse_unsupported(raw, chat=False)
        logprobs, top_logprobs = checked_legacy_request(body.logprobs, body.echo)
        options = sampling_from_openai(
            runtime.settings.default_parameters, raw, context_length=runtime.details.context_length
        )
        options = with_logprobs(options, logprobs, top_logprobs)
        completion = CompletionRequest(options, prompt=prompt, prompt_field="prompt")
        stream = await complete(runtime, completion, request)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model_name = runtime.model_name
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        prefix = prompt if body.echo else ""
        legacy = LegacyLogprobs(prompt)

        if not body.stream:
            answer = await stream.collect()
            shaped = legacy.render(answer.logprobs) if logprobs else None
            choice = {
                "index": 0,
                "text": prefix + answer.text,
                "logprobs": shaped,
                "finish_reason": answer.stats.done_reason,
            }
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [choice],
                "usage": _usage(answer.stats),
            }

        def chunk(
            text: str, finish: str | None, entries: tuple[PositionLogprobs, ...] | None = None
        ) -> dict[str, Any]:
            shaped = legacy.render(entries) if entries is not None else None
            event: dict[str, Any] = {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "text": text, "logprobs": shaped, "finish_reason": finish}],
            }
            if include_usage:
                event["usage"] = None
            return event

        async def events() -> AsyncGenerator[dict[str, Any], None]:
            if prefix:
                yield chunk(prefix, None)
            async with aclosing(stream.events()) as stream_events:
                async for event in stream_events:
                    if isinstance(event, TokenEvent):
                        yield chunk(event.text, None, event.logprobs if logprobs else None)
                        continue
                    # Entries of trailing tokens without text of their own end on the finishing chunk.
                    rest = event.logprobs if logprobs and event.logprobs else None
                    yield chunk("", event.stats.done_reason, rest)
                    if include_usage:
                        usage_event = chunk("", None)
                        usage_event["choices"] = []
                        usage_event["usage"] = _usage(event.stats)
                        yield usage_event

        return _sse(events(), stream.ticket)

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
