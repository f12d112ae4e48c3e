"""Continuous batching: one worker thread runs decode steps over every sequence of one llama context.

Each step carries one token for every sequence that is generating, so a running generation
advances every step, and then prompt tokens of the sequences still reading their prompt, first
come first served, within the step's token budget (`plan_prefill`). Requests that arrived during a
step all join the next one and read their prompts in the same llama_decode as the running tokens;
nobody waits for another request to finish (the way llama.cpp's own server batches its slots).

After the decode, every plain-greedy sequence's token comes from one argmax over the step's
logits; the others run their sampler chain. The step's events reach the asyncio side in one
hand-off (`post_events`), not one wake-up per token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slm_runtime.backends.base import ErrorEvent, GenerationJob, post_events
from slm_runtime.backends.grammars import GrammarCache
from slm_runtime.backends.llama_cpp.native import (
    Batch,
    TokenPieces,
    forget,
    is_end_of_generation,
    output_logits,
)
from slm_runtime.backends.llama_cpp.sampling import build_sampler, greedy_tokens
from slm_runtime.backends.llama_cpp.sequence import ActiveSequence, FinishReason, Outbox
from slm_runtime.backends.logprobs import log_softmax

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepPlan:
    """What one decode step carried: the sequences that decoded their next token, then prompt chunks."""

    admitted: tuple[int, ...]  # sequence ids that joined at this step
    decoding: tuple[int, ...]  # sequence ids
    prefill: tuple[tuple[int, int], ...]  # (sequence id, prompt tokens)


def plan_prefill(prompt_left: Sequence[int], room: int, target: int) -> list[int]:
    """Prompt tokens for each sequence still reading its prompt (in arrival order) this step.

    First come, first served: the earliest prompt goes first, as much of it as the step has room
    for; the next ones join only while the step holds fewer than `target` prompt tokens. Past the
    target, prompt reading runs at (nearly) full speed, and a bigger step would only make the
    earlier prompts, and every running sequence, wait for the later ones.
    """
    chunks: list[int] = []
    taken = 0
    for left in prompt_left:
        take = min(left, room - taken) if taken < target else 0
        chunks.append(max(0, take))
        taken += max(0, take)
    return chunks


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchScheduler:
    """Admits jobs into `parallel` sequences of `ctx` and runs them, `step_tokens` tokens per decode at
    most, adding waiting prompts to a step while it holds fewer than `prefill_target` prompt tokens."""

    def __init__(
        self,
        ctx: Any,
        vocab: Any,
        pieces: TokenPieces,
        grammars: GrammarCache,
        *,
        parallel: int,
        step_tokens: int,
        prefill_target: int,
        context_length: int,
        n_vocab: int,
    ) -> None:
        self._ctx = ctx
        self._vocab = vocab
        self._pieces = pieces
        self._grammars = grammars
        self._context_length = context_length
        self._n_vocab = n_vocab
        self._batch = Batch(max(step_tokens, parallel))  # room for every sequence's next token
        self._prefill_target = prefill_target
        self._pending: deque[GenerationJob] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._free_seq_ids = list(range(parallel))
        # What each idle slot still holds in the KV cache: a new prompt sharing a prefix with it
        # (a conversation's next turn, a common system prompt) skips recomputing that prefix.
        self._slot_cache: dict[int, list[int]] = {i: [] for i in range(parallel)}
        # Called with each step's plan before its decode (tests read the scheduling from it).
        self.observer: Callable[[StepPlan], None] | None = None
        self._worker = threading.Thread(target=self._run, name="llama-batch", daemon=True)
        self._worker.start()

    def enqueue(self, job: GenerationJob) -> None:
        """Queues a checked job; it joins the next step that has a free sequence for it."""
        with self._wake:
            self._pending.append(job)
            self._wake.notify()

    def stop(self, timeout: float) -> None:
        """Fails what is queued or running ("server is shutting down") and ends the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._worker.join(timeout=timeout)

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        running: dict[int, ActiveSequence] = {}  # by sequence id, in admission order
        while True:
            outbox: Outbox = []
            try:
                if not self._step(running, outbox):
                    return
            except Exception as exc:  # never let one bad step kill the worker: fail what ran, go on
                log.exception("generation step failed")
                for seq in list(running.values()):
                    outbox.append((seq.job, ErrorEvent(f"generation failed: {exc}")))
                    self._finish(running, seq, "error", outbox)
            finally:
                post_events(outbox)

    def _step(self, running: dict[int, ActiveSequence], outbox: Outbox) -> bool:
        """One decode step over all running sequences; False when the scheduler is stopping."""
        with self._wake:
            while not self._pending and not running and not self._stopping:
                self._wake.wait()
            if self._stopping:
                for job in self._pending:
                    outbox.append((job, ErrorEvent("server is shutting down")))
                self._pending.clear()
                for seq in list(running.values()):
                    outbox.append((seq.job, ErrorEvent("server is shutting down")))
                    self._finish(running, seq, "cancelled", outbox)
                return False
            admitted = self._admit(running, outbox)
        for seq in [s for s in running.values() if s.job.cancelled.is_set()]:
            self._finish(running, seq, "cancelled", outbox)
        if not running:
            return True
        plan = self._fill(running, admitted)
        if self.observer is not None:
            self.observer(plan)
        rc = self._batch.decode(self._ctx)
        if rc != 0:
            self._decode_failed(running, rc, outbox)
            return True
        self._sample(running, outbox)
        return True

    def _admit(self, running: dict[int, ActiveSequence], outbox: Outbox) -> tuple[int, ...]:
        """Every waiting job that a free sequence can take joins now (called holding `_wake`)."""
        admitted: list[int] = []
        while self._pending and self._free_seq_ids:
            job = self._pending.popleft()
            if job.cancelled.is_set():
                continue
            try:
                sampler = build_sampler(
                    job.options, self._grammars, n_vocab=self._n_vocab, context_length=self._context_length
                )
            except Exception as exc:  # this request's problem: fail it alone, before it joins the batch
                outbox.append((job, ErrorEvent(str(exc))))
                continue
            prompt = job.prompt_tokens
            room = self._context_length - len(prompt)
            max_tokens = room if job.options.max_tokens < 0 else min(job.options.max_tokens, room)
            seq_id = max(self._free_seq_ids, key=lambda s: common_prefix(self._slot_cache[s], prompt))
            self._free_seq_ids.remove(seq_id)
            held = self._slot_cache[seq_id]
            # Keep the shared prefix, but always decode at least the prompt's last token (for its logits).
            keep = min(common_prefix(held, prompt), len(prompt) - 1)
            if keep < len(held) and not forget(self._ctx, seq_id, keep):
                forget(self._ctx, seq_id)
                keep = 0
            running[seq_id] = ActiveSequence(
                job=job,
                seq_id=seq_id,
                sampler=sampler,
                max_tokens=max_tokens,
                started_ns=time.perf_counter_ns(),
                prompt_pos=keep,
                cached=prompt[:keep],
                reused=keep,
            )
            admitted.append(seq_id)
        return tuple(admitted)

    def _fill(self, running: dict[int, ActiveSequence], admitted: tuple[int, ...]) -> StepPlan:
        """Puts this step's tokens into the batch: every next token first, then prompt chunks."""
        batch = self._batch
        batch.clear()
        decoding: list[int] = []
        reading: list[ActiveSequence] = []
        for seq in running.values():
            seq.in_batch, seq.decoding, seq.batch_index, seq.output_row = 0, False, -1, -1
            if seq.next_token is None:
                reading.append(seq)
                continue
            seq.output_row = batch.output_rows
            seq.batch_index = batch.add(seq.next_token, seq.n_past, seq.seq_id, output=True)
            seq.cached.append(seq.next_token)
            seq.next_token = None
            seq.in_batch, seq.decoding = 1, True
            decoding.append(seq.seq_id)
        prefill: list[tuple[int, int]] = []
        for seq, take in zip(
            reading,
            plan_prefill([s.prompt_left for s in reading], batch.room, self._prefill_target),
            strict=True,
        ):
            if take == 0:
                continue
            chunk = seq.prompt[seq.prompt_pos : seq.prompt_pos + take]
            last = take == seq.prompt_left
            row = batch.output_rows
            index = batch.add_span(chunk, seq.n_past, seq.seq_id, outputs="last" if last else "none")
            if last:
                seq.batch_index, seq.output_row = index, row
            seq.cached.extend(chunk)
            seq.prompt_pos += take
            seq.in_batch = take
            prefill.append((seq.seq_id, take))
        return StepPlan(admitted, tuple(decoding), tuple(prefill))

    def _sample(self, running: dict[int, ActiveSequence], outbox: Outbox) -> None:
        """Next tokens for the sequences whose logits this step produced, and their text."""
        ready = [seq for seq in running.values() if seq.output_row >= 0]
        logits = output_logits(self._ctx, self._batch.output_rows, self._n_vocab)
        greedy = greedy_tokens(logits) if any(seq.sampler.greedy for seq in ready) else []
        for seq in ready:
            if seq.job.cancelled.is_set():
                self._finish(running, seq, "cancelled", outbox)
                continue
            # Read before sampling, which must not be able to change what is reported.
            distribution = log_softmax(logits[seq.output_row]) if seq.logprobs is not None else None
            if seq.sampler.greedy:
                token = greedy[seq.output_row]
            else:
                token = seq.sampler.sample(self._ctx, seq.batch_index)
            if is_end_of_generation(self._vocab, token):
                seq.first_token_ns = seq.first_token_ns or time.perf_counter_ns()
                self._finish(running, seq, "stop", outbox)
                continue
            reason = seq.take(token, distribution, self._pieces, outbox)
            if reason is not None:
                self._finish(running, seq, reason, outbox)

    def _finish(
        self, running: dict[int, ActiveSequence], seq: ActiveSequence, reason: FinishReason, outbox: Outbox
    ) -> None:
        """Frees the sequence id; its KV cells stay as a prefix cache unless the step failed ("error")."""
        if reason == "error":
            forget(self._ctx, seq.seq_id)
            seq.cached = []
        self._slot_cache[seq.seq_id] = seq.cached
        seq.sampler.close()
        del running[seq.seq_id]
        self._free_seq_ids.append(seq.seq_id)
        seq.finish(reason, outbox)

    def _decode_failed(self, running: dict[int, ActiveSequence], rc: int, outbox: Outbox) -> None:
        """Fails the sequences whose tokens broke the step; the others go back to retry it.

        Only when no sequence can be blamed (e.g. a backend fault) does every running one fail.
        """
        message = "the KV cache is full" if rc == 1 else f"llama_decode failed ({rc})"
        n_vocab = self._n_vocab
        culprits = [
            seq
            for seq in running.values()
            if seq.in_batch and any(not 0 <= t < n_vocab for t in seq.cached[-seq.in_batch :])
        ]
        if culprits:
            message = f"the prompt holds a token id outside the vocabulary ({message})"
        else:
            culprits = list(running.values())
        log.error("decode failed: %s; failing %d of %d sequences", message, len(culprits), len(running))
        for seq in culprits:
            outbox.append((seq.job, ErrorEvent(message)))
            self._finish(running, seq, "error", outbox)
        for seq in running.values():
            seq.undo_step()
            # After some failures llama.cpp keeps the ubatches it managed; drop them, they are redone.
            forget(self._ctx, seq.seq_id, seq.n_past)
