"""`slm bench` against the real runtime serving a generated tiny model: real token counts, real
durations, real queueing beyond the parallel slots, and the whole command with its record."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slm_operator.cli import benchmark, commands, portforward
from slm_operator.cli.__main__ import main
from slm_operator.cli.benchmark import BenchPlan
from slm_operator.cli.commands import Context
from slm_operator.cli.ollama_client import OllamaChat
from tests.runtime.conftest import RunningServer, start_server
from tests.unit.cli.test_bench import FakeKube, slm_object

pytestmark = pytest.mark.runtime

MODEL = "bench:latest"


@pytest.fixture(scope="module")
def bench_server(tiny_gguf: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_gguf,
        model_name=MODEL,
        context_length=2048,
        parallel_requests=2,
        max_queue=8,
        threads=2,
        # Defaults a Modelfile could set: the benchmark's own options must win over them.
        default_parameters='{"temperature": 0.9, "num_predict": 3, "stop": ["a"]}',
    )
    yield server
    server.stop()


def test_the_measurement_against_the_real_runtime(bench_server: RunningServer) -> None:
    chat = OllamaChat(bench_server.url, MODEL)
    plan = BenchPlan(warmup=2, epochs=2, prompt_tokens=200, max_tokens=12, concurrency=(1, 4))
    try:
        measured = benchmark.measure(chat, plan)
        load_seconds = benchmark.runtime_load_seconds(chat.client)
    finally:
        chat.close()
    result = benchmark.summarize(measured.samples)
    assert load_seconds is not None and load_seconds > 0  # the runtime's /readyz: the model's load time
    assert load_seconds == pytest.approx(bench_server.runtime.load_seconds, abs=0.001)
    # The byte-level tokenizer makes ~6 tokens a word: the warmups resized the prompt to the target.
    assert measured.warmups[0].prompt_eval_count > 2 * 200
    assert abs(result.prompt_tokens - 200) <= 20, result.prompt_tokens
    one, four = result.levels
    assert (one.concurrency, one.requests, one.errors) == (1, 2, 0)
    assert (four.concurrency, four.requests, four.errors) == (4, 8, 0)
    # Greedy decoding never picks the tiny model's end token: every answer runs to max tokens, and
    # the Modelfile-style defaults (num_predict 3, stop "a") did not apply.
    assert [s.eval_count for s in measured.samples] == [12] * 10
    assert (one.generated_tokens, four.generated_tokens) == (24, 96)
    for level in result.levels:
        assert level.ttft_ms > 0 and level.ttft_p95_ms >= level.ttft_ms
        assert level.prefill_tokens_per_second > 0 and level.decode_tokens_per_second > 0
        assert level.aggregate_tokens_per_second > 0 and level.wall_seconds > 0
    # Two slots for four streams: two of each epoch waited in the queue, which the server reports
    # as its load_duration (the time before a slot took the request).
    queued = sorted(s.load_duration_ns for s in measured.samples if s.concurrency == 4)
    assert queued[-1] > queued[0]


def test_the_whole_command_against_the_real_runtime(
    bench_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextlib.contextmanager
    def forward(ctx: Context, obj: dict[str, Any]) -> Iterator[str]:
        yield bench_server.url

    kube = FakeKube(slm_object())
    monkeypatch.setattr(portforward, "forward", forward)
    monkeypatch.setattr(commands, "Kube", lambda *_: kube)
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["bench", "assistant", "--warmup", "2", "--epochs", "1", "--prompt-tokens", "120", "--max-tokens", "8",
         "--concurrency", "1,2", "--record", "-o", "json"],
        out=out, err=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    data = json.loads(out.getvalue())
    assert data["model"] == MODEL  # the name the runtime serves, asked from /api/tags
    assert [
        (lv["concurrency"], lv["requests"], lv["errors"], lv["generatedTokens"]) for lv in data["levels"]
    ] == [
        (1, 1, 0, 8),
        (2, 2, 0, 16),
    ]
    assert abs(data["promptTokens"] - 120) <= 20
    [stored] = kube.obj["status"]["benchmark"]
    assert stored["loadSeconds"] == data["loadSeconds"] > 0
    assert [lv["decodeTokensPerSecond"] for lv in stored["levels"]] == [
        lv["decodeTokensPerSecond"] for lv in data["levels"]
    ]
