"""`slm bench NAME`: time to first token and token rates of a served model, per concurrency level.

Like Foundry Local's `models test --benchmark` and Ollama's bench tool; the measurement itself is
in `benchmark` (the synthetic prompt, the timed streams, the arithmetic). Here: the flags, the
output (`render_table`, `report_json`, `render_csv`), the record into status.benchmark
(`benchmark_entry`, `record_patch`, `record`) and the command.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx

from slm_operator.api.v1alpha1 import SHA256_PATTERN, BenchmarkResult
from slm_operator.cli import portforward
from slm_operator.cli.bench_status import entry_key, milliseconds, placement_key
from slm_operator.cli.benchmark import (
    BenchPlan,
    Report,
    level_fields,
    measure,
    report_json,
    runtime_load_seconds,
    summarize,
)
from slm_operator.cli.commands import Context, processor
from slm_operator.cli.errors import CliError
from slm_operator.cli.ollama_client import OllamaChat
from slm_operator.cli.output import Cell, Table, dump, getpath
from slm_operator.cli.resources import model_label
from slm_operator.cli.run import api_key, is_ready, resolve, wait_ready

DEFAULT_WARMUP = 1
DEFAULT_EPOCHS = 3
DEFAULT_PROMPT_TOKENS = 256
DEFAULT_MAX_TOKENS = 128
DEFAULT_TIMEOUT = 600.0
MAX_CONCURRENCY = 256
MAX_LEVELS = 16  # status.benchmark[].levels holds at most 16
RECORD_ATTEMPTS = 5
EXIT_REQUESTS_FAILED = 2

DESCRIPTION = """Measure a served model like Foundry Local's `models test --benchmark`: warmup requests
(not counted), then for each concurrency level --epochs rounds of that many streamed chats started
together, greedy, with a synthetic prompt of about --prompt-tokens and at most --max-tokens each.
Per level: TTFT (clocked here, median and p95), prefill and decode tokens/s (the server's counts),
and aggregate tokens/s (every generated token over the wall time)."""

EXIT_CODES = """exit codes:
  0    measured (and recorded, with --record)
  1    nothing measured or nothing recorded: a bad flag, no such SLMDeployment, not Ready within
       --timeout, the API unreachable or refusing the key, a failed warmup request, or the status
       write refused
  2    measured, but some requests failed: the table counts them, and --record records nothing
  130  interrupted

RBAC: `get` on slmdeployments (API group slm.dev); for the port-forward, `get services`, `list pods`
and `create pods/portforward`; `get secrets` for the key of spec.api.apiKeySecretRef (or pass
--api-key); and for --record, which writes status.benchmark with your own credentials, `patch` on
slmdeployments/status."""


class RequestsFailedError(CliError):
    """Measured, but some requests failed: exit code 2."""

    exit_code = EXIT_REQUESTS_FAILED


CSV_COLUMNS = (
    "name", "namespace", "model", "tier", "accelerator", "quantization", "promptTokens", "maxTokens",
    "loadSeconds", "concurrency", "requests", "errors", "ttftMs", "ttftP95Ms", "prefillTokensPerSecond",
    "decodeTokensPerSecond", "aggregateTokensPerSecond", "generatedTokens", "wallSeconds",
)  # fmt: skip


def render_csv(report: Report) -> str:
    """One row per concurrency level, every row with the benchmark's own columns."""
    data = report_json(report)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for level in data["levels"]:
        row = {**data, **level}
        row["loadSeconds"] = "" if data["loadSeconds"] is None else data["loadSeconds"]
        writer.writerow(row)
    return text.getvalue()


def _figure(value: float, ok: bool) -> Cell:
    return Cell(f"{value:.1f}", value) if ok else Cell("-")


def render_table(report: Report) -> str:
    result, plan = report.result, report.plan
    digest = f" (sha256 {report.model_sha256[:12]})" if report.model_sha256 else ""
    load = "model load unknown" if report.load_seconds is None else f"model load {report.load_seconds:.2f}s"
    lines = [
        f"{report.name}: {report.model} on {report.processor}, {report.placement[2] or '-'}{digest}",
        f"{load}; prompt {result.prompt_tokens} tokens (asked {plan.prompt_tokens}); up to "
        f"{plan.max_tokens} tokens per answer; warmup {plan.warmup}, epochs {plan.epochs} per level",
        "",
    ]
    table = Table(
        headers=[
            "CONCURRENCY", "REQUESTS", "ERRORS", "TTFT", "TTFT-P95", "PREFILL-TOK/S", "DECODE-TOK/S",
            "AGGREGATE-TOK/S", "TOKENS/ANSWER",
        ]
    )  # fmt: skip
    for level in result.levels:
        ok = level.requests > level.errors
        answered = level.requests - level.errors
        per_answer = level.generated_tokens / answered if answered else 0.0
        table.add(
            concurrency=level.concurrency,
            requests=level.requests,
            errors=level.errors,
            ttft=Cell(milliseconds(level.ttft_ms), level.ttft_ms) if ok else Cell("-"),
            **{
                "ttft-p95": Cell(milliseconds(level.ttft_p95_ms), level.ttft_p95_ms) if ok else Cell("-"),
                "prefill-tok/s": _figure(level.prefill_tokens_per_second, ok),
                "decode-tok/s": _figure(level.decode_tokens_per_second, ok),
                "aggregate-tok/s": _figure(level.aggregate_tokens_per_second, ok),
                "tokens/answer": Cell(f"{per_answer:g}" if per_answer.is_integer() else f"{per_answer:.1f}")
                if ok
                else Cell("-"),
            },
        )
    return "".join(f"{line}\n" for line in lines) + table.render()


def write_report(out: TextIO, report: Report, fmt: str) -> None:
    if fmt == "json":
        out.write(dump(report_json(report), "json"))
    elif fmt == "csv":
        out.write(render_csv(report))
    else:
        out.write(render_table(report))


# ---------------------------------------------------------------------------------------------
# status.benchmark


def benchmark_entry(report: Report, recorded_at: datetime) -> dict[str, Any]:
    """The status.benchmark entry of a report, checked against the API's schema."""
    tier, accelerator, quantization = report.placement
    entry = BenchmarkResult.model_validate(
        {
            "tier": tier,
            "accelerator": accelerator,
            "quantization": quantization,
            "recordedAt": recorded_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": report.model,
            "modelSha256": report.model_sha256 if re.match(SHA256_PATTERN, report.model_sha256) else "",
            "promptTokens": report.result.prompt_tokens,
            "maxTokens": report.plan.max_tokens,
            "loadSeconds": round(report.load_seconds or 0.0, 3),
            "levels": [level_fields(level) for level in report.result.levels],
        }
    )
    return entry.model_dump(by_alias=True)


def record_patch(obj: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that puts `entry` into status.benchmark, replacing the one for the same
    device and quantization; the resourceVersion makes it fail if the object changed since read."""
    key = entry_key(entry)
    recorded = [dict(e) for e in getpath(obj, "status", "benchmark", default=[]) or []]
    replaced = [dict(entry) if entry_key(e) == key else e for e in recorded]
    if not any(entry_key(e) == key for e in recorded):
        replaced.append(dict(entry))
    return {
        "metadata": {"resourceVersion": str(obj["metadata"].get("resourceVersion") or "")},
        "status": {"benchmark": replaced},
    }


def record(ctx: Context, namespace: str, name: str, report: Report, recorded_at: datetime) -> None:
    """Write the report into status.benchmark; refused if the model moved or changed meanwhile."""
    entry = benchmark_entry(report, recorded_at)
    kube = ctx.kube()
    for _ in range(RECORD_ATTEMPTS):
        obj = kube.get_slm(namespace, name)
        now = placement_key(obj)
        digest = str(getpath(obj, "status", "model", "sha256", default="") or "")
        if now != report.placement or digest != report.model_sha256:
            raise CliError(
                f"not recorded: {name} changed during the benchmark (it ran on {'/'.join(report.placement)} "
                f"with model sha256 {report.model_sha256[:12] or '-'}, now {'/'.join(now)} with "
                f"{digest[:12] or '-'}); run `slm bench {name} --record` again"
            )
        if kube.patch_slm_status(namespace, name, record_patch(obj, entry)) is not None:
            return
    raise CliError(
        f"not recorded: {name} kept changing while its status was written ({RECORD_ATTEMPTS} tries); "
        f"run `slm bench {name} --record` again"
    )


# ---------------------------------------------------------------------------------------------
# the command


def concurrency_list(text: str) -> tuple[int, ...]:
    """argparse type of --concurrency: '1,4,8' -> (1, 4, 8)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and 1 <= int(part) <= MAX_CONCURRENCY for part in parts):
        raise argparse.ArgumentTypeError(
            f"takes comma-separated whole numbers from 1 to {MAX_CONCURRENCY}, such as 1,4,8; got {text!r}"
        )
    levels = tuple(dict.fromkeys(int(part) for part in parts))
    if len(levels) > MAX_LEVELS:
        raise argparse.ArgumentTypeError(f"takes at most {MAX_LEVELS} levels; got {len(levels)}")
    return levels


def _whole(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"takes a whole number of at least {low}, got {value}")
        return value

    return parse


non_negative_int = _whole(0)
positive_int = _whole(1)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of seconds, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"takes a positive number of seconds, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="an SLMDeployment, or a catalog model name")
    parser.add_argument(
        "--warmup",
        metavar="N",
        type=non_negative_int,
        default=DEFAULT_WARMUP,
        help=f"requests before measuring, not counted; they size the prompt (default {DEFAULT_WARMUP})",
    )
    parser.add_argument(
        "--epochs",
        metavar="N",
        type=positive_int,
        default=DEFAULT_EPOCHS,
        help=f"rounds per concurrency level (default {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--prompt-tokens",
        metavar="N",
        type=positive_int,
        default=DEFAULT_PROMPT_TOKENS,
        help=f"about this many prompt tokens per request (default {DEFAULT_PROMPT_TOKENS}); "
        "the server's count is shown",
    )
    parser.add_argument(
        "--max-tokens",
        metavar="N",
        type=positive_int,
        default=DEFAULT_MAX_TOKENS,
        help=f"tokens generated per answer at most (default {DEFAULT_MAX_TOKENS})",
    )
    parser.add_argument(
        "--concurrency",
        type=concurrency_list,
        metavar="N,N,...",
        help="requests in flight at once, one level each (default: 1 and spec.optimization.parallelRequests)",
    )
    parser.add_argument(
        "-o", "--output", default="table", choices=("table", "json", "csv"), help="table, json or csv"
    )
    parser.add_argument(
        "--record", action="store_true", help="write the result into status.benchmark (see below)"
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for Ready, and for each answer (default {DEFAULT_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--api-key", metavar="KEY", help="the API key (default: read spec.api.apiKeySecretRef's Secret)"
    )
    parser.add_argument("-y", "--yes", action="store_true", help="deploy a catalog model without asking")
    parser.add_argument(
        "--kubectl", metavar="PATH", help="port-forward with this kubectl (default: in-process, no kubectl)"
    )


def bench_plan(args: argparse.Namespace, obj: Mapping[str, Any]) -> BenchPlan:
    """The flags, with the default levels from the spec, checked against the context window."""
    spec_parallel = int(getpath(obj, "spec", "optimization", "parallelRequests", default=4) or 4)
    concurrency = args.concurrency or ((1, spec_parallel) if spec_parallel > 1 else (1,))
    context = int(getpath(obj, "spec", "optimization", "maxContext", default=4096) or 4096)
    if args.prompt_tokens + args.max_tokens > context:
        raise CliError(
            f"--prompt-tokens {args.prompt_tokens} plus --max-tokens {args.max_tokens} is more than the "
            f"context window of {obj['metadata']['name']} ({context} tokens, spec.optimization.maxContext): "
            "lower them"
        )
    return BenchPlan(args.warmup, args.epochs, args.prompt_tokens, args.max_tokens, tuple(concurrency))


def bench_client(base_url: str, key: str | None, plan: BenchPlan, timeout: float) -> httpx.Client:
    """One client for every stream: enough connections for the highest level, `timeout` per read."""
    most = max(plan.concurrency)
    return httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=most, max_keepalive_connections=most),
    )


def cmd_bench(ctx: Context, stdin: TextIO | None = None, now: Callable[[], datetime] | None = None) -> None:
    args = ctx.args
    obj = resolve(ctx, args.name, yes=args.yes, stdin=stdin or sys.stdin)
    meta = obj["metadata"]
    namespace, name = str(meta["namespace"]), str(meta["name"])
    if not getpath(obj, "spec", "api", "ollama", default=True):
        raise CliError(
            f"{name} does not serve the Ollama API (spec.api.ollama is false): enable it to use `slm bench`"
        )
    plan = bench_plan(args, obj)  # before waiting: a plan that cannot fit says so at once
    if not is_ready(obj):
        obj = wait_ready(ctx, namespace, name, args.timeout)
    key = args.api_key or os.environ.get("SLM_API_KEY") or api_key(ctx, obj)
    with portforward.forward(ctx, obj) as url:
        chat = OllamaChat(url, model_label(obj), key, client=bench_client(url, key, plan, args.timeout))
        try:
            chat.model = chat.served_model()
            load_seconds = runtime_load_seconds(chat.client)
            measured = measure(chat, plan, progress=ctx.warn)
        finally:
            chat.close()
    if load_seconds is None:  # Ollama's meaning: the first request's load_duration
        first = (measured.warmups or measured.samples)[:1]
        load_seconds = first[0].load_duration_ns / 1e9 if first and first[0].load_duration_ns else None
    report = Report(
        name=name,
        namespace=namespace,
        model=chat.model,
        model_sha256=str(getpath(obj, "status", "model", "sha256", default="") or ""),
        placement=placement_key(obj),
        processor=processor(obj),
        plan=plan,
        load_seconds=load_seconds,
        result=summarize(measured.samples),
    )
    write_report(ctx.out, report, args.output)
    result = report.result
    if result.failed:
        first_error = result.errors[0] if result.errors else "unknown"
        raise RequestsFailedError(
            f"{result.failed} of {result.requests} requests failed (first: {first_error})"
            + ("; nothing recorded" if args.record else "")
        )
    if args.record:
        record(ctx, namespace, name, report, (now or (lambda: datetime.now(UTC)))())
        ctx.warn(
            f"recorded in status.benchmark of {name} for {'/'.join(report.placement)}; "
            f"see it with `slm ps -o wide` or `slm show {name}`"
        )
