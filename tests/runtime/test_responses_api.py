"""The OpenAI Responses API (`/v1/responses`) through the real `openai` client against served tiny GGUFs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import (
    FunctionToolParam,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInputParam,
    ResponseOutputMessage,
)

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "tiny:latest"
TOOLS_MODEL = "tiny-tools:latest"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather forecast",
    "parameters": {
        "type": "object",
        # Bounded, so a random model cannot write one string forever.
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
MAX_TOKENS = 400  # byte-level tokens: a whole forced call fits well within


@pytest.fixture(scope="module")
def client(gguf_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gguf_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tools_client(tools_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tools_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_text_response(client: openai.OpenAI) -> None:
    result = client.responses.create(model=MODEL, input="Hello", max_output_tokens=8)
    assert result.object == "response"
    assert result.id.startswith("resp_")
    assert result.model == MODEL
    assert result.output_text
    assert result.usage is not None
    assert result.usage.input_tokens > 0
    assert 0 < result.usage.output_tokens <= 8
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens
    assert result.usage.output_tokens_details.reasoning_tokens == 0
    message = result.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    # Random weights rarely stop before the limit: when they do not, the response says it was cut.
    if result.usage.output_tokens == 8:
        assert result.status == "incomplete"
        assert result.incomplete_details is not None
        assert result.incomplete_details.reason == "max_output_tokens"
    else:
        assert result.status == "completed"


def test_instructions_and_message_list(client: openai.OpenAI) -> None:
    items: ResponseInputParam = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    result = client.responses.create(
        model=MODEL, instructions="You are terse.", input=items, max_output_tokens=6, temperature=0
    )
    assert result.instructions == "You are terse."
    assert result.output_text
    plain = client.responses.create(model=MODEL, input="How are you?", max_output_tokens=6, temperature=0)
    assert result.usage is not None
    assert plain.usage is not None
    assert result.usage.input_tokens > plain.usage.input_tokens  # the history reached the prompt


def test_stream_events_in_order(client: openai.OpenAI) -> None:
    whole = client.responses.create(model=MODEL, input="stream me", max_output_tokens=9)
    events = list(client.responses.create(model=MODEL, input="stream me", max_output_tokens=9, stream=True))
    kinds = [e.type for e in events]
    final = "response.incomplete" if whole.status == "incomplete" else "response.completed"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        final,
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert text == whole.output_text
    done = events[-4]
    assert done.type == "response.output_text.done"
    assert done.text == text
    last = events[-1]
    assert isinstance(last, ResponseCompletedEvent | ResponseIncompleteEvent)
    assert last.type == final
    assert last.response.output_text == text
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 9
    message = last.response.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert {d.item_id for d in deltas} == {message.id}


def test_forced_function_call(tools_client: openai.OpenAI) -> None:
    result = tools_client.responses.create(
        model=TOOLS_MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=MAX_TOKENS,
    )
    calls = [item for item in result.output if isinstance(item, ResponseFunctionToolCall)]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert call.id is not None
    assert call.id.startswith("fc_")
    arguments = json.loads(call.arguments)
    assert isinstance(arguments, dict)
    assert isinstance(arguments["city"], str)
    assert result.tools[0].type == "function"


def test_forced_function_call_streams_the_same(tools_client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": TOOLS_MODEL,
        "input": "Weather in Paris?",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": MAX_TOKENS,
    }
    whole = tools_client.responses.create(**kwargs)
    events = list(tools_client.responses.create(stream=True, **kwargs))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[4]
    assert done.type == "response.function_call_arguments.done"
    expected = whole.output[-1]
    assert isinstance(expected, ResponseFunctionToolCall)
    assert done.arguments == expected.arguments
    item = events[5]
    assert item.type == "response.output_item.done"
    assert isinstance(item.item, ResponseFunctionToolCall)
    assert item.item.name == "get_weather"
    assert item.item.id == done.item_id


def test_function_call_round_trip(tools_client: openai.OpenAI) -> None:
    first = tools_client.responses.create(
        model=TOOLS_MODEL,
        input="Weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=MAX_TOKENS,
    )
    call = first.output[-1]
    assert isinstance(call, ResponseFunctionToolCall)
    items: ResponseInputParam = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"forecast": "sunny"}'},
    ]
    second = tools_client.responses.with_raw_response.create(
        model=TOOLS_MODEL, input=items, tools=[WEATHER], max_output_tokens=8
    )
    assert second.status_code == 200
    answer = second.parse()
    assert answer.output
    assert answer.usage is not None
    assert first.usage is not None
    assert answer.usage.input_tokens > first.usage.input_tokens  # the call and its result were templated


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    result = client.responses.create(
        model=MODEL,
        input="Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
        max_output_tokens=64,
    )
    assert isinstance(json.loads(result.output_text)["ok"], bool)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": "x", "frobnicate": True}, "frobnicate"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_requests_name_the_field(gguf_server: RunningServer, body: dict[str, Any], param: str) -> None:
    response = httpx.post(gguf_server.url + "/v1/responses", json={"model": MODEL, **body}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


def test_bad_request_raises_in_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_123")
    assert caught.value.param == "previous_response_id"


def test_store_is_accepted_and_reported_false(gguf_server: RunningServer) -> None:
    response = httpx.post(
        gguf_server.url + "/v1/responses",
        json={"model": MODEL, "input": "x", "store": True, "max_output_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["store"] is False


def test_sse_wire_format(gguf_server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        gguf_server.url + "/v1/responses",
        json={"model": MODEL, "input": "x", "max_output_tokens": 3, "stream": True},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "event: response.created"
    assert json.loads(lines[1].removeprefix("data: "))["type"] == "response.created"
    assert "data: [DONE]" not in lines
