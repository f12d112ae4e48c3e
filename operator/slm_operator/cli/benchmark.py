"""The measurement of `slm bench`: the synthetic prompt, the timed streams and the arithmetic.

Warmup requests first (not counted; they also size the prompt to about the tokens asked), then for
each concurrency level, `epochs` rounds of that many streamed chats started together, on threads
sharing one HTTP client. The client clocks the time to the first token; the server's final chunk
gives the counts and durations of prompt processing (prompt_eval_*) and generation (eval_*).
`summarize` turns the samples into figures and is pure; `measure` is the thin I/O around it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from slm_operator.cli.bench_status import PlacementKey, milliseconds
from slm_operator.cli.errors import CliError
from slm_operator.cli.ollama_client import Chunk, Message
from slm_operator.cli.output import getpath

ChatFn = Callable[[list[Message], dict[str, Any]], Iterator[Chunk]]
Clock = Callable[[], float]


# ---------------------------------------------------------------------------------------------
# the synthetic prompt

# Common words that most tokenizers hold as one token each (with their leading space).
FILLER_WORDS = (
    "time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child",
    "world", "school", "state", "family", "student", "group", "country", "problem", "hand", "part",
    "place", "case", "week", "company", "system", "program", "question", "work", "number", "night",
    "point", "home", "water", "room", "mother", "area", "money", "story", "fact", "month",
    "lot", "right", "study", "book", "eye", "job", "word", "business", "issue", "side",
)  # fmt: skip
# A first guess at the tokens of the chat template and the instruction; the warmups correct it.
PROMPT_OVERHEAD_TOKENS = 40


def synthetic_prompt(number: int, words: int) -> str:
    """Request `number`'s prompt: the same filler for every request, behind a number of its own
    (a shared beginning would let the runtime reuse the cached prompt instead of processing it)."""
    filler = " ".join(FILLER_WORDS[(i * 17) % len(FILLER_WORDS)] for i in range(words))
    return f"Request {number}. Continue this list of words for as long as you can: {filler}"


def initial_filler_words(prompt_tokens: int) -> int:
    return max(1, prompt_tokens - PROMPT_OVERHEAD_TOKENS)


def next_filler_words(measured: Sequence[tuple[int, int]], target: int) -> int:
    """Filler words for about `target` prompt tokens, from (filler words, tokens counted) so far.

    A straight line through the last two different measurements (tokens per word, the template's
    share); with one, the tokens beyond the guessed overhead are taken as the words' share.
    """
    if not measured:
        return initial_filler_words(target)
    words, tokens = measured[-1]
    earlier = [m for m in measured if m[0] != words]
    if earlier:
        slope = (tokens - earlier[-1][1]) / (words - earlier[-1][0])
    else:
        slope = (tokens - PROMPT_OVERHEAD_TOKENS) / words
    if slope <= 0:
        slope = 1.0
    return max(1, words + round((target - tokens) / slope))


def request_options(max_tokens: int) -> dict[str, Any]:
    """Greedy, `max_tokens` at most; no stop strings (the spec's defaults could end answers early).
    The runtime has no ignore-EOS option: an answer the model ends is counted as it is."""
    return {"temperature": 0, "num_predict": max_tokens, "stop": []}


# ---------------------------------------------------------------------------------------------
# the arithmetic (pure)


@dataclass(frozen=True)
class Sample:
    """One request: the client's clock readings (seconds) and the server's final statistics."""

    concurrency: int
    epoch: int
    started: float
    ended: float
    first_token: float | None = None  # when the first answer text arrived
    prompt_eval_count: int = 0
    prompt_eval_duration_ns: int = 0
    eval_count: int = 0
    eval_duration_ns: int = 0
    load_duration_ns: int = 0
    error: str = ""


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    ttft_ms: float  # median over the requests that produced a token
    ttft_p95_ms: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float  # one stream's rate
    aggregate_tokens_per_second: float  # all streams together
    generated_tokens: int
    wall_seconds: float  # the epochs' wall time, summed


@dataclass(frozen=True)
class BenchResult:
    levels: tuple[LevelResult, ...]
    prompt_tokens: int  # median prompt_eval_count of the successful requests
    errors: tuple[str, ...]  # distinct error messages, first seen first

    @property
    def failed(self) -> int:
        return sum(level.errors for level in self.levels)

    @property
    def requests(self) -> int:
        return sum(level.requests for level in self.levels)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between ranks (numpy's default); 0 when empty."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _rate(count: int, duration_ns: int) -> float:
    return count / (duration_ns / 1e9) if duration_ns > 0 else 0.0


def summarize_level(samples: Sequence[Sample]) -> LevelResult:
    """One concurrency level's figures (its samples share `concurrency`)."""
    ok = [s for s in samples if not s.error]
    ttfts = [(s.first_token - s.started) * 1000 for s in ok if s.first_token is not None]
    epochs: dict[int, list[Sample]] = {}
    for sample in samples:
        epochs.setdefault(sample.epoch, []).append(sample)
    wall = sum(max(s.ended for s in group) - min(s.started for s in group) for group in epochs.values())
    generated = sum(s.eval_count for s in ok)
    prefill = [s for s in ok if s.prompt_eval_duration_ns > 0]
    decode = [s for s in ok if s.eval_duration_ns > 0]
    return LevelResult(
        concurrency=samples[0].concurrency if samples else 0,
        requests=len(samples),
        errors=len(samples) - len(ok),
        ttft_ms=percentile(ttfts, 50),
        ttft_p95_ms=percentile(ttfts, 95),
        prefill_tokens_per_second=_rate(
            sum(s.prompt_eval_count for s in prefill), sum(s.prompt_eval_duration_ns for s in prefill)
        ),
        decode_tokens_per_second=_rate(
            sum(s.eval_count for s in decode), sum(s.eval_duration_ns for s in decode)
        ),
        aggregate_tokens_per_second=generated / wall if wall > 0 else 0.0,
        generated_tokens=generated,
        wall_seconds=wall,
    )


def summarize(samples: Sequence[Sample]) -> BenchResult:
    """The benchmark's figures from its measured samples (warmups left out), levels in order."""
    by_level: dict[int, list[Sample]] = {}
    for sample in samples:
        by_level.setdefault(sample.concurrency, []).append(sample)
    prompts = [s.prompt_eval_count for s in samples if not s.error]
    errors = tuple(dict.fromkeys(s.error for s in samples if s.error))
    return BenchResult(
        levels=tuple(summarize_level(group) for group in by_level.values()),
        prompt_tokens=math.floor(percentile(prompts, 50) + 0.5) if prompts else 0,
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------
# the requests (threads over one HTTP client)


@dataclass(frozen=True)
class BenchPlan:
    warmup: int
    epochs: int
    prompt_tokens: int
    max_tokens: int
    concurrency: tuple[int, ...]


@dataclass(frozen=True)
class Measurement:
    warmups: tuple[Sample, ...]
    samples: tuple[Sample, ...]
    filler_words: int


def timed_request(
    chat: ChatFn, prompt: str, options: Mapping[str, Any], *, concurrency: int, epoch: int, clock: Clock
) -> Sample:
    """One streamed chat, clocked; a failure is a Sample with its error, never an exception."""
    started = clock()
    first: float | None = None
    final: Chunk = {}
    try:
        stream = chat([{"role": "user", "content": prompt}], dict(options))
        try:
            for chunk in stream:
                if first is None and getpath(chunk, "message", "content", default=""):
                    first = clock()
                if chunk.get("done"):
                    final = chunk
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()
    except CliError as error:
        return Sample(concurrency, epoch, started, clock(), first, error=error.message)
    except ValueError as error:  # a line that is not JSON
        return Sample(concurrency, epoch, started, clock(), first, error=f"unreadable answer: {error}")
    ended = clock()
    if not final:
        return Sample(concurrency, epoch, started, ended, first, error="the answer ended without statistics")
    return Sample(
        concurrency,
        epoch,
        started,
        ended,
        first,
        prompt_eval_count=int(final.get("prompt_eval_count") or 0),
        prompt_eval_duration_ns=int(final.get("prompt_eval_duration") or 0),
        eval_count=int(final.get("eval_count") or 0),
        eval_duration_ns=int(final.get("eval_duration") or 0),
        load_duration_ns=int(final.get("load_duration") or 0),
    )


def measure(
    chat: ChatFn,
    plan: BenchPlan,
    *,
    progress: Callable[[str], None] = lambda _: None,
    clock: Clock = time.perf_counter,
) -> Measurement:
    """The warmups (one at a time; the first failure stops the benchmark), then every level."""
    options = request_options(plan.max_tokens)
    words = initial_filler_words(plan.prompt_tokens)
    sizes: list[tuple[int, int]] = []
    warmups: list[Sample] = []
    for number in range(plan.warmup):
        sample = timed_request(
            chat, synthetic_prompt(number, words), options, concurrency=1, epoch=-1, clock=clock
        )
        if sample.error:
            raise CliError(f"warmup request {number + 1} failed: {sample.error}")
        warmups.append(sample)
        progress(
            f"warmup {number + 1}/{plan.warmup}: {sample.prompt_eval_count} prompt tokens, "
            f"{sample.eval_count} generated in {sample.ended - sample.started:.2f}s"
        )
        sizes.append((words, sample.prompt_eval_count))
        words = next_filler_words(sizes, plan.prompt_tokens)
    samples: list[Sample] = []
    number = plan.warmup
    for concurrency in plan.concurrency:
        level: list[Sample] = []
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="slm-bench")
        try:
            for epoch in range(plan.epochs):
                prompts = [synthetic_prompt(number + i, words) for i in range(concurrency)]
                number += concurrency
                futures = [
                    pool.submit(
                        timed_request, chat, p, options, concurrency=concurrency, epoch=epoch, clock=clock
                    )
                    for p in prompts
                ]
                level += [future.result() for future in futures]
        finally:
            # Not waiting: on Ctrl-C the caller closes the client, which ends the streams in flight.
            pool.shutdown(wait=False, cancel_futures=True)
        samples += level
        done = summarize_level(level)
        progress(
            f"concurrency {concurrency}: {done.requests} requests, {done.errors} failed, "
            f"TTFT {milliseconds(done.ttft_ms)}, {done.aggregate_tokens_per_second:.1f} tok/s in all"
        )
    return Measurement(tuple(warmups), tuple(samples), words)


def runtime_load_seconds(client: httpx.Client) -> float | None:
    """How long the runtime took to load the model (/readyz says it); None when it does not say."""
    try:
        response = client.get("/readyz")
        value = response.json().get("load_seconds") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


# ---------------------------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class Report:
    """A benchmark as printed and recorded: what was measured, how, and the figures."""

    name: str
    namespace: str
    model: str
    model_sha256: str
    placement: PlacementKey
    processor: str  # as `slm ps` shows it, e.g. GPU (nvidia)
    plan: BenchPlan
    load_seconds: float | None
    result: BenchResult


def level_fields(level: LevelResult) -> dict[str, Any]:
    """A level as JSON, CSV and status.benchmark have it (the same names, rounded)."""
    return {
        "concurrency": level.concurrency,
        "requests": level.requests,
        "errors": level.errors,
        "ttftMs": round(level.ttft_ms, 1),
        "ttftP95Ms": round(level.ttft_p95_ms, 1),
        "prefillTokensPerSecond": round(level.prefill_tokens_per_second, 1),
        "decodeTokensPerSecond": round(level.decode_tokens_per_second, 1),
        "aggregateTokensPerSecond": round(level.aggregate_tokens_per_second, 1),
        "generatedTokens": level.generated_tokens,
        "wallSeconds": round(level.wall_seconds, 3),
    }


def report_json(report: Report) -> dict[str, Any]:
    tier, accelerator, quantization = report.placement
    return {
        "name": report.name,
        "namespace": report.namespace,
        "model": report.model,
        "modelSha256": report.model_sha256,
        "tier": tier,
        "accelerator": accelerator,
        "quantization": quantization,
        "loadSeconds": None if report.load_seconds is None else round(report.load_seconds, 3),
        "promptTokens": report.result.prompt_tokens,
        "promptTokensAsked": report.plan.prompt_tokens,
        "maxTokens": report.plan.max_tokens,
        "warmup": report.plan.warmup,
        "epochs": report.plan.epochs,
        "levels": [level_fields(level) for level in report.result.levels],
        "errors": list(report.result.errors),
    }
