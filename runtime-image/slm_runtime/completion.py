"""The one request path every generating route takes: render, tokenize, check, admit, generate, parse calls.

A route turns its API's request into a `CompletionRequest`; `complete()` does everything that can
refuse it before a response starts (so refusals are clean 4xx/503 answers), and the returned
`CompletionStream` is read either as events (streaming) or collected whole. The routes only shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from slm_runtime.backends.base import (
    BackendError,
    DoneEvent,
    ErrorEvent,
    GenerationJob,
    GenerationStats,
    PositionLogprobs,
    SamplingOptions,
    TokenEvent,
)
from slm_runtime.errors import ApiError, backend_refusal
from slm_runtime.runtime import Runtime
from slm_runtime.scheduler import Ticket
from slm_runtime.tool_calls import ToolCall, ToolCallStream, parse_tool_calls, template_messages
from slm_runtime.tool_use import ToolPlan, limit_calls, plan_tools

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolRequest:
    """A request's tools in the chat shape templates take, and its choice among them (OpenAI's values)."""

    tools: list[dict[str, Any]] | None = None
    choice: str | dict[str, Any] | None = None
    parallel: bool | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """What to generate from, in no API's shape.

    A conversation (`messages`, rendered with the model's chat template, the configured system prompt
    in front unless it has one) or a raw `prompt` taken as is; either way after the `context` tokens.
    """

    options: SamplingOptions  # sampling, stops, response format and log probabilities, already merged
    messages: list[dict[str, Any]] | None = None
    prompt: str = ""
    system: str | None = None  # replaces the configured system prompt (Ollama's generate `system`)
    context: Sequence[int] = ()  # Ollama's `context`: the tokens of an earlier exchange
    tools: ToolRequest = field(default_factory=ToolRequest)
    prompt_field: str | None = None  # the request field the prompt came from, named when it is refused


@dataclass(frozen=True)
class Finished:
    """The end of a streamed completion.

    `text` is held-back text that turned out not to open a tool call, `calls` the calls parsed out
    of the rest, `logprobs` the entries of tokens whose text was not sent with a TokenEvent.
    """

    stats: GenerationStats
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    logprobs: tuple[PositionLogprobs, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A whole (non-streamed) answer: the raw text, and the content and calls parsed out of it."""

    text: str
    content: str  # the text outside tool calls (the whole text without tools)
    calls: list[ToolCall]
    logprobs: list[PositionLogprobs]  # empty unless the request asked for them; tool-call text included
    stats: GenerationStats


class CompletionStream:
    """A completion that holds its slot or queue place; read it once, by `events()` or `collect()`.

    The ticket is released when generation ends; a streaming response releases it too (see
    ClosingStreamingResponse), in case the client leaves before the body is read.
    """

    def __init__(
        self,
        runtime: Runtime,
        client: Request,
        request: CompletionRequest,
        prompt_tokens: list[int],
        plan: ToolPlan,
        ticket: Ticket,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.ticket = ticket
        self._plan = plan
        self._generation = _generate(
            runtime, client, ticket, prompt_tokens, plan.options, request.prompt_field
        )

    async def events(self) -> AsyncGenerator[TokenEvent | Finished, None]:
        """Text as it comes, each piece with the log probabilities of its tokens, then `Finished`.

        With tools, text that may open a call is held back; the entries of tokens not yet sent
        ride on the next piece (or on `Finished`). Ends without `Finished` when the client left.
        """
        plan = self._plan
        calls_stream = ToolCallStream(plan.dialect) if plan.dialect is not None else None
        pending: list[PositionLogprobs] = []
        async with aclosing(self._generation) as generation:
            async for item in generation:
                if isinstance(item, GenerationStats):
                    rest, calls = calls_stream.finish() if calls_stream is not None else ("", [])
                    yield Finished(item, rest, limit_calls(calls, plan), tuple(pending))
                    return
                pending.extend(item.logprobs)
                text = calls_stream.feed(item.text) if calls_stream is not None else item.text
                if text:
                    yield TokenEvent(text, tuple(pending))
                    pending = []

    async def collect(self) -> Completion:
        pieces: list[str] = []
        logprobs: list[PositionLogprobs] = []
        stats: GenerationStats | None = None
        async with aclosing(self._generation) as generation:
            async for item in generation:
                if isinstance(item, GenerationStats):
                    stats = item
                else:
                    pieces.append(item.text)
                    logprobs.extend(item.logprobs)
        if stats is None:  # client went away; nobody will read this
            raise ApiError(499, "client disconnected")
        text = "".join(pieces)
        parsed = parse_tool_calls(text, self._plan.dialect)
        return Completion(text, parsed.content, limit_calls(parsed.calls, self._plan), logprobs, stats)


async def complete(runtime: Runtime, request: CompletionRequest, client: Request) -> CompletionStream:
    """Plans the tools, renders and tokenizes the prompt, checks it and takes a slot or queue place.

    Everything that refuses a request happens here, before any response starts; `client` is the
    HTTP request, watched so generation stops when it goes away.
    """
    backend = runtime.require_backend()
    details = backend.details
    plan = plan_tools(
        request.tools.tools,
        request.tools.choice,
        request.tools.parallel,
        setting=runtime.settings.tool_call_format,
        details=details,
        options=request.options,
    )
    where = request.prompt_field
    try:
        if request.messages is None:
            text = request.prompt
        else:
            messages = _with_system_prompt(runtime, template_messages(request.messages), request.system)
            text = backend.render_chat(messages, plan.tools)
        context = _checked_context(details.vocab_size, request.context)
        prompt_tokens = context + backend.tokenize(text, add_special=True)
    except BackendError as exc:
        raise backend_refusal(exc, where, of_prompt=True) from exc
    try:
        # Off the event loop: checking compiles the request's JSON-schema grammar, which can be slow.
        await asyncio.to_thread(backend.validate, prompt_tokens, plan.options)
    except BackendError as exc:
        raise backend_refusal(exc, where, of_prompt=False) from exc
    ticket = runtime.admit()
    return CompletionStream(runtime, client, request, prompt_tokens, plan, ticket)


def _with_system_prompt(
    runtime: Runtime, messages: list[dict[str, Any]], system_override: str | None
) -> list[dict[str, Any]]:
    """Messages with the configured system prompt in front unless the request brings its own."""
    system = system_override if system_override is not None else runtime.settings.system_prompt
    if system and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _checked_context(vocab_size: int, context: Sequence[int]) -> list[int]:
    """`context` comes back from the client; an id outside the vocabulary would fail the decode."""
    tokens = list(context)
    if vocab_size:
        for token in tokens:
            if not 0 <= token < vocab_size:
                raise ApiError(
                    400,
                    f"context holds token id {token}, outside the model's vocabulary (0 to {vocab_size - 1})",
                    param="context",
                )
    return tokens


async def _wait_disconnect(client: Request) -> None:
    while True:
        message = await client.receive()
        if message["type"] == "http.disconnect":
            return


async def _generate(
    runtime: Runtime,
    client: Request,
    ticket: Ticket,
    prompt_tokens: list[int],
    options: SamplingOptions,
    prompt_field: str | None,
) -> AsyncGenerator[TokenEvent | GenerationStats, None]:
    """Text pieces (with their tokens' log probabilities when asked), then the final GenerationStats.
    Stops the backend when the client goes away.

    The ticket was admitted before the response started (so a full queue is a clean 503); it is
    released here whatever happens.
    """
    backend = runtime.require_backend()
    metrics, model = runtime.metrics, runtime.model_name
    disconnect = asyncio.create_task(_wait_disconnect(client))
    job: GenerationJob | None = None
    finished = False
    runtime.enter()
    try:
        waiter = asyncio.ensure_future(ticket.wait())
        await asyncio.wait({waiter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            return
        waiter.result()
        metrics.queue_time.labels(model).observe(ticket.queue_seconds)
        job = GenerationJob(
            prompt_tokens, options, asyncio.get_running_loop(), arrived_at_ns=time.perf_counter_ns()
        )
        try:
            backend.submit(job)
        except BackendError as exc:
            raise backend_refusal(exc, prompt_field, of_prompt=False) from exc
        last_token_at = 0.0
        while True:
            getter = asyncio.ensure_future(job.next_event())
            await asyncio.wait({getter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                log.info("client disconnected; generation stopped")
                return
            event = getter.result()
            if isinstance(event, ErrorEvent):
                finished = True
                raise ApiError(500, event.message)
            if isinstance(event, DoneEvent):
                finished = True
                stats = event.stats
                metrics.prompt_tokens.labels(model).inc(stats.prompt_tokens)
                metrics.generation_tokens.labels(model).inc(stats.completion_tokens)
                metrics.prefix_cache_queries.labels(model).inc(stats.prompt_tokens)
                metrics.prefix_cache_hits.labels(model).inc(stats.cached_tokens)
                metrics.e2e_latency.labels(model).observe(time.perf_counter() - ticket.arrived_at)
                metrics.request_success.labels(model, stats.done_reason).inc()
                stats.queued_ns += int(ticket.queue_seconds * 1e9)
                stats.total_ns += int(ticket.queue_seconds * 1e9)
                yield stats
                return
            now = time.perf_counter()
            if last_token_at:
                metrics.inter_token_latency.labels(model).observe(now - last_token_at)
            else:
                metrics.time_to_first_token.labels(model).observe(now - ticket.arrived_at)
            last_token_at = now
            yield event
    finally:
        if job is not None and not finished:
            job.cancelled.set()
        disconnect.cancel()
        ticket.release()
        runtime.leave()
