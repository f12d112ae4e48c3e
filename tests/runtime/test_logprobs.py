"""Log probabilities through every API (real `openai` and `ollama` clients), both backends, quantized models.

The tiny GGUF's vocabulary is single bytes, so most tokens are part of a UTF-8 character: the `bytes`
of the entries must join to exactly the output, and each token's text must say what its bytes are.
The tiny ONNX model's logits depend only on the previous token (embedding → output matrix), so its
log probabilities can be computed here from the weights and compared exactly.
Past 400 lines: one feature checked through four APIs, two backends, quantized models and its pure parts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import onnx
import openai
import pytest
from onnx import numpy_helper
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.completion_choice import Logprobs as CompletionLogprobs
from openai.types.responses import ResponseIncludable

from slm_runtime.backends.base import PositionLogprobs, TokenLogprob
from slm_runtime.backends.logprobs import LogprobQueue, log_softmax, token_text, top_token_ids
from slm_runtime.backends.onnx_backend import token_bytes_table
from slm_runtime.testing.tiny_models import write_tiny_gguf
from tests.runtime.conftest import RunningServer, start_server

pytestmark = pytest.mark.runtime

MODEL = "tiny:latest"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
ENTRY_KEYS = {"token", "logprob", "bytes", "top_logprobs"}
ALTERNATIVE_KEYS = {"token", "logprob", "bytes"}


def _check_token(token: dict[str, Any]) -> None:
    raw = token.get("bytes") or []  # Ollama leaves out empty bytes
    assert token["logprob"] <= 0
    assert all(0 <= b <= 255 for b in raw)
    try:
        assert token["token"] == bytes(raw).decode("utf-8")
    except UnicodeDecodeError:  # part of a character: the text spells out the bytes
        assert token["token"] == "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _check_entries(entries: Sequence[Any], top: int, *, greedy: bool = True) -> list[dict[str, Any]]:
    """Each position: valid numbers, bytes that match the text, `top` alternatives most likely first.
    Takes client objects or JSON; gives the JSON."""
    shaped = [e.model_dump() if hasattr(e, "model_dump") else e for e in entries]
    for entry in shaped:
        _check_token(entry)
        alternatives = entry.get("top_logprobs") or []  # Ollama leaves out an empty list
        assert len(alternatives) == top
        for alternative in alternatives:
            _check_token(alternative)
        values = [a["logprob"] for a in alternatives]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-9
        if alternatives:
            assert entry["logprob"] <= values[0] + 1e-9
        if alternatives and greedy:  # temperature 0, no penalties: the chosen token is the most likely
            assert entry["logprob"] == values[0]
            assert (entry["token"], entry.get("bytes")) == (
                alternatives[0]["token"],
                alternatives[0].get("bytes"),
            )
    return shaped


def _assert_same(entries: Sequence[dict[str, Any]], others: Sequence[dict[str, Any]]) -> None:
    """The same tokens and alternatives; the numbers up to float noise (a prompt read again from the
    prefix cache is computed in other batches)."""

    def tokens(entry: dict[str, Any]) -> list[tuple[str, Any]]:
        alternatives = entry.get("top_logprobs") or []
        return [(t["token"], t.get("bytes")) for t in [entry, *alternatives]]

    def values(entry: dict[str, Any]) -> list[float]:
        return [t["logprob"] for t in [entry, *(entry.get("top_logprobs") or [])]]

    assert [tokens(e) for e in entries] == [tokens(e) for e in others]
    assert [values(e) for e in entries] == [pytest.approx(values(e), abs=1e-3) for e in others]


def _joined(entries: Sequence[dict[str, Any]]) -> str:
    return b"".join(bytes(e.get("bytes") or []) for e in entries).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def client(gguf_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gguf_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _post(server: RunningServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(server.url + path, json=body, timeout=120)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _ndjson(server: RunningServer, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line]


# -- OpenAI chat completions -----------------------------------------------------------------------


def test_chat_logprobs(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, logprobs=True, top_logprobs=5
    )
    choice = result.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.refusal is None
    assert choice.logprobs.content is not None
    content = _check_entries(choice.logprobs.content, 5)
    assert result.usage is not None
    assert len(content) == result.usage.completion_tokens == 12
    assert _joined(content) == choice.message.content


def test_chat_logprobs_exact_shape(gguf_server: RunningServer) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    choice = _post(gguf_server, "/v1/chat/completions", body)["choices"][0]
    assert set(choice["logprobs"]) == {"content", "refusal"}
    assert choice["logprobs"]["refusal"] is None
    assert len(choice["logprobs"]["content"]) == 3
    for entry in choice["logprobs"]["content"]:
        assert set(entry) == ENTRY_KEYS
        assert isinstance(entry["bytes"], list)
        assert [set(alt) for alt in entry["top_logprobs"]] == [ALTERNATIVE_KEYS] * 2


def test_chat_logprobs_without_alternatives_and_off_by_default(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, logprobs=True)
    assert result.choices[0].logprobs is not None
    content = _check_entries(result.choices[0].logprobs.content or [], 0)
    assert len(content) == 4
    assert all(entry["top_logprobs"] == [] for entry in content)
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == result.choices[0].message.content


def test_chat_stream_logprobs(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, logprobs=True, top_logprobs=3
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=12,
            logprobs=True,
            top_logprobs=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    choices = [c.choices[0] for c in chunks if c.choices]
    assert choices[0].delta.role == "assistant"
    assert choices[0].logprobs is None
    assert choices[-1].finish_reason == "length"
    assert choices[-1].logprobs is None  # nothing was left over for the finish chunk
    streamed: list[Any] = []
    for choice in choices[1:-1]:  # each content chunk carries the entries of its text's tokens
        assert choice.delta.content
        assert choice.logprobs is not None
        assert choice.logprobs.content
        streamed += choice.logprobs.content
    entries = _check_entries(streamed, 3)
    assert chunks[-1].usage is not None
    assert len(entries) == chunks[-1].usage.completion_tokens == 12
    assert _joined(entries) == "".join(c.delta.content or "" for c in choices)
    assert whole.choices[0].logprobs is not None
    reference = _check_entries(whole.choices[0].logprobs.content or [], 3)
    _assert_same(entries, reference)


def test_concurrent_requests_with_and_without_logprobs(client: openai.OpenAI) -> None:
    def run(logprobs: bool) -> ChatCompletion:
        if logprobs:
            return client.chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens=10, logprobs=True, top_logprobs=2
            )
        return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)

    with ThreadPoolExecutor(2) as pool:
        with_logprobs, without = list(pool.map(run, [True, False]))
    assert without.choices[0].logprobs is None
    assert with_logprobs.choices[0].logprobs is not None
    content = _check_entries(with_logprobs.choices[0].logprobs.content or [], 2)
    assert len(content) == 10
    text = with_logprobs.choices[0].message.content
    assert _joined(content) == text == without.choices[0].message.content


def test_logprobs_are_the_models_distribution_before_sampling(gguf_server: RunningServer) -> None:
    """Temperature, truncation and penalties change the pick, never the reported numbers."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": HELLO,
        "stream": False,
        "logprobs": True,
        "top_logprobs": 20,
    }
    greedy = _post(gguf_server, "/api/chat", {**body, "options": {"num_predict": 1}})["logprobs"]
    options = {"num_predict": 1, "temperature": 1.5, "top_k": 5, "repeat_penalty": 1.5, "seed": 3}
    sampled = _post(gguf_server, "/api/chat", {**body, "options": options})["logprobs"]
    (first,) = _check_entries(greedy, 20)
    (other,) = _check_entries(sampled, 20, greedy=False)
    _assert_same(other["top_logprobs"], first["top_logprobs"])
    # top_k 5 picked among the five most likely: its logprob is the unsampled one at its rank.
    by_token = {t["token"]: t["logprob"] for t in first["top_logprobs"][:5]}
    assert other["logprob"] == pytest.approx(by_token[other["token"]], abs=1e-3)


# -- OpenAI legacy completions ---------------------------------------------------------------------


def _check_legacy(logprobs: CompletionLogprobs, top: int, prompt: str) -> None:
    tokens, values = logprobs.tokens or [], logprobs.token_logprobs or []
    tops, offsets = logprobs.top_logprobs or [], logprobs.text_offset or []
    assert len(tokens) == len(values) == len(tops) == len(offsets)
    assert offsets[0] == len(prompt)  # offsets count from the prompt's start
    assert offsets == sorted(offsets)
    for token, value, alternatives in zip(tokens, values, tops, strict=True):
        assert value <= 0
        assert alternatives[token] == value  # the chosen token is always there
        assert top <= len(alternatives) <= top + 1
        assert max(alternatives.values()) == value  # greedy


def test_completions_logprobs(client: openai.OpenAI) -> None:
    prompt = "Once upon"
    result = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, logprobs=3)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None
    assert result.usage is not None
    assert len(logprobs.tokens or []) == result.usage.completion_tokens == 8
    _check_legacy(logprobs, 3, prompt)

    chunks = list(
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, logprobs=3, stream=True)
    )
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in chunks[:-1]:
        part = chunk.choices[0].logprobs
        assert part is not None
        tokens += part.tokens or []
        offsets += part.text_offset or []
    assert chunks[-1].choices[0].logprobs is None
    assert tokens == logprobs.tokens
    assert offsets == logprobs.text_offset  # offsets go on from chunk to chunk


def test_completions_logprobs_zero_gives_the_chosen_token_only(gguf_server: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "logprobs": 0}
    logprobs = _post(gguf_server, "/v1/completions", body)["choices"][0]["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert [list(top) for top in logprobs["top_logprobs"]] == [[t] for t in logprobs["tokens"]]


# -- Ollama ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
def test_ollama_logprobs(gguf_server: RunningServer, route: str) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": HELLO,
        "prompt": "hello",
        "stream": False,
        "options": {"num_predict": 10},
        "logprobs": True,
        "top_logprobs": 4,
    }

    def text(part: dict[str, Any]) -> str:
        return str(part["message"]["content"] if route == "/api/chat" else part["response"])

    whole = _post(gguf_server, route, body)
    entries = _check_entries(whole["logprobs"], 4)
    assert len(entries) == whole["eval_count"] == 10
    assert _joined(entries) == text(whole)

    parts = _ndjson(gguf_server, route, {**body, "stream": True})
    assert parts[-1]["done"] is True
    for part in parts[:-1]:  # each chunk carries the entries of its text's tokens
        assert text(part)
        assert part["logprobs"]
    _assert_same([e for part in parts for e in part.get("logprobs", [])], entries)


def test_ollama_leaves_out_empty_fields(gguf_server: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "hello", "stream": False, "options": {"num_predict": 2}}
    assert "logprobs" not in _post(gguf_server, "/api/generate", body)
    asked = _post(gguf_server, "/api/generate", {**body, "logprobs": True})
    # No alternatives asked: no top_logprobs (the byte tokens' bytes are never empty).
    assert [set(entry) for entry in asked["logprobs"]] == [{"token", "logprob", "bytes"}] * 2


def test_ollama_client_reads_them(gguf_server: RunningServer) -> None:
    client = ollama.Client(host=gguf_server.url, timeout=120)
    result = client.chat(
        model=MODEL, messages=HELLO, options={"num_predict": 5}, logprobs=True, top_logprobs=2
    )
    assert result.logprobs is not None
    assert len(result.logprobs) == result.eval_count == 5
    for entry in result.logprobs:
        assert entry.logprob <= 0
        assert entry.top_logprobs is not None
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == entry.logprob
    parts = list(
        client.generate(
            model=MODEL, prompt="hi", options={"num_predict": 5}, logprobs=True, top_logprobs=1, stream=True
        )
    )
    assert sum(len(part.logprobs or []) for part in parts) == 5


def test_stop_string_drops_the_cut_tokens(gguf_server: RunningServer) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": "stopper",
        "stream": False,
        "logprobs": True,
        "options": {"num_predict": 24},
    }
    full = _post(gguf_server, "/api/generate", body)
    text = full["response"]
    printable = [
        i for i in range(2, len(text) - 2) if text[i : i + 2].isprintable() and text[i : i + 2].strip()
    ]
    assert printable, f"no printable pair to stop on in {text!r}"
    stop = text[printable[0] : printable[0] + 2]
    stopped = {**body, "options": {"num_predict": 24, "stop": [stop]}}
    cut = _post(gguf_server, "/api/generate", stopped)
    assert cut["response"] == text[: text.index(stop)]
    # The tokens of the text before the stop string, and none of the stop string's own.
    kept = cut["logprobs"]
    _assert_same(kept, full["logprobs"][: len(kept)])
    assert _joined(kept) == cut["response"]
    streamed = _ndjson(gguf_server, "/api/generate", {**stopped, "stream": True})
    _assert_same([e for part in streamed for e in part.get("logprobs", [])], kept)


# -- Responses API ---------------------------------------------------------------------------------


def test_responses_logprobs(client: openai.OpenAI) -> None:
    include: list[ResponseIncludable] = ["message.output_text.logprobs"]
    result = client.responses.create(
        model=MODEL, input="hello", max_output_tokens=8, include=include, top_logprobs=2
    )
    assert result.top_logprobs == 2
    item = result.output[0]
    assert item.type == "message"
    part = item.content[0]
    assert part.type == "output_text"
    entries = _check_entries(part.logprobs or [], 2)
    assert result.usage is not None
    assert len(entries) == result.usage.output_tokens == 8
    assert _joined(entries) == part.text

    events = list(
        client.responses.create(
            model=MODEL, input="hello", max_output_tokens=8, include=include, top_logprobs=2, stream=True
        )
    )
    # The events' entries have no bytes (this API's event shape); their tokens and numbers match.
    streamed = [
        e.model_dump()
        for event in events
        if event.type == "response.output_text.delta"
        for e in event.logprobs
    ]
    assert [(e["token"], len(e["top_logprobs"])) for e in streamed] == [(e["token"], 2) for e in entries]
    done = next(event for event in events if event.type == "response.output_text.done")
    assert [e.token for e in done.logprobs] == [e["token"] for e in entries]
    completed = next(event for event in events if event.type == "response.incomplete")  # the token limit
    message = completed.response.output[0]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert [e.token for e in message.content[0].logprobs or []] == [e["token"] for e in entries]


def test_responses_without_logprobs_have_empty_lists(client: openai.OpenAI) -> None:
    result = client.responses.create(model=MODEL, input="hello", max_output_tokens=3)
    item = result.output[0]
    assert item.type == "message"
    assert item.content[0].type == "output_text"
    assert item.content[0].logprobs == []
    assert result.top_logprobs == 0


# -- tool calls: every generated token is reported once --------------------------------------------


def test_forced_tool_call_reports_every_token(tools_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=tools_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    tools: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ]
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Time?"}]
    whole = client.chat.completions.create(
        model="tiny-tools:latest",
        messages=question,
        tools=tools,
        tool_choice="required",
        max_tokens=200,
        logprobs=True,
    )
    assert whole.choices[0].message.tool_calls
    assert whole.choices[0].logprobs is not None
    content = _check_entries(whole.choices[0].logprobs.content or [], 0, greedy=False)
    assert whole.usage is not None
    assert len(content) == whole.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model="tiny-tools:latest",
            messages=question,
            tools=tools,
            tool_choice="required",
            max_tokens=200,
            logprobs=True,
            stream=True,
        )
    )
    streamed = [
        e.token
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert streamed == [e["token"] for e in content]


# -- quantized models --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["q8_0", "q4_0"])
def quantized_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    path = write_tiny_gguf(tmp_path_factory.mktemp("quantized-lp") / "tiny.gguf", quantize=request.param)
    server = start_server(
        model=path,
        model_name="tiny-quantized:latest",
        context_length=512,
        parallel_requests=1,
        max_queue=4,
        threads=2,
        default_parameters='{"temperature": 0}',
    )
    yield server
    server.stop()


def test_quantized_model_logprobs(quantized_server: RunningServer) -> None:
    client = openai.OpenAI(
        base_url=quantized_server.url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    result = client.chat.completions.create(
        model="tiny-quantized:latest", messages=HELLO, max_tokens=8, logprobs=True, top_logprobs=5
    )
    assert result.choices[0].logprobs is not None
    content = _check_entries(result.choices[0].logprobs.content or [], 5)
    assert len(content) == 8
    assert _joined(content) == result.choices[0].message.content


# -- ONNX: the numbers checked against the weights ---------------------------------------------------


@pytest.fixture(scope="module")
def onnx_server(tiny_onnx: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_onnx, model_name="tiny-onnx", context_length=256, default_parameters='{"temperature": 0}'
    )
    yield server
    server.stop()


def test_onnx_logprobs_are_the_models(onnx_server: RunningServer, tiny_onnx: Path) -> None:
    graph = onnx.load(str(tiny_onnx / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    logits = weights["embed"] @ weights["lm_head"]  # row t: the logits after token t
    # Sampled hot and with penalties: what is reported is still the raw distribution.
    body: dict[str, Any] = {
        "model": "tiny-onnx",
        "prompt": "hello",
        "raw": True,
        "stream": False,
        "options": {"num_predict": 6, "temperature": 1.3, "repeat_penalty": 1.4, "seed": 5},
        "logprobs": True,
        "top_logprobs": 3,
    }
    result = _post(onnx_server, "/api/generate", body)
    entries = _check_entries(result["logprobs"], 3, greedy=False)
    assert len(entries) == result["eval_count"]
    previous = ord("o")  # the byte-level vocabulary's ids are the bytes
    for entry in entries:
        (token,) = entry["bytes"]
        expected = log_softmax(logits[previous])
        assert entry["logprob"] == pytest.approx(expected[token], abs=1e-4)
        best = top_token_ids(expected, 3)
        assert [alt["bytes"] for alt in entry["top_logprobs"]] == [[b] for b in best]
        previous = token
    # (The text is onnxruntime-genai's decoding, which drops bytes that are not UTF-8: not compared.)


def test_onnx_chat_stream_logprobs(onnx_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=onnx_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    chunks = list(
        client.chat.completions.create(
            model="tiny-onnx",
            messages=HELLO,
            max_tokens=5,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = [
        e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []
    ]
    entries = _check_entries(streamed, 2)
    assert chunks[-1].usage is not None
    assert len(entries) == chunks[-1].usage.completion_tokens


# -- refusals name the field -----------------------------------------------------------------------


def _chat(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 2, **extra}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", _chat(logprobs="yes"), "logprobs"),
        ("/v1/chat/completions", _chat(logprobs=True, top_logprobs=21), "top_logprobs"),
        ("/v1/chat/completions", _chat(logprobs=True, top_logprobs=-1), "top_logprobs"),
        ("/v1/chat/completions", _chat(top_logprobs=3), "top_logprobs"),
        ("/v1/chat/completions", _chat(logprobs=False, top_logprobs=3), "top_logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": -1}, "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": True}, "logprobs"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 2, "echo": True}, "echo"),
        (
            "/v1/responses",
            {"model": MODEL, "input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 21},
            "top_logprobs",
        ),
        ("/v1/responses", {"model": MODEL, "input": "x", "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_bad_logprob_fields_are_refused_by_name(
    gguf_server: RunningServer, path: str, body: dict[str, object], param: str
) -> None:
    response = httpx.post(gguf_server.url + path, json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
        ({"top_logprobs": 3}, "top_logprobs needs logprobs: true"),
    ],
)
def test_bad_ollama_logprob_fields(
    gguf_server: RunningServer, route: str, fields: dict[str, Any], message: str
) -> None:
    body = {"model": MODEL, "messages": HELLO, "prompt": "x", "stream": False, **fields}
    response = httpx.post(gguf_server.url + route, json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_openai_client_sees_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True, top_logprobs=21)
    assert caught.value.param == "top_logprobs"


# -- the pure parts --------------------------------------------------------------------------------


def _entry(token: str) -> PositionLogprobs:
    return PositionLogprobs(TokenLogprob(token, -1.0, tuple(token.encode())))


def test_queue_waits_for_held_text_and_drops_what_a_stop_cut() -> None:
    queue = LogprobQueue()
    queue.add(_entry("a"), 1)
    assert queue.release(1) == [_entry("a")]
    queue.add(_entry("</"), 2)  # held back: it may start the stop string
    assert queue.release(0) == []
    queue.add(_entry("x"), 1)  # not the stop string after all: both come out
    assert queue.release(3) == [_entry("</"), _entry("x")]
    queue.add(_entry("b<"), 2)
    assert queue.release(1) == []  # "b" out, "<" held: the token waits for all of its text
    queue.add(_entry("/s"), 2)
    # The stop string "</s" cut the text after "b": the token that began before the cut is kept.
    assert queue.release(0, stopped=True) == [_entry("b<")]
    assert queue.flush() == []


def test_queue_gives_a_partial_character_with_the_character() -> None:
    queue = LogprobQueue()
    first, last = _entry("bytes:\\xc3"), _entry("bytes:\\xa9")  # "é" in two tokens
    queue.add(first, 0)  # the first byte of a character decodes to nothing yet
    assert queue.release(0) == []
    queue.add(last, 1)
    assert queue.release(1) == [first, last]
    queue.add(first, 0)
    assert queue.flush() == [first]  # at the end, whatever waits goes


def test_token_text_spells_out_partial_characters() -> None:
    assert token_text("é".encode()) == "é"
    assert token_text(b"\xc3") == "bytes:\\xc3"
    assert token_text(b"") == ""


def test_top_ids_break_ties_by_lower_id_like_greedy() -> None:
    values = log_softmax(np.array([1.0, 3.0, 3.0, 2.0, 3.0]))
    assert top_token_ids(values, 2) == [1, 2]
    assert top_token_ids(values, 4) == [1, 2, 4, 3]
    assert top_token_ids(values, 9) == [1, 2, 4, 3, 0]
    assert math.isclose(float(np.exp(values).sum()), 1.0)


def test_token_bytes_from_tokenizer_json(tiny_onnx: Path) -> None:
    byte_level = token_bytes_table(json.loads((tiny_onnx / "tokenizer.json").read_text()))
    assert all(byte_level[b] == bytes([b]) for b in range(256))
    assert byte_level[256] == b"<|endoftext|>"
    sentencepiece = {
        "model": {"type": "BPE", "vocab": {"<0xE4>": 0, "\u2581hello": 1, "wor": 2}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"}]},
        "added_tokens": [{"id": 3, "content": "</s>"}],
    }
    assert token_bytes_table(sentencepiece) == {0: b"\xe4", 1: b" hello", 2: b"wor", 3: b"</s>"}
