"""LangChain, LiteLLM and LlamaIndex get real tool calls from the runtime, over the OpenAI and Ollama APIs.

The tiny model's weights are random: it calls a tool only when tool_choice forces one (a grammar then makes
it write the call). Over the OpenAI API the frameworks send tool_choice themselves. The Ollama API has no
tool_choice, so the Ollama-speaking frameworks get this server's extension added by an httpx transport
(each takes one: LangChain's client kwargs, LiteLLM's client, LlamaIndex's ollama.Client).

LlamaIndex reaches the OpenAI API through LiteLLM: its own OpenAI integrations (llama-index-llms-openai,
-openai-like) require openai<3, which cannot install beside the openai client these tests pin.

Nothing may reach the internet (the frameworks look up cost maps, tokenizers, tracing): a guard refuses
every connection beyond loopback, so an attempt fails fast and fails the test instead of hanging.
"""

# Annotations stay evaluated (no `from __future__ import annotations`): LlamaIndex builds a tool's
# parameters from its function's annotation objects and cannot resolve them from strings.

import errno
import importlib
import json
import logging
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Literal

import httpx
import jsonschema
import ollama
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from llama_index.core.base.llms.types import ChatResponse
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.tools import FunctionTool
from llama_index.llms.ollama import Ollama  # type: ignore[import-untyped]

from tests.runtime.conftest import RunningServer
from tests.runtime.test_tool_calls_api import OLLAMA_PARAMETERS

pytestmark = pytest.mark.runtime

MODEL = "tiny-tools:latest"
QUESTION = "Weather in Paris for 2 days?"
MAX_TOKENS = 400  # byte-level tokens: a whole call fits well within
ANSWER_TOKENS = 8
# What a parsed get_weather call must hold: exact JSON types (a boolean, not "true"), every key.
# (The Ollama tests' schema, city bounded by an enum so a random model cannot write it forever, closed.)
WEATHER_PARAMETERS: dict[str, Any] = {**OLLAMA_PARAMETERS, "additionalProperties": False}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_PARAMETERS},
}
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def get_weather(
    city: Literal["Paris", "Tokyo", "Lima"], days: int, unit: Literal["celsius", "fahrenheit"], hourly: bool
) -> str:
    """Weather forecast for a city."""
    return json.dumps({"city": city, "days": days, "unit": unit, "hourly": hourly, "forecast": "sunny"})


def get_time(zone: Literal["UTC", "CET"]) -> str:
    """The time in a zone."""
    return json.dumps({"zone": zone, "time": "12:00"})


def _check_weather(arguments: Any) -> dict[str, Any]:
    assert isinstance(arguments, dict)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    return arguments


def _ran_with(output: Any, arguments: dict[str, Any]) -> None:
    """The tool ran with the parsed arguments (it echoes them)."""
    assert json.loads(str(output)) == {**arguments, "forecast": "sunny"}


@pytest.fixture(scope="module", autouse=True)
def internet_attempts() -> Iterator[list[str]]:
    """Refuses connections beyond loopback and records them, so that a library swallowing the error
    still fails its test. Tracing is switched off the documented way, in case the environment has it on."""
    attempts: list[str] = []
    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            attempts.append(f"connect to {address[0]}:{address[1]}")
            raise OSError(errno.ENETUNREACH, f"test guard: no internet (connect to {address[0]})")
        connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in _LOOPBACK:
            attempts.append(f"name lookup of {name}")
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no internet (lookup of {name})")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        patch.setenv("LANGSMITH_TRACING", "false")
        patch.setenv("LANGCHAIN_TRACING_V2", "false")
        yield attempts


@pytest.fixture(autouse=True)
def stays_offline(internet_attempts: list[str]) -> Iterator[None]:
    yield
    found = list(internet_attempts)
    internet_attempts.clear()
    assert not found, f"a framework tried to reach the internet: {found}"


@pytest.fixture(scope="module")
def litellm(internet_attempts: list[str]) -> Iterator[ModuleType]:
    """LiteLLM, imported with its bundled model cost map: it downloads one at import otherwise (so does
    llama_index.llms.litellm, which imports it)."""
    # LiteLLM raises the httpx logger to WARNING at import, for the whole process: put it back.
    httpx_logger = logging.getLogger("httpx")
    httpx_level = httpx_logger.level
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        module = importlib.import_module("litellm")
        patch.setattr(module, "suppress_debug_info", True)
        yield module
    httpx_logger.setLevel(httpx_level)


class ForceToolChoice(httpx.BaseTransport):
    """Adds tool_choice (this server's extension to /api/chat) to what an Ollama client sends."""

    def __init__(self, function: str = "get_weather") -> None:
        self._inner = httpx.HTTPTransport()
        self._tool_choice = {"type": "function", "function": {"name": function}}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/chat":
            body = json.loads(request.read())
            body["tool_choice"] = self._tool_choice
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx.Request(request.method, request.url, headers=headers, json=body)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def _accumulated(chunks: Iterator[BaseMessage]) -> AIMessageChunk:
    total: AIMessageChunk | None = None
    for chunk in chunks:
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


def _calls(message: AIMessage) -> list[tuple[str, dict[str, Any]]]:
    return [(call["name"], call["args"]) for call in message.tool_calls]


# LangChain


@pytest.fixture(scope="module")
def weather_tool() -> BaseTool:
    return tool(get_weather)


@pytest.fixture(scope="module")
def time_tool() -> BaseTool:
    return tool(get_time)


def _chat_openai(server: RunningServer, max_tokens: int = MAX_TOKENS) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=server.url + "/v1",
        api_key="unused",
        max_tokens=max_tokens,
        max_retries=0,
        timeout=120,
    )


def _chat_ollama(server: RunningServer, num_predict: int, *, force: bool) -> ChatOllama:
    return ChatOllama(
        model=MODEL,
        base_url=server.url,
        num_predict=num_predict,
        client_kwargs={"timeout": 120},
        sync_client_kwargs={"transport": ForceToolChoice()} if force else {},
    )


def test_langchain_openai_tool_call_and_round_trip(
    tools_server: RunningServer, weather_tool: BaseTool
) -> None:
    call_message = (
        _chat_openai(tools_server).bind_tools([weather_tool], tool_choice="get_weather").invoke(QUESTION)
    )
    assert isinstance(call_message, AIMessage)
    assert call_message.response_metadata["finish_reason"] == "tool_calls"
    assert call_message.invalid_tool_calls == []
    assert len(call_message.tool_calls) == 1
    call = call_message.tool_calls[0]
    assert call["name"] == "get_weather"
    assert call["id"] is not None
    assert call["id"].startswith("call_")
    arguments = _check_weather(call["args"])

    result = weather_tool.invoke(call)  # a ToolCall in, a ToolMessage out: how agents run tools
    assert isinstance(result, ToolMessage)
    assert result.tool_call_id == call["id"]
    _ran_with(result.content, arguments)
    answering = _chat_openai(tools_server, ANSWER_TOKENS).bind_tools([weather_tool])
    answer = answering.invoke([HumanMessage(QUESTION), call_message, result])
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["finish_reason"] == "length"
    assert answer.tool_calls == []
    assert answer.invalid_tool_calls == []
    assert isinstance(answer.content, str)
    assert answer.usage_metadata is not None
    assert call_message.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == ANSWER_TOKENS
    # The call and its result were rendered into the prompt.
    assert answer.usage_metadata["input_tokens"] > call_message.usage_metadata["input_tokens"]


def test_langchain_openai_streams_tool_call_chunks(
    tools_server: RunningServer, weather_tool: BaseTool
) -> None:
    bound = _chat_openai(tools_server).bind_tools([weather_tool], tool_choice="get_weather")
    whole = bound.invoke(QUESTION)
    assert isinstance(whole, AIMessage)
    streamed = _accumulated(bound.stream(QUESTION))
    assert streamed.response_metadata["finish_reason"] == "tool_calls"
    assert streamed.content == ""
    assert len(streamed.tool_call_chunks) == 1
    chunk = streamed.tool_call_chunks[0]
    assert chunk["index"] == 0
    assert chunk["name"] == "get_weather"
    assert chunk["id"] is not None
    assert chunk["id"].startswith("call_")
    assert streamed.invalid_tool_calls == []
    assert _calls(streamed) == _calls(whole)
    _check_weather(streamed.tool_calls[0]["args"])


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [
        ("get_weather", {"get_weather"}),
        ("required", {"get_weather", "get_time"}),
        ("any", {"get_weather", "get_time"}),  # LangChain's word for required
    ],
)
def test_langchain_tool_choice_forces_a_call(
    tools_server: RunningServer,
    weather_tool: BaseTool,
    time_tool: BaseTool,
    tool_choice: str,
    names: set[str],
) -> None:
    model = _chat_openai(tools_server)
    unforced = model.bind_tools([weather_tool, time_tool]).invoke(QUESTION, max_tokens=6)
    assert isinstance(unforced, AIMessage)
    assert unforced.tool_calls == []
    assert unforced.response_metadata["finish_reason"] == "length"

    forced = model.bind_tools([weather_tool, time_tool], tool_choice=tool_choice).invoke(QUESTION)
    assert isinstance(forced, AIMessage)
    assert forced.response_metadata["finish_reason"] == "tool_calls"
    assert forced.tool_calls
    assert forced.invalid_tool_calls == []
    for call in forced.tool_calls:
        assert call["name"] in names
        ran = (weather_tool if call["name"] == "get_weather" else time_tool).invoke(call)
        assert isinstance(ran, ToolMessage)
        assert json.loads(str(ran.content))  # the tool accepted the parsed arguments


def test_langchain_ollama_tool_call_and_round_trip(
    tools_server: RunningServer, weather_tool: BaseTool
) -> None:
    call_message = (
        _chat_ollama(tools_server, MAX_TOKENS, force=True).bind_tools([weather_tool]).invoke(QUESTION)
    )
    assert isinstance(call_message, AIMessage)
    assert call_message.response_metadata["done_reason"] == "stop"
    assert call_message.content == ""
    assert call_message.invalid_tool_calls == []
    assert len(call_message.tool_calls) == 1
    call = call_message.tool_calls[0]
    assert call["name"] == "get_weather"
    assert call["id"]  # Ollama's API has no call ids: LangChain makes one
    arguments = _check_weather(call["args"])

    result = weather_tool.invoke(call)
    assert isinstance(result, ToolMessage)
    _ran_with(result.content, arguments)
    answering = _chat_ollama(tools_server, ANSWER_TOKENS, force=False).bind_tools([weather_tool])
    answer = answering.invoke([HumanMessage(QUESTION), call_message, result])
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata["done_reason"] == "length"
    assert answer.tool_calls == []
    assert isinstance(answer.content, str)
    assert answer.usage_metadata is not None
    assert call_message.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == ANSWER_TOKENS
    assert answer.usage_metadata["input_tokens"] > call_message.usage_metadata["input_tokens"]


def test_langchain_ollama_streams_the_tool_call(tools_server: RunningServer, weather_tool: BaseTool) -> None:
    bound = _chat_ollama(tools_server, MAX_TOKENS, force=True).bind_tools([weather_tool])
    whole = bound.invoke(QUESTION)
    assert isinstance(whole, AIMessage)
    streamed = _accumulated(bound.stream(QUESTION))
    assert streamed.response_metadata["done_reason"] == "stop"
    assert streamed.content == ""
    assert len(streamed.tool_call_chunks) == 1
    assert streamed.invalid_tool_calls == []
    assert _calls(streamed) == _calls(whole)
    _check_weather(streamed.tool_calls[0]["args"])


# LiteLLM


def _litellm_target(server: RunningServer, dialect: str, *, force: bool) -> dict[str, Any]:
    """completion() arguments for one of LiteLLM's two ways to this server."""
    if dialect == "openai":
        target: dict[str, Any] = {
            "model": f"openai/{MODEL}",
            "api_base": server.url + "/v1",
            "api_key": "unused",
            "max_retries": 0,
        }
        if force:
            target["tool_choice"] = {"type": "function", "function": {"name": "get_weather"}}
        return target
    # LiteLLM drops tool_choice on ollama_chat (Ollama has none): forcing goes through its HTTP client.
    handler = importlib.import_module("litellm.llms.custom_httpx.http_handler").HTTPHandler
    transport = ForceToolChoice() if force else httpx.HTTPTransport()
    return {
        "model": f"ollama_chat/{MODEL}",
        "api_base": server.url,
        "client": handler(client=httpx.Client(transport=transport, timeout=120)),
    }


def _litellm_weather_call(response: Any) -> tuple[Any, dict[str, Any]]:
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id
    assert calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, str)  # OpenAI's shape, from both dialects
    return calls[0], _check_weather(json.loads(calls[0].function.arguments))


@pytest.mark.parametrize("dialect", ["openai", "ollama_chat"])
def test_litellm_tool_calls_stream_and_round_trip(
    tools_server: RunningServer, litellm: ModuleType, dialect: str
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]

    def complete(**kwargs: Any) -> Any:
        target = _litellm_target(tools_server, dialect, force=kwargs.pop("force"))
        return litellm.completion(messages=messages, tools=[WEATHER_TOOL], timeout=120, **target, **kwargs)

    call, arguments = _litellm_weather_call(complete(force=True, max_tokens=MAX_TOKENS))

    chunks = list(complete(force=True, max_tokens=MAX_TOKENS, stream=True))
    streamed_call, streamed_arguments = _litellm_weather_call(litellm.stream_chunk_builder(chunks))
    assert streamed_arguments == arguments
    if dialect == "openai":  # this server's ids (LiteLLM makes up its own for Ollama's id-less calls)
        assert call.id.startswith("call_")
        assert streamed_call.id.startswith("call_")
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [d.index for d in deltas] == [0]

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": get_weather(**arguments)},
    ]
    answer = complete(force=False, max_tokens=ANSWER_TOKENS)
    choice = answer.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.tool_calls
    assert isinstance(choice.message.content, str)
    assert answer.usage.completion_tokens == ANSWER_TOKENS


# LlamaIndex


@pytest.fixture(scope="module")
def weather_function() -> FunctionTool:
    return FunctionTool.from_defaults(fn=get_weather)


def _llamaindex_call(selections: list[ToolSelection], weather_function: FunctionTool) -> ToolSelection:
    assert len(selections) == 1
    selection = selections[0]
    assert selection.tool_name == "get_weather"
    _ran_with(weather_function.call(**_check_weather(selection.tool_kwargs)).content, selection.tool_kwargs)
    return selection


def _last(responses: Iterator[ChatResponse]) -> ChatResponse:
    last: ChatResponse | None = None
    for last in responses:  # noqa: B007  # each response holds everything so far
        pass
    assert last is not None
    return last


def test_llamaindex_over_openai_api_calls_a_function_tool(
    tools_server: RunningServer, litellm: ModuleType, weather_function: FunctionTool
) -> None:
    llm = importlib.import_module("llama_index.llms.litellm").LiteLLM(
        model=f"openai/{MODEL}",
        api_base=tools_server.url + "/v1",
        api_key="unused",
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    response = llm.chat_with_tools([weather_function], user_msg=QUESTION, tool_required=True)
    selection = _llamaindex_call(llm.get_tool_calls_from_response(response), weather_function)
    assert selection.tool_id.startswith("call_")
    streamed = _last(llm.stream_chat_with_tools([weather_function], user_msg=QUESTION, tool_required=True))
    again = _llamaindex_call(llm.get_tool_calls_from_response(streamed), weather_function)
    assert again.tool_kwargs == selection.tool_kwargs


def test_llamaindex_over_ollama_api_calls_a_function_tool(
    tools_server: RunningServer, weather_function: FunctionTool
) -> None:
    llm = Ollama(
        model=MODEL,
        base_url=tools_server.url,
        temperature=0,
        client=ollama.Client(host=tools_server.url, transport=ForceToolChoice(), timeout=120),
        additional_kwargs={"num_predict": MAX_TOKENS},
    )
    assert llm.metadata.context_window == 2048  # read from /api/show
    response = llm.chat_with_tools([weather_function], user_msg=QUESTION)
    selection = _llamaindex_call(llm.get_tool_calls_from_response(response), weather_function)
    streamed = _last(llm.stream_chat_with_tools([weather_function], user_msg=QUESTION))
    again = _llamaindex_call(llm.get_tool_calls_from_response(streamed), weather_function)
    assert again.tool_kwargs == selection.tool_kwargs
