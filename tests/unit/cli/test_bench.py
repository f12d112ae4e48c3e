"""`slm bench`: the arithmetic with exact numbers, the prompt sizing, the flags, the table, JSON and
CSV, the status.benchmark record, `slm ps -o wide` and `slm show` reading it, and whole runs of
`slm bench` against a local fake Ollama server over HTTP."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from slm_operator.cli import bench, bench_status, benchmark, commands, portforward
from slm_operator.cli.__main__ import build_parser, main
from slm_operator.cli.benchmark import BenchPlan, BenchResult, LevelResult, Report, Sample, summarize
from slm_operator.cli.commands import Context, ps_table, show_text
from slm_operator.cli.errors import CliError
from slm_operator.cli.kube import Kube
from tests.unit.cli.test_run import fake_kubectl

SHA = "b179c952" + "0" * 56
RECORDED_AT = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def slm_object(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "assistant", "namespace": "ai", "generation": 1, "resourceVersion": "100"},
        "spec": {"model": {"name": "phi4:mini"}, "replicas": 1, "optimization": {"parallelRequests": 2}},
        "status": {
            "readyReplicas": 1,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Available", "observedGeneration": 1}
            ],
            "placement": {"tier": "gpu", "accelerator": "nvidia", "quantization": "q4_k_m", "format": "gguf"},
            "model": {"name": "phi4:mini", "quantization": "q4_k_m", "sha256": SHA},
            **status,
        },
    }


# ---------------------------------------------------------------------------------------------
# the arithmetic


def test_percentile_interpolates_between_ranks() -> None:
    assert benchmark.percentile([], 50) == 0.0
    assert benchmark.percentile([5.0], 95) == 5.0
    assert benchmark.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert benchmark.percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert benchmark.percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def samples() -> list[Sample]:
    ms = 1_000_000
    return [
        # concurrency 1, two epochs of one request each
        Sample(1, 0, started=0.0, ended=2.0, first_token=0.125, prompt_eval_count=100,
               prompt_eval_duration_ns=50 * ms, eval_count=50, eval_duration_ns=1000 * ms),
        Sample(1, 1, started=10.0, ended=12.0, first_token=10.375, prompt_eval_count=102,
               prompt_eval_duration_ns=50 * ms, eval_count=30, eval_duration_ns=600 * ms),
        # concurrency 4, one epoch: three answers (one without text) and a refused request
        Sample(4, 0, started=20.0, ended=22.0, first_token=20.25, prompt_eval_count=101,
               prompt_eval_duration_ns=100 * ms, eval_count=40, eval_duration_ns=1000 * ms),
        Sample(4, 0, started=20.0, ended=23.0, first_token=20.5, prompt_eval_count=101,
               prompt_eval_duration_ns=100 * ms, eval_count=40, eval_duration_ns=1000 * ms),
        Sample(4, 0, started=20.0, ended=24.0, first_token=20.75, prompt_eval_count=101,
               prompt_eval_duration_ns=100 * ms, eval_count=40, eval_duration_ns=1000 * ms),
        Sample(4, 0, started=20.0, ended=20.5, error="the model's API answered HTTP 503: server busy"),
        Sample(4, 0, started=20.0, ended=21.0, first_token=None, prompt_eval_count=101,
               prompt_eval_duration_ns=100 * ms, eval_count=0, eval_duration_ns=0),
    ]  # fmt: skip


def test_summarize_with_exact_numbers() -> None:
    result = summarize(samples())
    one, four = result.levels
    assert one.ttft_p95_ms == pytest.approx(362.5)
    assert dataclasses.replace(one, ttft_p95_ms=0.0) == LevelResult(
        concurrency=1,
        requests=2,
        errors=0,
        ttft_ms=250.0,  # 125 and 375 ms
        ttft_p95_ms=0.0,
        prefill_tokens_per_second=2020.0,  # 202 tokens in 100 ms
        decode_tokens_per_second=50.0,  # 80 tokens in 1.6 s
        aggregate_tokens_per_second=20.0,  # 80 tokens in two epochs of 2 s
        generated_tokens=80,
        wall_seconds=4.0,
    )
    assert four.concurrency == 4
    assert (four.requests, four.errors) == (5, 1)
    assert four.ttft_ms == 500.0  # 250, 500, 750: the answer without text has no first token
    assert four.ttft_p95_ms == pytest.approx(725.0)
    assert four.prefill_tokens_per_second == 1010.0  # 404 tokens in 400 ms
    assert four.decode_tokens_per_second == 40.0  # 120 tokens in 3 s (the empty answer took none)
    assert four.wall_seconds == 4.0  # the epoch: from 20.0 until the last one ended, 24.0
    assert four.aggregate_tokens_per_second == 30.0
    assert four.generated_tokens == 120
    assert result.prompt_tokens == 101  # the median of what the server counted
    assert result.errors == ("the model's API answered HTTP 503: server busy",)
    assert (result.requests, result.failed) == (7, 1)


def test_summarize_of_nothing_and_of_failures_only() -> None:
    assert summarize([]) == BenchResult(levels=(), prompt_tokens=0, errors=())
    failed = summarize([Sample(2, 0, 0.0, 1.0, error="x"), Sample(2, 0, 0.0, 3.0, error="x")])
    [level] = failed.levels
    assert (level.requests, level.errors, level.ttft_ms, level.aggregate_tokens_per_second) == (
        2,
        2,
        0.0,
        0.0,
    )
    assert level.wall_seconds == 3.0
    assert failed.errors == ("x",) and failed.prompt_tokens == 0


# ---------------------------------------------------------------------------------------------
# the prompt


def test_synthetic_prompt_is_deterministic_and_numbered() -> None:
    assert benchmark.synthetic_prompt(3, 4) == (
        "Request 3. Continue this list of words for as long as you can: time problem mother year"
    )
    assert benchmark.synthetic_prompt(3, 4) == benchmark.synthetic_prompt(3, 4)
    assert benchmark.synthetic_prompt(4, 4).endswith(benchmark.synthetic_prompt(3, 4)[10:])
    assert len(benchmark.synthetic_prompt(0, 24).split()) == 13 + 24


def test_next_filler_words_converges_on_the_servers_count() -> None:
    assert benchmark.next_filler_words([], 256) == 216  # the first guess: 40 tokens of overhead
    assert benchmark.next_filler_words([], 10) == 1
    # One measurement: the tokens beyond the guessed overhead are the words' (1 per word here).
    assert benchmark.next_filler_words([(100, 140)], 240) == 200
    # Two: the line through them (6 tokens per word, as a byte-level tokenizer has).
    assert benchmark.next_filler_words([(100, 640), (20, 160)], 256) == 36
    # Nonsense (more words, no more tokens) falls back to one token per word.
    assert benchmark.next_filler_words([(10, 50), (20, 50)], 60) == 30
    assert benchmark.next_filler_words([(5, 500)], 10) == 1


def test_request_options_are_greedy_to_max_tokens_without_stop_strings() -> None:
    assert benchmark.request_options(128) == {"temperature": 0, "num_predict": 128, "stop": []}


# ---------------------------------------------------------------------------------------------
# the requests, over a scripted chat


class Ticks:
    """A clock that advances 0.5 s per reading (thread-safe)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now += 0.5
            return self.now


class ScriptedChat:
    """Streams 'a', 'b' then the final statistics; the prompt's word count is its token count."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
        self.fail = fail or set()
        self.lock = threading.Lock()

    def __call__(self, messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with self.lock:
            self.calls.append((messages, options))
            number = len(self.calls)
        if number in self.fail:
            raise CliError("the model's API answered HTTP 503: server busy")
        for text in ("a", "b"):
            yield {"message": {"role": "assistant", "content": text}, "done": False}
        yield {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "prompt_eval_count": len(messages[0]["content"].split()),
            "prompt_eval_duration": 10_000_000,
            "eval_count": options["num_predict"],
            "eval_duration": 20_000_000,
            "load_duration": 7_000,
        }


def test_timed_request_clocks_the_first_token_and_reads_the_final_chunk() -> None:
    chat = ScriptedChat()
    sample = benchmark.timed_request(
        chat, "one two three", {"num_predict": 4}, concurrency=2, epoch=1, clock=Ticks()
    )
    assert sample == Sample(
        concurrency=2,
        epoch=1,
        started=0.5,
        ended=1.5,
        first_token=1.0,
        prompt_eval_count=3,
        prompt_eval_duration_ns=10_000_000,
        eval_count=4,
        eval_duration_ns=20_000_000,
        load_duration_ns=7_000,
    )
    failed = benchmark.timed_request(
        ScriptedChat(fail={1}), "x", {"num_predict": 4}, concurrency=1, epoch=0, clock=Ticks()
    )
    assert failed.error == "the model's API answered HTTP 503: server busy"

    def cut_short(messages: list[dict[str, str]], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield {"message": {"content": "a"}, "done": False}

    short = benchmark.timed_request(cut_short, "x", {}, concurrency=1, epoch=0, clock=Ticks())
    assert short.error == "the answer ended without statistics"


def test_measure_warms_up_sizes_the_prompt_and_runs_every_level() -> None:
    chat = ScriptedChat()
    lines: list[str] = []
    plan = BenchPlan(warmup=2, epochs=3, prompt_tokens=64, max_tokens=8, concurrency=(1, 4))
    measured = benchmark.measure(chat, plan, progress=lines.append, clock=Ticks())
    assert len(measured.warmups) == 2
    assert len(chat.calls) == 2 + 3 * 1 + 3 * 4
    # Warmup 1: 24 filler words made 37 tokens; warmup 2 aimed at 64 and hit it; so did the rest.
    assert [s.prompt_eval_count for s in measured.warmups] == [37, 64]
    assert measured.filler_words == 51
    assert {s.prompt_eval_count for s in measured.samples} == {64}
    assert [(s.concurrency, s.epoch) for s in measured.samples] == [
        (1, 0), (1, 1), (1, 2), *[(4, epoch) for epoch in range(3) for _ in range(4)]
    ]  # fmt: skip
    # Every request's prompt has a number of its own (no prompt cache to hit), and the options.
    prompts = [messages[0]["content"] for messages, _ in chat.calls]
    assert len(set(prompts)) == len(prompts)
    assert all(options == benchmark.request_options(8) for _, options in chat.calls)
    assert lines[0] == "warmup 1/2: 37 prompt tokens, 8 generated in 1.00s"
    assert lines[2].startswith("concurrency 1: 3 requests, 0 failed, TTFT ")
    assert lines[3].startswith("concurrency 4: 12 requests, 0 failed, TTFT ")

    with pytest.raises(CliError, match=r"^warmup request 1 failed: the model's API answered HTTP 503"):
        benchmark.measure(ScriptedChat(fail={1}), plan, clock=Ticks())

    failing = benchmark.measure(ScriptedChat(fail={4, 9}), plan, clock=Ticks())
    assert [s.error != "" for s in failing.samples].count(True) == 2


# ---------------------------------------------------------------------------------------------
# the flags


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["bench", *argv])


def test_flags_and_their_defaults() -> None:
    args = parse("assistant")
    assert (args.name, args.warmup, args.epochs, args.prompt_tokens, args.max_tokens) == (
        "assistant", 1, 3, 256, 128,
    )  # fmt: skip
    assert (args.concurrency, args.output, args.record, args.timeout, args.api_key) == (
        None, "table", False, 600.0, None,
    )  # fmt: skip
    args = parse(
        "assistant", "--warmup", "0", "--epochs", "2", "--prompt-tokens", "512", "--max-tokens", "64",
        "--concurrency", "1, 4,8,4", "-o", "csv", "--record", "--timeout", "30", "--api-key", "k",
        "-n", "ai", "--context", "c",
    )  # fmt: skip
    assert args.concurrency == (1, 4, 8)
    assert (args.warmup, args.epochs, args.prompt_tokens, args.max_tokens) == (0, 2, 512, 64)
    assert (args.output, args.record, args.timeout, args.api_key, args.namespace) == (
        "csv",
        True,
        30.0,
        "k",
        "ai",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--concurrency", "1,x"],
            "argument --concurrency: takes comma-separated whole numbers from 1 to 256",
        ),
        (["--concurrency", "0"], "argument --concurrency: takes comma-separated whole numbers"),
        (["--concurrency", "1,257"], "from 1 to 256, such as 1,4,8; got '1,257'"),
        (["--concurrency", ",".join(str(n) for n in range(1, 18))], "takes at most 16 levels; got 17"),
        (["--epochs", "0"], "argument --epochs: takes a whole number of at least 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: takes a whole number of at least 0, got -1"),
        (["--max-tokens", "many"], "argument --max-tokens: takes a whole number, got 'many'"),
        (["--timeout", "0"], "argument --timeout: takes a positive number of seconds, got '0'"),
        (["-o", "yaml"], "argument -o/--output: invalid choice: 'yaml'"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(argv: list[str], message: str) -> None:
    err = io.StringIO()
    assert main(["bench", "assistant", *argv], err=err) == 1
    assert err.getvalue().count("\n") == 1 and message in err.getvalue(), err.getvalue()


def test_help_documents_the_exit_codes_and_the_rbac_of_record() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bench", "--help"]) == 0
    text = out.getvalue()
    assert "exit codes:\n  0    measured" in text
    assert "  2    measured, but some requests failed" in text
    assert "`get services`, `list pods`\nand `create pods/portforward`" in text
    assert "for --record, which writes status.benchmark with your own credentials, `patch` on\n" in text
    assert text.rstrip().endswith("slmdeployments/status.")


def test_plan_defaults_to_one_and_the_parallel_slots_and_fits_the_context() -> None:
    obj = slm_object()
    assert bench.bench_plan(parse("assistant"), obj) == BenchPlan(1, 3, 256, 128, (1, 2))
    obj["spec"]["optimization"] = {"parallelRequests": 1}
    assert bench.bench_plan(parse("assistant"), obj).concurrency == (1,)
    obj["spec"]["optimization"] = {"maxContext": 512}
    with pytest.raises(CliError) as caught:
        bench.bench_plan(parse("assistant", "--prompt-tokens", "400", "--max-tokens", "128"), obj)
    assert caught.value.message == (
        "--prompt-tokens 400 plus --max-tokens 128 is more than the context window of assistant "
        "(512 tokens, spec.optimization.maxContext): lower them"
    )


# ---------------------------------------------------------------------------------------------
# table, JSON, CSV


def report(result: BenchResult | None = None, load: float | None = 1.25) -> Report:
    return Report(
        name="assistant",
        namespace="ai",
        model="phi4:mini",
        model_sha256=SHA,
        placement=("gpu", "nvidia", "q4_k_m"),
        processor="GPU (nvidia)",
        plan=BenchPlan(warmup=1, epochs=2, prompt_tokens=100, max_tokens=50, concurrency=(1, 4)),
        load_seconds=load,
        result=result or summarize(samples()),
    )


def test_table() -> None:
    assert bench.render_table(report()) == (
        "assistant: phi4:mini on GPU (nvidia), q4_k_m (sha256 b179c9520000)\n"
        "model load 1.25s; prompt 101 tokens (asked 100); up to 50 tokens per answer; warmup 1, epochs 2 "
        "per level\n"
        "\n"
        "CONCURRENCY   REQUESTS   ERRORS   TTFT    TTFT-P95   PREFILL-TOK/S   DECODE-TOK/S   "
        "AGGREGATE-TOK/S   TOKENS/ANSWER\n"
        "1             2          0        250ms   362ms      2020.0          50.0           "
        "20.0              40\n"
        "4             5          1        500ms   725ms      1010.0          40.0           "
        "30.0              30\n"
    )
    failed = summarize([Sample(2, 0, 0.0, 1.0, error="x")])
    lines = bench.render_table(report(failed, load=None)).splitlines()
    assert lines[1].startswith("model load unknown; prompt 0 tokens")
    assert lines[-1].split() == ["2", "1", "1", "-", "-", "-", "-", "-", "-"]


def test_json_has_stable_keys() -> None:
    data = json.loads(json.dumps(benchmark.report_json(report())))
    assert list(data) == [
        "name", "namespace", "model", "modelSha256", "tier", "accelerator", "quantization", "loadSeconds",
        "promptTokens", "promptTokensAsked", "maxTokens", "warmup", "epochs", "levels", "errors",
    ]  # fmt: skip
    assert data["levels"][0] == {
        "concurrency": 1,
        "requests": 2,
        "errors": 0,
        "ttftMs": 250.0,
        "ttftP95Ms": 362.5,
        "prefillTokensPerSecond": 2020.0,
        "decodeTokensPerSecond": 50.0,
        "aggregateTokensPerSecond": 20.0,
        "generatedTokens": 80,
        "wallSeconds": 4.0,
    }
    assert data["errors"] == ["the model's API answered HTTP 503: server busy"]
    assert (data["loadSeconds"], data["promptTokens"], data["promptTokensAsked"]) == (1.25, 101, 100)


def test_csv_has_a_row_per_level() -> None:
    assert bench.render_csv(report()) == (
        "name,namespace,model,tier,accelerator,quantization,promptTokens,maxTokens,loadSeconds,concurrency,"
        "requests,errors,ttftMs,ttftP95Ms,prefillTokensPerSecond,decodeTokensPerSecond,"
        "aggregateTokensPerSecond,generatedTokens,wallSeconds\n"
        "assistant,ai,phi4:mini,gpu,nvidia,q4_k_m,101,50,1.25,1,2,0,250.0,362.5,2020.0,50.0,20.0,80,4.0\n"
        "assistant,ai,phi4:mini,gpu,nvidia,q4_k_m,101,50,1.25,4,5,1,500.0,725.0,1010.0,40.0,30.0,120,4.0\n"
    )
    assert ",,1,2,0," in bench.render_csv(report(load=None))  # an unknown load time is an empty cell


# ---------------------------------------------------------------------------------------------
# status.benchmark


def entry(
    tier: str = "gpu", accelerator: str = "nvidia", quantization: str = "q4_k_m", **more: Any
) -> dict[str, Any]:
    return {"tier": tier, "accelerator": accelerator, "quantization": quantization, **more}


def test_benchmark_entry_follows_the_api_schema() -> None:
    recorded = bench.benchmark_entry(report(), RECORDED_AT)
    assert list(recorded) == [
        "tier", "accelerator", "quantization", "recordedAt", "model", "modelSha256", "promptTokens",
        "maxTokens", "loadSeconds", "levels",
    ]  # fmt: skip
    assert recorded["recordedAt"] == "2026-12-06T12:00:00Z"
    assert (recorded["tier"], recorded["accelerator"], recorded["quantization"]) == (
        "gpu",
        "nvidia",
        "q4_k_m",
    )
    assert (recorded["modelSha256"], recorded["promptTokens"], recorded["maxTokens"]) == (SHA, 101, 50)
    assert recorded["levels"][1] == {
        "concurrency": 4,
        "requests": 5,
        "errors": 1,
        "ttftMs": 500.0,
        "ttftP95Ms": 725.0,
        "prefillTokensPerSecond": 1010.0,
        "decodeTokensPerSecond": 40.0,
        "aggregateTokensPerSecond": 30.0,
        "generatedTokens": 120,
    }
    odd = bench.benchmark_entry(
        dataclasses.replace(report(), model_sha256="not-a-digest", load_seconds=None), RECORDED_AT
    )
    assert (odd["modelSha256"], odd["loadSeconds"]) == ("", 0.0)


def test_record_patch_replaces_the_same_device_and_quantization() -> None:
    others = [entry("cpu", "cpu", "q4_k_m", promptTokens=1), entry(promptTokens=2), entry(quantization="f16")]
    obj = slm_object(benchmark=others)
    new = entry(promptTokens=3)
    assert bench.record_patch(obj, new) == {
        "metadata": {"resourceVersion": "100"},
        "status": {"benchmark": [others[0], new, others[2]]},
    }
    fresh = entry("npu", "intel-npu", "int4")
    assert bench.record_patch(slm_object(), fresh)["status"]["benchmark"] == [fresh]
    assert bench.record_patch(obj, fresh)["status"]["benchmark"] == [*others, fresh]
    assert obj["status"]["benchmark"] == others  # the object read is left alone


class FakeKube:
    """One SLMDeployment; status patches check the resourceVersion like the API server."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.namespace = "ai"
        self.obj = obj
        self.patches: list[dict[str, Any]] = []
        self.conflicts = 0  # how many status patches are refused as conflicts (someone wrote first)
        self.refuse: CliError | None = None
        self.core = None

    def find_slm(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.obj) if name == self.obj["metadata"]["name"] else None

    def get_slm(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    def list_slm(self, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(self.obj)]

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    def patch_slm_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        self.patches.append(copy.deepcopy(patch))
        if self.refuse is not None:
            raise self.refuse
        if self.conflicts:
            self.conflicts -= 1
            self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
            return None
        if patch["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            return None
        self.obj["status"]["benchmark"] = patch["status"]["benchmark"]
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)


def context(kube: FakeKube, *argv: str) -> tuple[Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["bench", *argv])
    ctx = Context(args=args, out=out, err=err, kube_factory=lambda _: kube, sleep=lambda _: None)  # type: ignore[arg-type,return-value]
    return ctx, out, err


def test_record_retries_a_conflict_and_refuses_a_model_that_moved() -> None:
    kube = FakeKube(slm_object())
    kube.conflicts = 1
    ctx, _, _ = context(kube, "assistant")
    bench.record(ctx, "ai", "assistant", report(), RECORDED_AT)
    assert [p["metadata"]["resourceVersion"] for p in kube.patches] == ["100", "101"]
    assert kube.obj["status"]["benchmark"] == [bench.benchmark_entry(report(), RECORDED_AT)]

    kube.conflicts = 10
    with pytest.raises(CliError, match=r"kept changing while its status was written \(5 tries\)"):
        bench.record(ctx, "ai", "assistant", report(), RECORDED_AT)

    kube.conflicts = 0
    kube.obj["status"]["placement"]["tier"] = "cpu"
    with pytest.raises(CliError) as caught:
        bench.record(ctx, "ai", "assistant", report(), RECORDED_AT)
    assert caught.value.message == (
        "not recorded: assistant changed during the benchmark (it ran on gpu/nvidia/q4_k_m with model "
        "sha256 b179c9520000, now cpu/nvidia/q4_k_m with b179c9520000); run `slm bench assistant --record` again"
    )


class FakeCustom:
    def __init__(self, status: int) -> None:
        self.status = status
        self.calls: list[tuple[Any, ...]] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((*args, kwargs.get("_content_type")))
        if self.status:
            raise ApiException(status=self.status, reason="x")
        return {"ok": True}


def test_kube_status_patch_is_a_merge_patch_and_names_the_rbac_it_needs() -> None:
    kube = Kube.__new__(Kube)
    kube.server = "https://cluster"
    for status, expected in ((0, {"ok": True}), (409, None)):
        kube.custom = FakeCustom(status)
        assert kube.patch_slm_status("ai", "assistant", {"status": {}}) == expected
    assert kube.custom.calls[0][-2:] == ({"status": {}}, "application/merge-patch+json")
    assert kube.custom.calls[0][:5] == ("slm.dev", "v1alpha1", "ai", "slmdeployments", "assistant")
    kube.custom = FakeCustom(403)
    with pytest.raises(CliError) as caught:
        kube.patch_slm_status("ai", "assistant", {})
    assert caught.value.message == (
        "cannot write the status of SLMDeployment ai/assistant: forbidden; it needs RBAC `patch` on "
        "slmdeployments/status (API group slm.dev) in namespace ai"
    )


# ---------------------------------------------------------------------------------------------
# `slm ps -o wide` and `slm show`


def recorded(**more: Any) -> dict[str, Any]:
    levels = [
        {"concurrency": 4, "requests": 8, "errors": 0, "ttftMs": 180.0, "aggregateTokensPerSecond": 412.25},
        {"concurrency": 1, "requests": 3, "errors": 0, "ttftMs": 45.4, "ttftP95Ms": 52.0,
         "prefillTokensPerSecond": 1200.0, "decodeTokensPerSecond": 38.25, "aggregateTokensPerSecond": 37.9},
    ]  # fmt: skip
    fields: dict[str, Any] = {
        "recordedAt": "2026-12-06T12:00:00Z", "modelSha256": SHA, "promptTokens": 251, "maxTokens": 128,
        "loadSeconds": 2.5, "levels": levels,
    }  # fmt: skip
    return entry(**{**fields, **more})


def test_ps_wide_shows_the_benchmark_of_the_current_placement() -> None:
    obj = slm_object(benchmark=[entry("cpu", "cpu", "q4_k_m", levels=[{"concurrency": 1}]), recorded()])
    table = ps_table([obj], {}, all_namespaces=False)
    lines = table.render(wide=True).splitlines()
    header = lines[0].split()
    assert header[-4:] == ["TTFT", "TOK/S@1", "TOK/S@MAX", "ENDPOINT"]
    assert lines[1].split()[-4:] == ["45ms", "38.2", "412.2@4", "-"]
    assert "TTFT" not in table.render()  # only with -o wide
    table.sort("tok/s@max")

    def cells(entries: list[dict[str, Any]], **placement: str) -> list[str]:
        other = slm_object(benchmark=entries)
        other["status"]["placement"].update(placement)
        return [cell.text for cell in bench_status.ps_cells(bench_status.current_entry(other)).values()]

    assert cells([recorded()], quantization="f16") == ["-", "-", "-"]  # recorded for another quantization
    assert cells([recorded(modelSha256="a" * 64)]) == ["-", "-", "-"]  # for another version of the model
    assert cells([recorded(modelSha256="")]) == ["45ms", "38.2", "412.2@4"]
    assert cells([]) == ["-", "-", "-"]
    only_four = recorded(
        levels=[{"concurrency": 4, "requests": 8, "ttftMs": 1500.0, "aggregateTokensPerSecond": 9.0}]
    )
    assert cells([only_four]) == ["1.50s", "-", "9.0@4"]


def test_show_lists_every_recorded_benchmark() -> None:
    failed = entry("cpu", "cpu", "q4_k_m", recordedAt="2026-12-05T08:00:00Z", promptTokens=250, maxTokens=64,
                   levels=[{"concurrency": 2, "requests": 4, "errors": 4}])  # fmt: skip
    text = show_text(slm_object(benchmark=[recorded(), failed]))
    assert (
        "  Benchmark\n"
        "    GPU (nvidia) q4_k_m, where it runs now: recorded 2026-12-06T12:00:00Z, prompt 251 tokens, up to "
        "128 generated, model load 2.50s\n"
        "      concurrency 1: 3 requests; TTFT 45ms (p95 52ms), prefill 1200.0 tok/s, decode 38.2 tok/s per "
        "stream, 37.9 tok/s in all\n"
        "      concurrency 4: 8 requests; TTFT 180ms (p95 0ms), prefill 0.0 tok/s, decode 0.0 tok/s per "
        "stream, 412.2 tok/s in all\n"
        "    CPU q4_k_m: recorded 2026-12-05T08:00:00Z, prompt 250 tokens, up to 64 generated\n"
        "      concurrency 2: 4 requests, 4 failed\n"
        "\n"
    ) in text
    assert "Benchmark" not in show_text(slm_object())


# ---------------------------------------------------------------------------------------------
# whole runs against a local fake Ollama server over HTTP


class BenchOllama(BaseHTTPRequestHandler):
    """/api/tags, /readyz and a streaming /api/chat that counts a word as a token and generates
    num_predict tokens; the requests numbered in `fail` get 503 (a full queue)."""

    requests: list[tuple[str, dict[str, Any]]] = []
    fail: set[int] = set()
    lock = threading.Lock()

    def log_message(self, *_: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._json(200, {"status": "ready", "load_seconds": 1.25})
        else:
            self._json(200, {"models": [{"name": "phi4:mini", "model": "phi4:mini"}]})

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with BenchOllama.lock:
            BenchOllama.requests.append((self.headers.get("Authorization", ""), payload))
            number = len(BenchOllama.requests)
        if number in BenchOllama.fail:
            self._json(503, {"error": "server busy"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        predict = int(payload["options"]["num_predict"])
        for word in ("Counting ", "words."):
            chunk = {"model": "phi4:mini", "message": {"role": "assistant", "content": word}, "done": False}
            self.wfile.write(json.dumps(chunk).encode() + b"\n")
            self.wfile.flush()
        final = {
            "model": "phi4:mini",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "load_duration": 0,
            "prompt_eval_count": len(payload["messages"][0]["content"].split()),
            "prompt_eval_duration": 8_000_000,
            "eval_count": predict,
            "eval_duration": predict * 4_000_000,
        }
        self.wfile.write(json.dumps(final).encode() + b"\n")
        self.close_connection = True


@pytest.fixture
def ollama_port() -> Iterator[int]:
    """The fake server on 127.0.0.1; yields its port."""
    BenchOllama.requests = []
    BenchOllama.fail = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), BenchOllama)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(ollama_port: int, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The fake server, reached through a stand-in for the port-forward; the objects forwarded to."""
    forwarded: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def forward(ctx: Context, obj: dict[str, Any]) -> Iterator[str]:
        forwarded.append(obj)
        yield f"http://127.0.0.1:{ollama_port}"

    monkeypatch.setattr(portforward, "forward", forward)
    return forwarded


def run_main(kube: FakeKube, monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(commands, "Kube", lambda *_: kube)
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_bench_records_and_ps_wide_shows_it(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube(slm_object())
    code, out, err = run_main(
        kube, monkeypatch, "bench", "assistant", "--warmup", "2", "--epochs", "2", "--prompt-tokens", "64",
        "--max-tokens", "8", "--concurrency", "1,3", "-o", "json", "--record", "--api-key", "s3cret",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert (data["name"], data["model"], data["tier"], data["quantization"]) == (
        "assistant",
        "phi4:mini",
        "gpu",
        "q4_k_m",
    )
    assert (data["loadSeconds"], data["promptTokens"], data["promptTokensAsked"], data["maxTokens"]) == (
        1.25,
        64,
        64,
        8,
    )
    assert [
        (lv["concurrency"], lv["requests"], lv["errors"], lv["generatedTokens"]) for lv in data["levels"]
    ] == [
        (1, 2, 0, 16),
        (3, 6, 0, 48),
    ]
    assert all(lv["decodeTokensPerSecond"] == 250.0 for lv in data["levels"])  # 8 tokens in 32 ms
    assert all(lv["prefillTokensPerSecond"] == 8000.0 for lv in data["levels"])  # 64 tokens in 8 ms
    assert all(lv["ttftMs"] > 0 and lv["aggregateTokensPerSecond"] > 0 for lv in data["levels"])
    # 2 warmups + 2 x 1 + 2 x 3, each with the key, greedy, to num_predict.
    assert len(BenchOllama.requests) == 10
    assert {auth for auth, _ in BenchOllama.requests} == {"Bearer s3cret"}
    assert all(
        p["options"] == {"temperature": 0, "num_predict": 8, "stop": []} for _, p in BenchOllama.requests
    )
    assert all(p["model"] == "phi4:mini" and p["stream"] is True for _, p in BenchOllama.requests)
    assert err.splitlines()[-1] == (
        "recorded in status.benchmark of assistant for gpu/nvidia/q4_k_m; see it with `slm ps -o wide` or "
        "`slm show assistant`"
    )
    [stored] = kube.obj["status"]["benchmark"]
    assert stored["levels"] == [{k: v for k, v in lv.items() if k != "wallSeconds"} for lv in data["levels"]]
    assert (stored["modelSha256"], stored["promptTokens"], stored["maxTokens"], stored["loadSeconds"]) == (
        SHA, 64, 8, 1.25,
    )  # fmt: skip

    code, out, _ = run_main(kube, monkeypatch, "ps", "-o", "wide")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[-4:] == ["TTFT", "TOK/S@1", "TOK/S@MAX", "ENDPOINT"]
    ttft, single, most, _ = row.split()[-4:]
    assert ttft == bench_status.milliseconds(data["levels"][0]["ttftMs"])
    assert single == "250.0"
    assert most == f"{data['levels'][1]['aggregateTokensPerSecond']:.1f}@3"

    # Again, as a table: the entry for this device and quantization is replaced, not added.
    code, out, _ = run_main(
        kube, monkeypatch, "bench", "assistant", "--warmup", "0", "--epochs", "1", "--prompt-tokens", "64",
        "--max-tokens", "4", "--concurrency", "2", "--record",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[0] == "assistant: phi4:mini on GPU (nvidia), q4_k_m (sha256 b179c9520000)"
    assert out.splitlines()[3].split()[:3] == ["CONCURRENCY", "REQUESTS", "ERRORS"]
    assert out.splitlines()[4].split()[:3] == ["2", "2", "0"]
    [stored] = kube.obj["status"]["benchmark"]
    assert stored["maxTokens"] == 4 and [lv["concurrency"] for lv in stored["levels"]] == [2]


def test_failed_requests_exit_2_after_the_results_and_record_nothing(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    BenchOllama.fail = {3}  # the second measured request (after one warmup)
    kube = FakeKube(slm_object())
    code, out, err = run_main(
        kube, monkeypatch, "bench", "assistant", "--epochs", "2", "--prompt-tokens", "64", "--max-tokens",
        "4", "--concurrency", "1", "-o", "csv", "--record",
    )  # fmt: skip
    assert code == 2
    rows = out.splitlines()
    assert len(rows) == 2 and rows[1].split(",")[9:12] == ["1", "2", "1"]  # concurrency, requests, errors
    assert err.splitlines()[-1] == (
        "error: 1 of 2 requests failed (first: the model's API answered HTTP 503: server busy); nothing recorded"
    )
    assert kube.patches == [] and "benchmark" not in kube.obj["status"]


def test_a_failed_warmup_stops_the_bench(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    BenchOllama.fail = {1}
    code, out, err = run_main(FakeKube(slm_object()), monkeypatch, "bench", "assistant", "--concurrency", "1")
    assert (code, out) == (1, "")
    assert err == "error: warmup request 1 failed: the model's API answered HTTP 503: server busy\n"


def test_a_refused_status_write_is_exit_1_after_the_results(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube(slm_object())
    kube.refuse = CliError("cannot write the status of SLMDeployment ai/assistant: forbidden; it needs RBAC")
    code, out, err = run_main(
        kube, monkeypatch, "bench", "assistant", "--warmup", "0", "--epochs", "1", "--max-tokens", "2",
        "--concurrency", "1", "--record", "-o", "json",
    )  # fmt: skip
    assert code == 1
    assert json.loads(out)["levels"][0]["requests"] == 1
    assert err.splitlines()[-1].startswith(
        "error: cannot write the status of SLMDeployment ai/assistant: forbidden"
    )


def test_a_model_without_the_ollama_api_is_refused(
    served: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    obj = slm_object()
    obj["spec"]["api"] = {"ollama": False}
    code, _, err = run_main(FakeKube(obj), monkeypatch, "bench", "assistant")
    assert code == 1
    assert err == (
        "error: assistant does not serve the Ollama API (spec.api.ollama is false): enable it to use `slm bench`\n"
    )
    assert served == []  # no port-forward was opened


def test_bench_through_kubectl_port_forward(
    ollama_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--kubectl: the real port-forward code with a kubectl that 'forwards' to the fake server."""
    kubectl, log = fake_kubectl(tmp_path, ollama_port)
    code, out, err = run_main(
        FakeKube(slm_object()), monkeypatch, "bench", "assistant", "--warmup", "0", "--epochs", "1",
        "--max-tokens", "2", "--concurrency", "1", "-o", "json", "--kubectl", str(kubectl),
    )  # fmt: skip
    assert code == 0, err
    assert log.read_text().split() == ["port-forward", "-n", "ai", "svc/assistant", ":8080"]
    assert json.loads(out)["levels"][0]["generatedTokens"] == 2
