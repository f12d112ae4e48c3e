"""Parallel slots, the bounded queue (503 like Ollama), client disconnects, and metrics that move."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import ollama
import pytest

from slm_runtime.backends.base import DoneEvent, ErrorEvent, Event, GenerationJob, SamplingOptions, TokenEvent
from slm_runtime.backends.llama_cpp import LlamaCppBackend
from slm_runtime.scheduler import OLLAMA_QUEUE_FULL
from tests.runtime.conftest import RunningServer, start_server

pytestmark = pytest.mark.runtime

MODEL = "busy:latest"


@pytest.fixture(scope="module")
def busy_server(tiny_gguf: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_gguf,
        model_name=MODEL,
        context_length=2048,
        parallel_requests=2,
        max_queue=1,
        threads=2,
        default_parameters='{"temperature": 0}',
    )
    yield server
    server.stop()


async def _stream(url: str, prompt: str, num_predict: int) -> list[dict[str, object]]:
    async with (
        httpx.AsyncClient(timeout=120) as client,
        client.stream(
            "POST",
            url + "/api/generate",
            json={"model": MODEL, "prompt": prompt, "options": {"num_predict": num_predict}},
        ) as response,
    ):
        assert response.status_code == 200
        return [json.loads(line) async for line in response.aiter_lines() if line]


async def _wait_for(predicate: Callable[[], bool]) -> None:
    """Polls without blocking the event loop (the streams run on it); the suite timeout bounds it."""
    while not predicate():  # noqa: ASYNC110 - the state lives in the scheduler, not in an Event
        await asyncio.sleep(0.01)


async def test_parallel_streams_complete_and_overflow_gets_503(busy_server: RunningServer) -> None:
    scheduler = busy_server.runtime.scheduler
    num_predict = 600
    streams = [asyncio.create_task(_stream(busy_server.url, f"request {i}", num_predict)) for i in range(3)]
    await _wait_for(lambda: scheduler.running == 2 and scheduler.waiting == 1)
    assert busy_server.metric("slm_num_requests_running") == 2
    assert busy_server.metric("slm_num_requests_waiting") == 1
    async with httpx.AsyncClient() as client:
        overflow = await client.post(
            busy_server.url + "/api/generate", json={"model": MODEL, "prompt": "one too many"}
        )
        assert overflow.status_code == 503
        assert overflow.json() == {"error": OLLAMA_QUEUE_FULL}
        openai_overflow = await client.post(
            busy_server.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}
        )
        assert openai_overflow.status_code == 503
        assert openai_overflow.json()["error"]["message"] == OLLAMA_QUEUE_FULL
    results = await asyncio.gather(*streams)
    for lines in results:
        final = lines[-1]
        assert final["done"] is True
        assert final["eval_count"] == num_predict
        assert "".join(str(line["response"]) for line in lines[:-1])
    assert busy_server.metric("slm_requests_rejected_total") >= 2
    assert scheduler.running == 0
    assert scheduler.waiting == 0


async def test_disconnect_stops_generation(busy_server: RunningServer) -> None:
    successes_before = busy_server.metric("slm_request_success_total", finished_reason="length")
    tokens_before = busy_server.metric("slm_generation_tokens_total")
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream(
            "POST",
            busy_server.url + "/api/generate",
            json={"model": MODEL, "prompt": "long", "options": {"num_predict": 2000}},
        ) as response,
    ):
        lines = response.aiter_lines()
        await anext(lines)
        await anext(lines)
    scheduler = busy_server.runtime.scheduler
    await _wait_for(lambda: scheduler.running == 0)
    assert busy_server.metric("slm_request_success_total", finished_reason="length") == successes_before
    # Counters only count finished requests: the abandoned one added no tokens.
    assert busy_server.metric("slm_generation_tokens_total") == tokens_before
    # The slot is free again: a new request runs to completion.
    result = ollama.AsyncClient(host=busy_server.url)
    answer = await result.generate(model=MODEL, prompt="after", options={"num_predict": 3})
    assert answer.eval_count == 3


async def test_metrics_move(busy_server: RunningServer) -> None:
    before = {
        name: busy_server.metric(name)
        for name in (
            "slm_prompt_tokens_total",
            "slm_generation_tokens_total",
            "slm_time_to_first_token_seconds_count",
            "slm_inter_token_latency_seconds_count",
            "slm_e2e_request_latency_seconds_count",
            "slm_request_queue_time_seconds_count",
        )
    }
    lines = await _stream(busy_server.url, "measure", 5)
    assert lines[-1]["eval_count"] == 5
    after = {name: busy_server.metric(name) for name in before}
    assert after["slm_generation_tokens_total"] == before["slm_generation_tokens_total"] + 5
    assert after["slm_prompt_tokens_total"] > before["slm_prompt_tokens_total"]
    assert (
        after["slm_time_to_first_token_seconds_count"] == before["slm_time_to_first_token_seconds_count"] + 1
    )
    assert (
        after["slm_inter_token_latency_seconds_count"] >= before["slm_inter_token_latency_seconds_count"] + 1
    )
    assert (
        after["slm_e2e_request_latency_seconds_count"] == before["slm_e2e_request_latency_seconds_count"] + 1
    )
    assert after["slm_request_queue_time_seconds_count"] == before["slm_request_queue_time_seconds_count"] + 1
    async with httpx.AsyncClient() as client:
        text = (await client.get(busy_server.url + "/metrics")).text
    assert f'slm_generation_tokens_total{{model_name="{MODEL}"}}' in text
    assert "slm_model_load_time_seconds" in text


async def test_disconnect_stops_a_non_streamed_generation(busy_server: RunningServer) -> None:
    successes_before = busy_server.metric("slm_request_success_total", finished_reason="length")
    scheduler = busy_server.runtime.scheduler
    async with httpx.AsyncClient() as client:
        request = asyncio.ensure_future(
            client.post(
                busy_server.url + "/api/generate",
                json={"model": MODEL, "prompt": "quiet", "stream": False, "options": {"num_predict": 2000}},
            )
        )
        await _wait_for(lambda: scheduler.running == 1)
        request.cancel()  # the client gives up and closes its connection
        with contextlib.suppress(asyncio.CancelledError):
            await request
    await _wait_for(lambda: scheduler.running == 0)
    assert busy_server.metric("slm_request_success_total", finished_reason="length") == successes_before


async def test_embeddings_share_admission_and_get_the_same_503(busy_server: RunningServer) -> None:
    scheduler = busy_server.runtime.scheduler
    streams = [asyncio.create_task(_stream(busy_server.url, f"fill {i}", 4000)) for i in range(3)]
    try:
        await _wait_for(lambda: scheduler.running == 2 and scheduler.waiting == 1)
        async with httpx.AsyncClient() as client:
            for path, body in (
                ("/api/embed", {"model": MODEL, "input": "e"}),
                ("/api/embeddings", {"model": MODEL, "prompt": "e"}),
            ):
                response = await client.post(busy_server.url + path, json=body)
                assert response.status_code == 503
                assert response.json() == {"error": OLLAMA_QUEUE_FULL}
            response = await client.post(
                busy_server.url + "/v1/embeddings", json={"model": MODEL, "input": "e"}
            )
            assert response.status_code == 503
            assert response.json()["error"]["message"] == OLLAMA_QUEUE_FULL
    finally:
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    await _wait_for(lambda: scheduler.running == 0 and scheduler.waiting == 0)
    # With room again, an embedding holds a slot while it runs and gives it back.
    result = await ollama.AsyncClient(host=busy_server.url).embed(model=MODEL, input="after")
    assert len(result.embeddings) == 1
    assert scheduler.running == 0
    assert busy_server.runtime.in_flight == 0


async def test_a_failing_decode_fails_only_the_sequence_that_caused_it(busy_server: RunningServer) -> None:
    """Bypasses the request checks to put an invalid token into the batch next to a healthy sequence."""
    backend = busy_server.runtime.require_backend()
    assert isinstance(backend, LlamaCppBackend)
    loop = asyncio.get_running_loop()
    good = GenerationJob(backend.tokenize("healthy", add_special=True), SamplingOptions(max_tokens=100), loop)
    backend.submit(good)
    first = await good.next_event()
    assert isinstance(first, TokenEvent)
    bad = GenerationJob([1, -5, 2], SamplingOptions(max_tokens=5), loop)
    assert backend.scheduler is not None
    backend.scheduler.enqueue(bad)  # what submit() does, minus validate()
    failure = await bad.next_event()
    assert isinstance(failure, ErrorEvent)
    events: list[Event] = []
    while not events or isinstance(events[-1], TokenEvent):
        events.append(await good.next_event())
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].stats.completion_tokens == 100


async def test_a_running_embedding_holds_off_the_drain(
    busy_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = busy_server.runtime
    backend = runtime.require_backend()
    entered, release = threading.Event(), threading.Event()
    embed = backend.embed

    def held(texts: Sequence[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        entered.set()
        release.wait(60)
        return embed(texts, truncate=truncate)

    monkeypatch.setattr(backend, "embed", held)
    async with httpx.AsyncClient(timeout=60) as client:
        request = asyncio.ensure_future(
            client.post(busy_server.url + "/api/embed", json={"model": MODEL, "input": "held"})
        )
        await _wait_for(entered.is_set)
        # What the shutdown drain waits on, and the slot it counts in the scheduler.
        assert runtime.in_flight == 1
        assert not runtime.idle.is_set()
        assert runtime.scheduler.running == 1
        release.set()
        response = await request
    assert response.status_code == 200
    assert runtime.in_flight == 0
    assert runtime.idle.is_set()
