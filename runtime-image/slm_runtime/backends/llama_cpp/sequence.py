"""One request bound to a llama sequence id: where it stands in the KV cache, and its tokens into text events.

The scheduler moves positions forward and hands each sampled token to `take`; everything a
client sees (text held back for stop strings or incomplete UTF-8, log probabilities released
with their text, the final statistics) is decided here.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from slm_runtime.backends.base import (
    DoneEvent,
    Event,
    GenerationJob,
    GenerationStats,
    PositionLogprobs,
    StopMatcher,
    TokenEvent,
)
from slm_runtime.backends.llama_cpp.native import TokenPieces
from slm_runtime.backends.llama_cpp.sampling import Sampler
from slm_runtime.backends.logprobs import LogprobQueue, position_logprobs

# Why a sequence ended: the model's end-of-generation token, a stop string, the token limit,
# the client went away, or its decode failed.
FinishReason = Literal["stop", "stop_string", "length", "cancelled", "error"]
Outbox = list[tuple[GenerationJob, Event]]


@dataclass(eq=False)
class ActiveSequence:
    """A job bound to one llama sequence id, from admission until it finishes."""

    job: GenerationJob
    seq_id: int
    sampler: Sampler
    max_tokens: int
    started_ns: int
    prompt_pos: int  # prompt tokens already in the KV cache
    cached: list[int]  # the tokens this sequence holds in the KV cache
    reused: int  # prompt tokens found in the slot's cache
    stop: StopMatcher = field(init=False)
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: list[int] = field(default_factory=list)
    first_token_ns: int = 0
    logprobs: LogprobQueue | None = None  # only when the request asks for log probabilities
    # This step: the tokens the sequence put into the batch (its next token, or a prompt chunk),
    # and where its logits are (batch index for llama.cpp's sampler chain, row of the step's logits).
    in_batch: int = 0
    decoding: bool = False
    batch_index: int = -1
    output_row: int = -1

    def __post_init__(self) -> None:
        self.stop = StopMatcher(self.job.options.stop)
        if self.job.options.logprobs:
            self.logprobs = LogprobQueue()

    @property
    def prompt(self) -> list[int]:
        return self.job.prompt_tokens

    @property
    def n_past(self) -> int:
        """The next position: how many tokens the sequence holds in the KV cache."""
        return len(self.cached)

    @property
    def prompt_left(self) -> int:
        return len(self.job.prompt_tokens) - self.prompt_pos

    def undo_step(self) -> None:
        """Takes back what this step put into the batch (its decode failed; the step is retried)."""
        if self.in_batch:
            taken = self.cached[-self.in_batch :]
            del self.cached[-self.in_batch :]
            if self.decoding:
                self.next_token = taken[0]
            else:
                self.prompt_pos -= self.in_batch
        self.in_batch = 0
        self.decoding = False
        self.batch_index = self.output_row = -1

    def take(
        self, token: int, distribution: np.ndarray | None, pieces: TokenPieces, outbox: Outbox
    ) -> FinishReason | None:
        """Handles a sampled token: text out (into `outbox`), and why the sequence ends, if it does."""
        if not self.first_token_ns:
            self.first_token_ns = time.perf_counter_ns()
        self.generated.append(token)
        special = self.job.options.special_tokens
        decoded = self.decoder.decode(pieces(token, special=special))
        text, hit_stop = self.stop.feed(decoded)
        entries: list[PositionLogprobs] = []
        if self.logprobs is not None and distribution is not None:
            top = self.job.options.top_logprobs
            entry = position_logprobs(distribution, token, top, lambda t: pieces(t, special=special))
            self.logprobs.add(entry, len(decoded))
            entries = self.logprobs.release(len(text), stopped=hit_stop)
        if text or entries:
            outbox.append((self.job, TokenEvent(text, tuple(entries))))
        if hit_stop:
            return "stop_string"
        if len(self.generated) >= self.max_tokens:
            return "length"
        self.next_token = token
        return None

    def finish(self, reason: FinishReason, outbox: Outbox) -> None:
        """The held-back tail and the final statistics (nothing for a cancelled or failed sequence)."""
        if reason in ("cancelled", "error"):
            return
        tail = ""
        entries: list[PositionLogprobs] = []
        if reason != "stop_string":  # after a stop string nothing more is said
            tail, hit_stop = self.stop.feed(self.decoder.decode(b"", final=True))
            if not hit_stop:
                tail += self.stop.flush()
            if self.logprobs is not None:
                entries = (
                    self.logprobs.release(len(tail), stopped=True) if hit_stop else self.logprobs.flush()
                )
        if tail or entries:
            outbox.append((self.job, TokenEvent(tail, tuple(entries))))
        now = time.perf_counter_ns()
        first = self.first_token_ns or now
        stats = GenerationStats(
            prompt_tokens=len(self.prompt),
            completion_tokens=len(self.generated),
            done_reason="length" if reason == "length" else "stop",
            queued_ns=self.started_ns - self.job.arrived_at_ns,
            prompt_eval_ns=first - self.started_ns,
            eval_ns=now - first,
            total_ns=now - self.job.arrived_at_ns,
            output_tokens=list(self.generated),
            cached_tokens=self.reused,
        )
        outbox.append((self.job, DoneEvent(stats)))
