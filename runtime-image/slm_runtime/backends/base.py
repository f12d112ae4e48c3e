"""What every backend offers the HTTP layer: generation jobs streamed from a worker, embeddings, metadata."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

DoneReason = Literal["stop", "length", "cancelled"]


class BackendError(Exception):
    """A request the backend cannot serve; the message is safe to show to the client.

    `param` names the request field at fault, when one is.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceededError(BackendError):
    """The prompt does not fit the context window."""


def check_prompt(
    prompt_tokens: Sequence[int], *, generative: bool, context_length: int, vocab_size: int = 0
) -> None:
    """What every backend refuses before generating: no generator, no prompt, no room, unknown ids."""
    if not generative:
        raise BackendError("this model only supports embeddings")
    if not prompt_tokens:
        raise BackendError("prompt is empty")
    if len(prompt_tokens) >= context_length:
        raise ContextLengthExceededError(
            f"prompt is {len(prompt_tokens)} tokens; the context window is {context_length}"
        )
    if vocab_size:  # an id outside the vocabulary fails the whole decode step, other requests' too
        bad = next((t for t in prompt_tokens if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise BackendError(f"token id {bad} is outside the model's vocabulary (0 to {vocab_size - 1})")


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling and stopping parameters, already merged from defaults and the request."""

    max_tokens: int = -1  # -1: until the context is full
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_mode: bool = False
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None  # GBNF with root rule `root` (a forced tool call); wins over the JSON fields
    special_tokens: bool = False  # show special tokens' text (tool-call markers are often special tokens)
    # Not sampling but what is reported of it: each generated token's log probability, and this
    # many most likely alternatives at its position (0 to 20).
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    done_reason: DoneReason
    queued_ns: int  # arrival until the backend started on it
    prompt_eval_ns: int  # start until the first token was sampled
    eval_ns: int  # first token until done
    total_ns: int
    output_tokens: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens reused from the KV cache instead of recomputed


@dataclass(frozen=True)
class TokenLogprob:
    """A token and its log probability (natural log, so <= 0) under the model at one position."""

    token: str  # the token's text; "bytes:\\xe4\\xb8" when its bytes are not whole UTF-8
    logprob: float
    bytes: tuple[int, ...]  # the token's exact UTF-8 bytes (a character may span tokens)


@dataclass(frozen=True)
class PositionLogprobs:
    """One generated token and the most likely tokens at its position, most likely first."""

    chosen: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass
class TokenEvent:
    """Text as it is released, with the log probabilities of the tokens that produced it (when asked).

    Text held back (a possible stop string, an incomplete UTF-8 character) releases its tokens'
    entries later, with the text; tokens cut off by a stop string have none.
    """

    text: str
    logprobs: tuple[PositionLogprobs, ...] = ()


@dataclass
class DoneEvent:
    stats: GenerationStats


@dataclass
class ErrorEvent:
    message: str


Event = TokenEvent | DoneEvent | ErrorEvent


class GenerationJob:
    """One request's generation, handed from the event loop to a backend worker thread.

    The worker calls `emit_*` (thread-safe); the HTTP layer awaits `next_event()`.
    Setting `cancelled` (client gone) makes the worker stop and free the sequence.
    """

    def __init__(
        self,
        prompt_tokens: Sequence[int],
        options: SamplingOptions,
        loop: asyncio.AbstractEventLoop,
        arrived_at_ns: int | None = None,
    ) -> None:
        self.prompt_tokens = list(prompt_tokens)
        self.options = options
        self.cancelled = threading.Event()
        self.arrived_at_ns = arrived_at_ns if arrived_at_ns is not None else time.perf_counter_ns()
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def _put(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def emit_token(self, text: str, logprobs: Sequence[PositionLogprobs] = ()) -> None:
        self._put(TokenEvent(text, tuple(logprobs)))

    def emit_done(self, stats: GenerationStats) -> None:
        self._put(DoneEvent(stats))

    def emit_error(self, message: str) -> None:
        self._put(ErrorEvent(message))

    async def next_event(self) -> Event:
        return await self._events.get()


def post_events(events: Sequence[tuple[GenerationJob, Event]]) -> None:
    """Hands a worker's events to their jobs, in order, waking each event loop once for all of them
    (a batch step produces one event per sequence; one wake-up each would cost a syscall apiece)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationJob, Event]]] = {}
    for job, event in events:
        by_loop.setdefault(job._loop, []).append((job, event))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for job, _ in batch:
                job.cancelled.set()


def _deliver(events: list[tuple[GenerationJob, Event]]) -> None:
    for job, event in events:
        job._events.put_nowait(event)


@dataclass(frozen=True)
class ModelDetails:
    """What /api/show, /api/tags and /readyz report about the loaded model."""

    format: Literal["gguf", "onnx"]
    family: str
    parameter_size: str
    quantization_level: str
    size_bytes: int
    context_length: int
    capabilities: tuple[str, ...]
    model_info: dict[str, Any]
    chat_template: str
    backend: str
    device: str
    execution_provider: str
    warnings: tuple[str, ...] = ()
    vocab_size: int = 0  # token ids run 0..vocab_size-1; 0 = unknown (nothing to check against)


class Backend(Protocol):
    details: ModelDetails

    def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str: ...

    def validate(self, prompt_tokens: Sequence[int], options: SamplingOptions) -> None:
        """Raises BackendError when the request cannot run (checked before a response starts)."""
        ...

    def submit(self, job: GenerationJob) -> None:
        """Start a job; events arrive on the job. Called only when a slot is free."""
        ...

    def embed(self, texts: Sequence[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Blocking: unit-length vectors and the number of tokens read."""
        ...

    def close(self) -> None: ...


def format_parameter_count(count: int) -> str:
    """Ollama's parameter_size text, e.g. 7.6B, 494M, 3M."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.0f}M"
    return f"{count / 1e3:.0f}K"


class StopMatcher:
    """Streams text while holding back any tail that could start a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self._stops:
            return text, False
        self._pending += text
        first_hit = min(
            (i for i in (self._pending.find(s) for s in self._stops) if i >= 0),
            default=-1,
        )
        if first_hit >= 0:
            out = self._pending[:first_hit]
            self._pending = ""
            return out, True
        hold = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:length]):
                    hold = max(hold, length)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
