"""The OpenAI API through the real `openai` client against a served tiny GGUF."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "tiny:latest"


@pytest.fixture(scope="module")
def client(gguf_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gguf_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=7
    )
    choice = result.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 7
    assert result.usage.total_tokens == result.usage.prompt_tokens + 7


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "stream me"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens == 9
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]


def test_sse_wire_format_ends_with_done(gguf_server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        gguf_server.url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 3,
            "stream": True,
        },
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    first = json.loads(lines[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"
    assert "usage" not in first  # only with stream_options.include_usage


def test_completions_and_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Once", max_tokens=6)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 6
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="Once", max_tokens=6, stream=True)
    )
    assert streamed == whole.choices[0].text


def test_stop_and_seed(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="abc", max_tokens=20).choices[0].text
    candidates = [i for i in range(2, len(full) - 1) if full[i].isprintable() and full[i].strip()]
    assert candidates
    stop = full[candidates[0]]
    cut = client.completions.create(model=MODEL, prompt="abc", max_tokens=20, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    seeded = [
        client.completions.create(model=MODEL, prompt="abc", max_tokens=12, temperature=1.0, seed=7)
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_response_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "number"}],
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    parsed = json.loads(result.choices[0].message.content or "")
    assert isinstance(parsed["n"], int)


def test_embeddings(client: openai.OpenAI) -> None:
    # The client asks for base64 by default and decodes it.
    result = client.embeddings.create(model=MODEL, input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 256
    as_floats = client.embeddings.create(model=MODEL, input="alpha", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-5)
    assert result.usage.prompt_tokens > 0


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": 3}, "stop"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "xml"},
            },
            "response_format",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_errors_are_openai_shaped(gguf_server: RunningServer, body: dict[str, object], param: str) -> None:
    response = httpx.post(gguf_server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert param in (error["param"] or "") or param in error["message"]


def test_context_length_error_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="z" * 5000, max_tokens=1)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded"


def test_malformed_json_is_openai_400(gguf_server: RunningServer) -> None:
    response = httpx.post(
        gguf_server.url + "/v1/completions", content=b"[1,", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_prefix_cache_reuses_a_conversation(gguf_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=gguf_server.url + "/v1", api_key="unused", max_retries=0)
    hits_before = gguf_server.metric("slm_prefix_cache_hits_total")
    turn = [{"role": "user", "content": "a long first turn that the second request repeats"}]
    first = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=4)  # type: ignore[arg-type]
    follow_up = [*turn, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    second = client.chat.completions.create(model=MODEL, messages=follow_up, max_tokens=4)  # type: ignore[arg-type]
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.prompt_tokens_details is not None
    # Everything up to the end of the first user turn is reused: system prompt and the turn itself.
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= first.usage.prompt_tokens - 12
    assert cached < second.usage.prompt_tokens
    assert gguf_server.metric("slm_prefix_cache_hits_total") >= hits_before + cached


def _chat(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", _chat(stop=["s"] * 17), "stop"),
        ("/v1/chat/completions", _chat(stop="x" * 257), "stop"),
        (
            "/v1/chat/completions",
            _chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "big", "schema": {"type": "object", "description": "x" * 65536}},
                }
            ),
            "response_format",
        ),
        ("/v1/chat/completions", _chat(n=2), "n"),
        ("/v1/chat/completions", _chat(tool_choice="required"), "tool_choice"),
        (
            "/v1/chat/completions",
            _chat(tool_choice={"type": "function", "function": {"name": "f"}}),
            "tool_choice",
        ),
        ("/v1/chat/completions", _chat(logit_bias={"5": 10}), "logit_bias"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 3}, "n"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "best_of": 2}, "best_of"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "suffix": "tail"}, "suffix"),
    ],
)
def test_unsupported_fields_are_refused_by_name(
    gguf_server: RunningServer, path: str, body: dict[str, object], param: str
) -> None:
    response = httpx.post(gguf_server.url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert param in error["message"]


def test_harmless_fields_still_work(client: openai.OpenAI, gguf_server: RunningServer) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=2,
        n=1,
        logprobs=False,
        tool_choice="auto",
        user="someone",
        parallel_tool_calls=False,
        stop=["s"] * 16,
    )
    assert result.choices[0].finish_reason == "length"
    explicit_nulls = _chat(n=None, logprobs=None, top_logprobs=None, tool_choice=None, logit_bias=None)
    response = httpx.post(gguf_server.url + "/v1/chat/completions", json=explicit_nulls)
    assert response.status_code == 200, response.text
    text = client.completions.create(model=MODEL, prompt="x", max_tokens=2, n=1, best_of=1, logprobs=None)
    assert text.choices[0].finish_reason == "length"
