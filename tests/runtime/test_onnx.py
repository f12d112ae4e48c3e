"""ONNX models: onnxruntime-genai generation and plain onnxruntime embeddings, EP fallback reporting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from slm_runtime.backends.onnx_backend import choose_provider
from slm_runtime.settings import ServeSettings
from tests.runtime.conftest import RunningServer, start_server

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def onnx_server(tiny_onnx: Path) -> Iterator[RunningServer]:
    # Asks for CUDA on a CPU-only onnxruntime: the server must fall back and say so.
    server = start_server(
        model=tiny_onnx,
        model_name="tiny-onnx",
        device="gpu",
        execution_provider="cuda",
        parallel_requests=2,
        context_length=256,
        default_parameters='{"temperature": 0}',
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def onnx_embedding_server(tiny_onnx_embedding: Path) -> Iterator[RunningServer]:
    server = start_server(model=tiny_onnx_embedding, model_name="tiny-embed", context_length=256)
    yield server
    server.stop()


def test_onnx_generate_and_chat(onnx_server: RunningServer) -> None:
    client = ollama.Client(host=onnx_server.url)
    result = client.generate(model="tiny-onnx", prompt="hello", options={"num_predict": 5})
    assert result.done is True
    assert result.eval_count is not None
    assert 1 <= result.eval_count <= 5
    assert result.prompt_eval_count is not None
    assert result.prompt_eval_count > len("hello")  # the chat template adds its own tokens
    parts = list(
        client.chat(
            model="tiny-onnx",
            messages=[{"role": "user", "content": "hi"}],
            options={"num_predict": 5},
            stream=True,
        )
    )
    assert parts[-1].done is True


def test_onnx_openai_stream(onnx_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=onnx_server.url + "/v1", api_key="x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny-onnx",
            messages=[{"role": "user", "content": "hey"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 4


def test_onnx_ep_fallback_is_reported(onnx_server: RunningServer) -> None:
    body = httpx.get(onnx_server.url + "/readyz").json()
    assert body["backend"] == "onnxruntime-genai"
    assert body["execution_provider"] == "CPUExecutionProvider"
    assert body["device"] == "cpu"
    assert any("CUDAExecutionProvider" in w for w in body["warnings"])
    assert (
        onnx_server.metric(
            "slm_execution_provider_fallback",
            backend="onnxruntime-genai",
            execution_provider="CPUExecutionProvider",
        )
        == 1
    )


def test_onnx_embedding_model(onnx_embedding_server: RunningServer) -> None:
    client = ollama.Client(host=onnx_embedding_server.url)
    result = client.embed(model="tiny-embed", input=["abc", "xyz"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == 64
    assert sum(x * x for x in result.embeddings[0]) == pytest.approx(1.0, abs=1e-4)
    shown = client.show("tiny-embed")
    assert shown.capabilities == ["embedding"]
    refused = httpx.post(
        onnx_embedding_server.url + "/api/generate", json={"model": "tiny-embed", "prompt": "x"}
    )
    assert refused.status_code == 400
    assert "embeddings" in refused.json()["error"]


def _settings(tmp_path: Path, **values: str) -> ServeSettings:
    return ServeSettings(model=tmp_path, format="onnx", **values)  # type: ignore[arg-type]


def test_choose_provider(tmp_path: Path) -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_provider(_settings(tmp_path, device="gpu"), available) == ("cuda", None)
    assert choose_provider(_settings(tmp_path, execution_provider="cuda"), available) == ("cuda", None)
    key, warning = choose_provider(_settings(tmp_path, device="npu"), available)
    assert key == "cpu"
    assert warning is not None
    assert "OpenVINOExecutionProvider" in warning
    assert choose_provider(_settings(tmp_path), ["CPUExecutionProvider"]) == ("cpu", None)
    key, warning = choose_provider(_settings(tmp_path, execution_provider="qnn"), ["CPUExecutionProvider"])
    assert (key, "QNNExecutionProvider" in (warning or "")) == ("cpu", True)


async def test_onnx_concurrent_streams_all_complete(onnx_server: RunningServer) -> None:
    client = ollama.AsyncClient(host=onnx_server.url)

    async def one(i: int) -> int:
        final = None
        async for part in await client.generate(
            model="tiny-onnx", prompt=f"request {i}", options={"num_predict": 6}, stream=True
        ):
            final = part
        assert final is not None
        assert final.done is True
        return final.eval_count or 0

    counts = await asyncio.gather(*(one(i) for i in range(3)))
    assert all(1 <= count <= 6 for count in counts)


def test_fetched_onnx_folders_load(tiny_onnx: Path, tiny_onnx_embedding: Path, tmp_path: Path) -> None:
    """What `fetch` leaves in the cache (plus its record and lock files) is what `serve` loads."""
    from slm_runtime.backends.onnx_backend import OnnxBackend
    from slm_runtime.fetch import fetch
    from slm_runtime.settings import FetchSettings

    generative = tmp_path / "generative"
    fetch(FetchSettings(source=tiny_onnx.as_uri(), dest=generative))
    assert OnnxBackend(ServeSettings(model=generative)).details.backend == "onnxruntime-genai"

    # An embedding source names its .onnx file; the tokenizer beside it comes along.
    renamed = tmp_path / "hub" / "model_quantized.onnx"
    renamed.parent.mkdir()
    renamed.write_bytes((tiny_onnx_embedding / "model.onnx").read_bytes())
    (renamed.parent / "tokenizer.json").write_bytes((tiny_onnx_embedding / "tokenizer.json").read_bytes())
    embedding = tmp_path / "embedding"
    fetch(FetchSettings(source=renamed.as_uri(), dest=embedding))
    backend = OnnxBackend(ServeSettings(model=embedding))
    vectors, tokens = backend.embed(["hello"], truncate=True)
    assert len(vectors[0]) == 64
    assert tokens == 5
