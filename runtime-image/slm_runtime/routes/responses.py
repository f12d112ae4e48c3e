"""The OpenAI Responses API (`POST /v1/responses`), minimal and stateless, over the chat generation path.

Input items become chat messages, function tools become chat tools, and the answer is the same
generation (tool planning, forcing grammars, call parsing) that /v1/chat/completions runs.
The server keeps no responses: `previous_response_id` and the other stateful fields are refused by name.
Past 400 lines because input items, output items and the streamed event sequence are all this API's
own shapes; they share nothing with chat completions but the generation path.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from slm_runtime.backends.base import GenerationStats, PositionLogprobs, SamplingOptions, TokenEvent
from slm_runtime.completion import CompletionRequest, Finished, ToolRequest, complete
from slm_runtime.errors import ApiError
from slm_runtime.options import sampling_from_openai
from slm_runtime.routes.logprobs import checked_request, openai_entries, with_logprobs
from slm_runtime.runtime import ClosingStreamingResponse, runtime_of
from slm_runtime.scheduler import Ticket
from slm_runtime.tool_calls import ToolCall
from slm_runtime.tool_use import call_id


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # extras are refused by name in _refuse, not dropped
    model: str
    input: Any  # checked in _input_messages, so a wrong type is reported as `input`, not a union branch
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    # The runtime stores nothing. OpenAI's default is store true, so refusing an explicit true while
    # accepting its absence would be arbitrary: both are accepted and every response says "store": false.
    store: bool | None = None
    # Accepted because they change nothing in the answer (routing, billing and abuse hints).
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    # Log probabilities of the output text: the include item switches them on, top_logprobs adds alternatives.
    include: list[str] | None = None
    top_logprobs: StrictInt | None = None
    # Refused unless neutral (see _refuse): they need stored state or features this runtime lacks.
    # Others (conversation, prompt, max_tool_calls, ...) are unknown extras, refused by name too.
    previous_response_id: str | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None


OUTPUT_TEXT_LOGPROBS = "message.output_text.logprobs"


def _refuse(body: ResponsesRequest) -> None:
    for name in body.model_extra or {}:
        raise ApiError(400, f"{name}: unknown or unsupported field", param=name)
    others = [item for item in body.include or [] if item != OUTPUT_TEXT_LOGPROBS]
    refusals = [
        ("previous_response_id", body.previous_response_id is not None, "this server keeps no responses"),
        ("background", bool(body.background), "background responses are not supported"),
        ("include", bool(others), f"{', '.join(others)}: not available (only {OUTPUT_TEXT_LOGPROBS} is)"),
        ("reasoning", bool(body.reasoning), "reasoning options are not supported"),
        ("truncation", body.truncation not in (None, "disabled"), "only truncation disabled is supported"),
    ]
    for name, refused, reason in refusals:
        if refused:
            raise ApiError(400, f"{name}: {reason}", param=name)


def _item_text(content: Any, where: str) -> str:
    """A message's content: a string, or input_text / output_text parts (output_text: a replayed answer)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("input_text", "output_text") or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}: content part type {kind!r} is not supported", param=where)
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param=where)


def _input_messages(instructions: str | None, input_: Any) -> list[dict[str, Any]]:
    """`instructions` and the input items as chat messages (the shape template_messages takes)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(input_, str):
        return [*messages, {"role": "user", "content": input_}]
    if not isinstance(input_, list) or not input_:
        raise ApiError(400, "input must be a string or a non-empty list of items", param="input")
    for index, item in enumerate(input_):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where}: each item must be an object", param=where)
        kind = item.get("type", "message")  # EasyInputMessage items may leave the type out
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise ApiError(400, f"{where}: unsupported role {role!r}", param=where)
            content = _item_text(item.get("content"), where)
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind in ("function_call", "function_call_output"):
            cid = item.get("call_id")
            if not isinstance(cid, str) or not cid:
                raise ApiError(400, f"{where}: call_id is required", param=where)
            if kind == "function_call_output":
                output = item.get("output")
                text = output if isinstance(output, str) else _item_text(output, where)
                messages.append({"role": "tool", "tool_call_id": cid, "content": text})
                continue
            name, arguments = item.get("name"), item.get("arguments", "{}")
            if not isinstance(name, str) or not isinstance(arguments, str):
                raise ApiError(400, f"{where}: name and arguments must be strings", param=where)
            call = {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # calls of one turn share its message
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            raise ApiError(400, f"{where}: item type {kind!r} is not supported", param=where)
    return messages


def _chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Responses' flat function tools in the chat shape that plan_tools and the templates take."""
    if tools is None:
        return None
    converted = []
    for tool in tools:
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ApiError(400, 'tools: each tool must be {"type": "function", "name": ...}', param="tools")
        function = {
            key: tool[key] for key in ("name", "description", "parameters") if tool.get(key) is not None
        }
        converted.append({"type": "function", "function": function})
    return converted


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice  # plan_tools checks the string values
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise ApiError(
        400,
        'tool_choice must be "none", "auto", "required" or {"type": "function", "name": ...}',
        param="tool_choice",
    )


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """`text.format` as the chat response_format, which sampling_from_openai turns into a grammar."""
    fmt = (text or {}).get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}
    raise ApiError(
        400,
        'text.format must be {"type": "text" | "json_object"} or a json_schema with a schema',
        param="text",
    )


def _usage(stats: GenerationStats) -> dict[str, Any]:
    return {
        "input_tokens": stats.prompt_tokens,
        "input_tokens_details": {"cached_tokens": stats.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": stats.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def _text_part(text: str, logprobs: list[PositionLogprobs] | None = None) -> dict[str, Any]:
    shaped = openai_entries(logprobs or [])
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": shaped}


def _message_item(
    id_: str, text: str | None, status: str, logprobs: list[PositionLogprobs] | None = None
) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text, logprobs)]
    return {"type": "message", "id": id_, "role": "assistant", "status": status, "content": content}


def _call_item(call: ToolCall) -> dict[str, Any]:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "call_id": call_id(),
        "name": call.name,
        "arguments": arguments,
        "status": "completed",
    }


@dataclass(frozen=True)
class _Shell:
    """What every response object for one request repeats; `render` adds the state of the moment."""

    id: str
    created_at: int
    model: str
    body: ResponsesRequest
    options: SamplingOptions

    def render(self, output: list[dict[str, Any]], stats: GenerationStats | None) -> dict[str, Any]:
        status = "in_progress" if stats is None else _status(stats)
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": None,
            "store": False,  # nothing is kept (see ResponsesRequest.store)
            "temperature": self.options.temperature,
            "top_logprobs": self.options.top_logprobs,
            "top_p": self.options.top_p,
            "text": body.text or {"format": {"type": "text"}},
            "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [],
            "truncation": "disabled",
            "usage": None if stats is None else _usage(stats),
            "user": body.user,
            "metadata": body.metadata or {},
        }


def _status(stats: GenerationStats) -> str:
    return "incomplete" if stats.done_reason == "length" else "completed"


async def _events(
    stream: AsyncGenerator[TokenEvent | Finished, None], shell: _Shell
) -> AsyncGenerator[dict[str, Any], None]:
    """The Responses event sequence. The message item opens with the first text, so a forced call's
    answer is function_call items only, as the non-streamed output is.

    Log probabilities ride on the text deltas of their tokens (without bytes, as this API's events
    have them); those of text that became a call go with the last delta. An answer that is only
    function calls has no output text to carry them."""
    counter = itertools.count()

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(counter), **fields}

    message_id = f"msg_{uuid.uuid4().hex}"
    at = {"item_id": message_id, "output_index": 0, "content_index": 0}
    pieces: list[str] = []
    opened = False
    finished: Finished | None = None
    pending: list[PositionLogprobs] = []  # not yet sent with a delta
    sent: list[PositionLogprobs] = []

    def delta(text: str) -> dict[str, Any]:
        nonlocal pending
        sent.extend(pending)
        entries, pending = openai_entries(pending, with_bytes=False), []
        return event("response.output_text.delta", **at, delta=text, logprobs=entries)

    def open_message() -> list[dict[str, Any]]:
        return [
            event(
                "response.output_item.added",
                output_index=0,
                item=_message_item(message_id, None, "in_progress"),
            ),
            event("response.content_part.added", **at, part=_text_part("")),
        ]

    yield event("response.created", response=shell.render([], None))
    yield event("response.in_progress", response=shell.render([], None))
    async with aclosing(stream):
        async for item in stream:
            if isinstance(item, Finished):
                finished = item
                break
            pending.extend(item.logprobs)
            if not opened:
                opened = True
                for opening in open_message():
                    yield opening
            pieces.append(item.text)
            yield delta(item.text)
    if finished is None:  # the client went away
        return
    pending.extend(finished.logprobs)
    rest, calls, stats = finished.text, finished.calls, finished.stats
    output: list[dict[str, Any]] = []
    if opened or rest or not calls:
        if not opened:
            for opening in open_message():
                yield opening
        if rest or pending:
            pieces.append(rest)
            yield delta(rest)
        text = "".join(pieces)
        yield event(
            "response.output_text.done", **at, text=text, logprobs=openai_entries(sent, with_bytes=False)
        )
        yield event("response.content_part.done", **at, part=_text_part(text, sent))
        message = _message_item(message_id, text, _status(stats), sent)
        output.append(message)
        yield event("response.output_item.done", output_index=0, item=message)
    for call in calls:
        index, call_item = len(output), _call_item(call)
        where = {"item_id": call_item["id"], "output_index": index}
        yield event(
            "response.output_item.added",
            output_index=index,
            item={**call_item, "arguments": "", "status": "in_progress"},
        )
        yield event("response.function_call_arguments.delta", **where, delta=call_item["arguments"])
        yield event("response.function_call_arguments.done", **where, arguments=call_item["arguments"])
        output.append(call_item)
        yield event("response.output_item.done", output_index=index, item=call_item)
    final = "response.incomplete" if _status(stats) == "incomplete" else "response.completed"
    yield event(final, response=shell.render(output, stats))


def _sse(events: AsyncGenerator[dict[str, Any], None], ticket: Ticket) -> ClosingStreamingResponse:
    """Named SSE events (`event:` and `data:`), and no `[DONE]`: the Responses stream ends at its last event."""

    async def lines() -> AsyncIterator[bytes]:
        sequence = 0
        try:
            async with aclosing(events):
                async for event in events:
                    sequence = event["sequence_number"] + 1
                    data = json.dumps(event, ensure_ascii=False)
                    yield f"event: {event['type']}\ndata: {data}\n\n".encode()
        except ApiError as exc:  # headers are gone: the error travels as the stream's last event
            error: dict[str, Any] = {
                "type": "error",
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
            }
            error["sequence_number"] = sequence
            yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()

    return ClosingStreamingResponse(lines(), media_type="text/event-stream", ticket=ticket)


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/responses", response_model=None)
    async def create_response(request: Request, body: ResponsesRequest) -> Response | dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model)
        runtime.require_backend()
        _refuse(body)
        logprobs, top_logprobs = checked_request(
            OUTPUT_TEXT_LOGPROBS in (body.include or []),
            body.top_logprobs,
            enabled_by=f'include: ["{OUTPUT_TEXT_LOGPROBS}"]',
        )
        messages = _input_messages(body.instructions, body.input)
        raw = {
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_tokens": body.max_output_tokens,
            "response_format": _response_format(body.text),
        }
        try:
            options = sampling_from_openai(
                runtime.settings.default_parameters, raw, context_length=runtime.details.context_length
            )
        except ApiError as exc:  # named after this API's field, not the chat one it was mapped onto
            exc.param = {"response_format": "text", "max_tokens": "max_output_tokens"}.get(
                exc.param or "", exc.param
            )
            raise
        options = with_logprobs(options, logprobs, top_logprobs)
        tools = ToolRequest(
            _chat_tools(body.tools), _chat_tool_choice(body.tool_choice), body.parallel_tool_calls
        )
        completion = CompletionRequest(options, messages=messages, tools=tools, prompt_field="input")
        stream = await complete(runtime, completion, request)
        shell = _Shell(f"resp_{uuid.uuid4().hex}", int(time.time()), runtime.model_name, body, options)

        if body.stream:
            return _sse(_events(stream.events(), shell), stream.ticket)
        answer = await stream.collect()
        status = _status(answer.stats)
        output = (
            []
            if answer.calls and not answer.content
            else [_message_item(f"msg_{uuid.uuid4().hex}", answer.content, status, answer.logprobs)]
        )
        output += [_call_item(call) for call in answer.calls]
        return shell.render(output, answer.stats)

    return router
