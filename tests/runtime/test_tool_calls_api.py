"""Tool calls through the real `openai` and `ollama` clients against a tiny GGUF with a Hermes-style template.

The model's weights are random, so a call comes only when tool_choice forces one: the grammar then makes
it write `<tool_call>{...}</tool_call>` with the named function and arguments of its schema's types.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import ollama
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionToolParam,
)

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "tiny-tools:latest"
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        # Bounded, so a random model cannot write one string or number forever.
        "city": {"type": "string", "maxLength": 12},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "days", "unit", "hourly"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather forecast", "parameters": PARAMETERS},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
# The ollama client's Tool model keeps only some schema keywords (no maxLength, no additionalProperties):
# its tools bound the city by an enum instead.
OLLAMA_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "hourly": {"type": "boolean"},
    },
    "required": ["city", "days", "unit", "hourly"],
}
OLLAMA_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": OLLAMA_PARAMETERS}},
    TOOLS[1],  # type: ignore[list-item]
]
FORCE_WEATHER: ChatCompletionNamedToolChoiceParam = {"type": "function", "function": {"name": "get_weather"}}
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris for 2 days?"}]
MAX_TOKENS = 400  # byte-level tokens: the whole call fits well within


@pytest.fixture(scope="module")
def client(tools_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tools_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


class _WithToolChoice(httpx.BaseTransport):
    """Adds tool_choice (this server's extension to /api/chat) to what the ollama client sends."""

    def __init__(self, tool_choice: Any) -> None:
        self._inner = httpx.HTTPTransport()
        self._tool_choice = tool_choice

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/chat":
            body = json.loads(request.read())
            body["tool_choice"] = self._tool_choice
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx.Request(request.method, request.url, headers=headers, json=body)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture(scope="module")
def ollama_forcing(tools_server: RunningServer) -> ollama.Client:
    return ollama.Client(host=tools_server.url, timeout=120, transport=_WithToolChoice(FORCE_WEATHER))


@pytest.fixture(scope="module")
def ollama_client(tools_server: RunningServer) -> ollama.Client:
    return ollama.Client(host=tools_server.url, timeout=120)


# What the grammar guarantees: llama-cpp-python's converter keeps types, required keys, enums and string
# lengths, but not integer bounds (its integers run to 16 digits).
TYPES = {
    **PARAMETERS,
    "properties": {**PARAMETERS["properties"], "days": {"type": "integer"}},
}


def _check_weather_arguments(arguments: Any) -> dict[str, Any]:
    assert isinstance(arguments, dict)
    jsonschema.validate(arguments, TYPES)
    assert set(arguments) == {"city", "days", "unit", "hourly"}
    assert len(arguments["city"]) <= 12
    return arguments


def _check_ollama_arguments(arguments: Any) -> dict[str, Any]:
    assert isinstance(arguments, dict)
    jsonschema.validate(arguments, OLLAMA_PARAMETERS)
    assert set(arguments) == {"city", "days", "unit", "hourly"}
    return arguments


def test_forced_call_openai(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=MAX_TOKENS,
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert len(call.id) > len("call_")
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)
    _check_weather_arguments(json.loads(call.function.arguments))


def test_forced_call_openai_is_deterministic_and_streams_the_same(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": QUESTION,
        "tools": TOOLS,
        "tool_choice": FORCE_WEATHER,
        "parallel_tool_calls": False,
        "max_tokens": MAX_TOKENS,
    }
    whole = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    whole_calls, again_calls = whole.choices[0].message.tool_calls, again.choices[0].message.tool_calls
    assert whole_calls is not None
    assert again_calls is not None
    assert whole_calls[0].function == again_calls[0].function
    assert whole_calls[0].id != again_calls[0].id  # ids are fresh per response

    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == ""
    streamed = [tc for d in deltas for tc in d.tool_calls or []]
    assert len(streamed) == 1
    assert streamed[0].index == 0
    assert streamed[0].id is not None
    assert streamed[0].id.startswith("call_")
    assert streamed[0].type == "function"
    assert streamed[0].function is not None
    assert streamed[0].function.name == "get_weather"
    assert streamed[0].function.arguments == whole_calls[0].function.arguments
    _check_weather_arguments(json.loads(streamed[0].function.arguments or ""))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_required_calls_one_of_the_tools(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=MAX_TOKENS
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in ("get_weather", "get_time")
        arguments = json.loads(call.function.arguments)
        if call.function.name == "get_weather":
            _check_weather_arguments(arguments)
        else:
            assert isinstance(arguments, dict)


def test_forced_call_ollama(ollama_forcing: ollama.Client) -> None:
    result = ollama_forcing.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris for 2 days?"}],
        tools=OLLAMA_TOOLS,
        options={"num_predict": MAX_TOKENS},
    )
    assert result.done is True
    assert result.done_reason == "stop"
    assert result.message.content == ""
    calls = result.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    _check_ollama_arguments(dict(calls[0].function.arguments))


def test_forced_call_ollama_streams_the_call_before_done(
    ollama_forcing: ollama.Client, tools_server: RunningServer
) -> None:
    chunks = list(
        ollama_forcing.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Weather in Paris for 2 days?"}],
            tools=OLLAMA_TOOLS,
            options={"num_predict": MAX_TOKENS},
            stream=True,
        )
    )
    assert chunks[-1].done is True
    assert chunks[-1].done_reason == "stop"
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1
    assert with_calls[0].done is False
    assert "".join(c.message.content or "" for c in chunks) == ""
    call = (with_calls[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"
    arguments = _check_ollama_arguments(dict(call.function.arguments))
    # The same call as the whole answer, and on the wire arguments are an object (Ollama's shape).
    raw = httpx.post(
        tools_server.url + "/api/chat",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Weather in Paris for 2 days?"}],
            "tools": OLLAMA_TOOLS,
            "tool_choice": FORCE_WEATHER,
            "options": {"num_predict": MAX_TOKENS},
            "stream": False,
        },
        timeout=120,
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": arguments}}
    ]


def test_round_trip_openai(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice=FORCE_WEATHER,
        parallel_tool_calls=False,
        max_tokens=MAX_TOKENS,
    )
    calls = first.choices[0].message.tool_calls
    assert calls
    call = calls[0]
    assert call.type == "function"
    # The arguments go back as OpenAI's JSON string; the template refuses anything but an object.
    messages: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny", "high": 21}'},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=8)
    choice = answer.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None
    assert isinstance(choice.message.content, str)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    streamed = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, stream=True))
    assert streamed[-1].choices[0].finish_reason == "length"


def test_round_trip_ollama(ollama_forcing: ollama.Client, ollama_client: ollama.Client) -> None:
    question = {"role": "user", "content": "Weather in Paris for 2 days?"}
    first = ollama_forcing.chat(
        model=MODEL,
        messages=[question],
        tools=OLLAMA_TOOLS,
        options={"num_predict": MAX_TOKENS},
    )
    assert first.message.tool_calls
    messages: list[Any] = [
        question,
        first.message,
        {"role": "tool", "tool_name": "get_weather", "content": '{"forecast": "sunny"}'},
    ]
    answer = ollama_client.chat(
        model=MODEL,
        messages=messages,
        tools=OLLAMA_TOOLS,
        options={"num_predict": 8},
    )
    assert answer.done_reason == "length"
    assert answer.eval_count == 8
    assert not answer.message.tool_calls
    assert isinstance(answer.message.content, str)


def test_tools_without_forcing_answer_in_text(client: openai.OpenAI, ollama_client: ollama.Client) -> None:
    choices: list[Literal["auto", "none"]] = ["auto", "none"]
    for choice in choices:
        result = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=6,
        )
        assert result.choices[0].finish_reason == "length"
        assert result.choices[0].message.tool_calls is None
        assert isinstance(result.choices[0].message.content, str)
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=choice, max_tokens=6, stream=True
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == result.choices[0].message.content  # holding back loses nothing
        assert chunks[-1].choices[0].finish_reason == "length"
    answer = ollama_client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        tools=OLLAMA_TOOLS,
        options={"num_predict": 6},
    )
    assert answer.done_reason == "length"
    assert not answer.message.tool_calls


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_400(tools_server: RunningServer, body: dict[str, Any], param: str) -> None:
    request = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": TOOLS, **body}
    response = httpx.post(tools_server.url + "/v1/chat/completions", json=request)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
