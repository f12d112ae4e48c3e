"""GGUF models through llama-cpp-python's low-level API, with continuous batching.

One llama context holds up to `parallel_requests` sequences. A worker thread runs decode steps;
each step carries one token for every sequence that is generating plus prompt chunks of sequences
that are still reading their prompt, so new requests join between steps and nobody waits for
another request to finish (the way llama.cpp's own server batches its slots).

Past 400 lines: native calls, the batch scheduler, sampling, chat rendering and embeddings are
still one class; splitting them into `backends/llama_cpp/` is the redesign's step (issue 10).
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._logger  # installs the log callback that honours the "llama-cpp-python" logger level
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import _internals as _llama_internals
from llama_cpp._utils import suppress_stdout_stderr

from slm_runtime.backends.base import (
    BackendError,
    ContextLengthExceededError,
    GenerationJob,
    GenerationStats,
    ModelDetails,
    PositionLogprobs,
    SamplingOptions,
    StopMatcher,
    check_prompt,
    format_parameter_count,
)
from slm_runtime.backends.grammars import GrammarCache
from slm_runtime.backends.logprobs import LogprobQueue, log_softmax, position_logprobs
from slm_runtime.gguf_header import FILE_TYPE_NAMES
from slm_runtime.settings import ServeSettings

log = logging.getLogger(__name__)
# llama-cpp-python's internal wrappers are untyped; use them as Any so the rest stays strictly typed.
_internals: Any = _llama_internals

_KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}
_FLASH = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
# Encoder-only architectures: embeddings, no text generation.
_EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder"}
# Used when the model carries no chat template (ChatML, which most small instruct models know).
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise_template_error(message: str) -> None:
    raise BackendError(f"chat template: {message}")


@dataclass
class _Sequence:
    """A job bound to one llama sequence id."""

    job: GenerationJob
    seq_id: int
    sampler: Any  # _internals.LlamaSampler
    max_tokens: int
    started_ns: int
    stop: StopMatcher
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    prompt_pos: int = 0  # prompt tokens already in the KV cache
    n_past: int = 0
    cached: list[int] = field(default_factory=list)  # the tokens this sequence holds in the KV cache
    reused: int = 0  # prompt tokens found in the slot's cache
    next_token: int | None = None  # sampled, to be decoded in the next step
    generated: list[int] = field(default_factory=list)
    first_token_ns: int = 0
    batch_index: int = -1  # where this sequence's logits are in the current batch
    logprobs: LogprobQueue | None = None  # only when the request asks for log probabilities


class LlamaCppBackend:
    """Loads a GGUF and serves generation (continuous batching) and embeddings."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        verbose = settings.log_level == "debug"
        # llama-cpp-python routes llama.cpp's log through this logger's level; keep load chatter out.
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.WARNING)
        llama_cpp.llama_backend_init()
        warnings: list[str] = []
        model_params = llama_cpp.llama_model_default_params()
        gpu = llama_cpp.llama_supports_gpu_offload()
        if settings.device == "gpu" and not gpu:
            warnings.append("device gpu requested but this llama.cpp build has no GPU support; using CPU")
        model_params.n_gpu_layers = (settings.gpu_layers if settings.gpu_layers >= 0 else 999) if gpu else 0
        self._model = _internals.LlamaModel(
            path_model=str(settings.model), params=model_params, verbose=verbose
        )
        self._vocab = self._model.vocab
        self._grammars = GrammarCache(self._vocab)
        self._metadata = self._model.metadata()
        arch = self._metadata.get("general.architecture", "")
        self._generative = arch not in _EMBEDDING_ARCHS
        self._threads = settings.effective_threads()
        self._context_length = min(
            settings.context_length, self._model.n_ctx_train() or settings.context_length
        )
        self._parallel = settings.parallel_requests
        kv_type = settings.kv_cache_type
        if kv_type != "f16" and settings.flash_attention == "off":
            # llama.cpp needs flash attention for a quantized V cache; Ollama falls back the same way.
            warnings.append(f"kv_cache_type {kv_type} needs flash attention; using f16")
            kv_type = "f16"
        self._ctx: Any = None
        self._batch: Any = None
        self._batch_capacity = max(settings.batch_size, self._parallel)
        if self._generative:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self._context_length * self._parallel
            params.n_batch = self._batch_capacity
            params.n_ubatch = min(self._batch_capacity, 512)
            params.n_seq_max = self._parallel
            params.n_threads = self._threads
            params.n_threads_batch = self._threads
            params.flash_attn_type = _FLASH[settings.flash_attention]
            params.type_k = _KV_TYPES[kv_type]
            params.type_v = _KV_TYPES[kv_type]
            params.kv_unified = True  # one KV pool shared by all slots, like llama-server
            params.no_perf = True
            with suppress_stdout_stderr(disable=verbose):  # llama.cpp prints context details to fd 2
                self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=verbose)
            self._batch = _internals.LlamaBatch(n_tokens=self._batch_capacity, embd=0, n_seq_max=1)
        # Embeddings get their own context, created on first use (it costs memory only when used).
        self._embed_enabled = not self._generative or settings.embeddings is not False
        self._embed_ctx: Any = None
        self._embed_length = min(self._context_length, 2048)
        self._embed_lock = threading.Lock()
        self._verbose = verbose
        self._chat_template = settings.chat_template or self._metadata.get("tokenizer.chat_template", "")
        self._jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._jinja.globals["raise_exception"] = _raise_template_error
        self._template = self._jinja.from_string(self._chat_template or _FALLBACK_TEMPLATE)
        self._bos_text = self._piece(self._model.token_bos(), special=True).decode("utf-8", "replace")
        self._eos_text = self._piece(self._model.token_eos(), special=True).decode("utf-8", "replace")
        self._add_bos = self._model.add_bos_token()

        capabilities = (["completion"] if self._generative else []) + (
            ["embedding"] if self._embed_enabled else []
        )
        file_type = int(self._metadata.get("general.file_type", "-1") or -1)
        self.details = ModelDetails(
            format="gguf",
            family=arch or "unknown",
            parameter_size=format_parameter_count(self._model.n_params()),
            quantization_level=FILE_TYPE_NAMES.get(file_type, "unknown"),
            size_bytes=Path(settings.model).stat().st_size,
            context_length=self._context_length,
            capabilities=tuple(capabilities),
            model_info=_typed_metadata(self._metadata),
            chat_template=self._chat_template,
            backend="llama-cpp",
            device="gpu" if gpu and model_params.n_gpu_layers > 0 else "cpu",
            execution_provider="",
            warnings=tuple(warnings),
            vocab_size=self._model.n_vocab(),
        )
        for warning in warnings:
            log.warning(warning)

        self._pending: deque[GenerationJob] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._free_seq_ids = list(range(self._parallel))
        # What each idle slot still holds in the KV cache: a new prompt sharing a prefix with it
        # (a conversation's next turn, a common system prompt) skips recomputing that prefix.
        self._slot_cache: dict[int, list[int]] = {i: [] for i in range(self._parallel)}
        self._worker: threading.Thread | None = None
        if self._generative:
            self._worker = threading.Thread(target=self._run, name="llama-batch", daemon=True)
            self._worker.start()

    # -- text ------------------------------------------------------------------------------------

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buffer = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 256, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
        return buffer.raw[: max(n, 0)]

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        add_bos = add_special and self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        tokens: list[int] = self._model.tokenize(text.encode("utf-8"), add_bos, True)
        return tokens

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        try:
            rendered: str = self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self._bos_text,
                eos_token=self._eos_text,
            )
        except BackendError:
            raise
        except Exception as exc:  # a broken template is the model's or the operator's fault, say which
            raise BackendError(f"chat template failed: {exc}") from exc
        return rendered

    # -- generation --------------------------------------------------------------------------------

    def validate(self, prompt_tokens: Sequence[int], options: SamplingOptions) -> None:
        check_prompt(
            prompt_tokens,
            generative=self._generative,
            context_length=self._context_length,
            vocab_size=self.details.vocab_size,
        )
        self._grammars.get(options)  # a bad schema fails the request here, not in the worker

    def submit(self, job: GenerationJob) -> None:
        self.validate(job.prompt_tokens, job.options)
        with self._wake:
            self._pending.append(job)
            self._wake.notify()

    def _sampler_for(self, options: SamplingOptions) -> Any:
        grammar = self._grammars.get(options)  # compiled (and cached) when the request was checked
        sampler = _internals.LlamaSampler()
        if grammar is not None:  # the chain owns the grammar sampler from here on
            llama_cpp.llama_sampler_chain_add(sampler.sampler, self._grammars.sampler(grammar))
        if (
            options.repeat_penalty != 1.0
            or options.frequency_penalty != 0.0
            or options.presence_penalty != 0.0
        ):
            sampler.add_penalties(
                self._model.n_vocab(),
                # A ring buffer of this many tokens; the request edge clamps it already, this guards other callers.
                max(0, min(options.repeat_last_n, self._context_length)),
                options.repeat_penalty,
                options.frequency_penalty,
                options.presence_penalty,
            )
        if options.temperature <= 0:
            sampler.add_greedy()
            return sampler
        if options.top_k > 0:
            sampler.add_top_k(options.top_k)
        if options.typical_p < 1.0:
            sampler.add_typical(options.typical_p, 1)
        if options.top_p < 1.0:
            sampler.add_top_p(options.top_p, 1)
        if options.min_p > 0.0:
            sampler.add_min_p(options.min_p, 1)
        sampler.add_temp(options.temperature)
        seed = (
            options.seed if options.seed is not None and options.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED
        )
        sampler.add_dist(seed)
        return sampler

    def _admit(self, running: dict[int, _Sequence]) -> None:
        while self._pending and self._free_seq_ids:
            job = self._pending.popleft()
            if job.cancelled.is_set():
                continue
            try:
                sampler = self._sampler_for(job.options)
            except Exception as exc:  # this request's problem: fail it alone, before it joins the batch
                job.emit_error(str(exc))
                continue
            prompt = job.prompt_tokens
            room = self._context_length - len(prompt)
            max_tokens = room if job.options.max_tokens < 0 else min(job.options.max_tokens, room)
            seq_id = max(self._free_seq_ids, key=lambda s: _common_prefix(self._slot_cache[s], prompt))
            self._free_seq_ids.remove(seq_id)
            # Keep the shared prefix, but always decode at least the prompt's last token (for its logits).
            keep = min(_common_prefix(self._slot_cache[seq_id], prompt), len(prompt) - 1)
            if keep < len(self._slot_cache[seq_id]) and not llama_cpp.llama_memory_seq_rm(
                self._ctx.memory, seq_id, keep, -1
            ):
                llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq_id, -1, -1)
                keep = 0
            running[seq_id] = _Sequence(
                job=job,
                seq_id=seq_id,
                sampler=sampler,
                max_tokens=max_tokens,
                started_ns=time.perf_counter_ns(),
                stop=StopMatcher(job.options.stop),
                prompt_pos=keep,
                n_past=keep,
                cached=prompt[:keep],
                reused=keep,
                logprobs=LogprobQueue() if job.options.logprobs else None,
            )

    def _finish(self, running: dict[int, _Sequence], seq: _Sequence, reason: str) -> None:
        """Frees the slot; its KV cells stay as a prefix cache unless the step failed ("error")."""
        if reason == "error":
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
            seq.cached = []
        self._slot_cache[seq.seq_id] = seq.cached
        seq.sampler.close()
        del running[seq.seq_id]
        self._free_seq_ids.append(seq.seq_id)
        if reason in ("cancelled", "error"):
            return
        tail = ""
        entries: list[PositionLogprobs] = []
        if reason != "stop_string":  # after a stop string nothing more is said
            tail, hit_stop = seq.stop.feed(seq.decoder.decode(b"", final=True))
            if not hit_stop:
                tail += seq.stop.flush()
            if seq.logprobs is not None:
                entries = seq.logprobs.release(len(tail), stopped=True) if hit_stop else seq.logprobs.flush()
        if tail or entries:
            seq.job.emit_token(tail, entries)
        now = time.perf_counter_ns()
        first = seq.first_token_ns or now
        seq.job.emit_done(
            GenerationStats(
                prompt_tokens=len(seq.job.prompt_tokens),
                completion_tokens=len(seq.generated),
                done_reason="length" if reason == "length" else "stop",
                queued_ns=seq.started_ns - seq.job.arrived_at_ns,
                prompt_eval_ns=first - seq.started_ns,
                eval_ns=now - first,
                total_ns=now - seq.job.arrived_at_ns,
                output_tokens=list(seq.generated),
                cached_tokens=seq.reused,
            )
        )

    def _run(self) -> None:
        running: dict[int, _Sequence] = {}
        while True:
            try:
                if not self._step(running):
                    return
            except Exception as exc:  # never let one bad step kill the worker: fail what ran, go on
                log.exception("generation step failed")
                for seq in list(running.values()):
                    seq.job.emit_error(f"generation failed: {exc}")
                    self._finish(running, seq, "error")

    def _step(self, running: dict[int, _Sequence]) -> bool:
        """One decode step over all running sequences; False when the backend is stopping."""
        assert self._ctx is not None and self._batch is not None
        ctx, batch = self._ctx, self._batch.batch
        with self._wake:
            while not self._pending and not running and not self._stopping:
                self._wake.wait()
            if self._stopping:
                for job in self._pending:
                    job.emit_error("server is shutting down")
                self._pending.clear()
                for seq in list(running.values()):
                    seq.job.emit_error("server is shutting down")
                    self._finish(running, seq, "cancelled")
                return False
            self._admit(running)
        for seq in [s for s in running.values() if s.job.cancelled.is_set()]:
            self._finish(running, seq, "cancelled")
        if not running:
            return True
        # Build one batch: generating sequences first (one token each), then prompt chunks.
        # Where each sequence stood before, and its span in the batch, in case the decode fails.
        before = {s.seq_id: (s.prompt_pos, s.n_past, len(s.cached), s.next_token) for s in running.values()}
        spans: dict[int, tuple[int, int]] = {}
        n = 0
        for seq in running.values():
            seq.batch_index = -1
            if seq.next_token is not None:
                _batch_add(batch, n, seq.next_token, seq.n_past, seq.seq_id, True)
                seq.cached.append(seq.next_token)
                seq.batch_index = n
                spans[seq.seq_id] = (n, n + 1)
                seq.n_past += 1
                seq.next_token = None
                n += 1
        for seq in running.values():
            prompt = seq.job.prompt_tokens
            start = n
            while seq.prompt_pos < len(prompt) and n < self._batch_capacity:
                last = seq.prompt_pos == len(prompt) - 1
                _batch_add(batch, n, prompt[seq.prompt_pos], seq.n_past, seq.seq_id, last)
                seq.cached.append(prompt[seq.prompt_pos])
                if last:
                    seq.batch_index = n
                seq.prompt_pos += 1
                seq.n_past += 1
                n += 1
            if n > start:
                spans[seq.seq_id] = (start, n)
        if n == 0:
            return True
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(ctx.ctx, batch)
        if rc != 0:
            self._decode_failed(running, rc, spans, before)
            return True
        for seq in list(running.values()):
            if seq.batch_index < 0:
                continue
            if seq.job.cancelled.is_set():
                self._finish(running, seq, "cancelled")
                continue
            # Read before sampling, which must not be able to change what is reported.
            distribution = self._log_softmax(seq) if seq.logprobs is not None else None
            token = seq.sampler.sample(ctx, seq.batch_index)
            if not seq.first_token_ns:
                seq.first_token_ns = time.perf_counter_ns()
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                self._finish(running, seq, "stop")
                continue
            seq.generated.append(token)
            special = seq.job.options.special_tokens
            piece = self._piece(token, special=special)
            decoded = seq.decoder.decode(piece)
            text, hit_stop = seq.stop.feed(decoded)
            entries: list[PositionLogprobs] = []
            if seq.logprobs is not None and distribution is not None:
                top = seq.job.options.top_logprobs
                entry = position_logprobs(distribution, token, top, partial(self._piece, special=special))
                seq.logprobs.add(entry, len(decoded))
                entries = seq.logprobs.release(len(text), stopped=hit_stop)
            if text or entries:
                seq.job.emit_token(text, entries)
            if hit_stop:
                self._finish(running, seq, "stop_string")
            elif len(seq.generated) >= seq.max_tokens:
                self._finish(running, seq, "length")
            else:
                seq.next_token = token
        return True

    def _log_softmax(self, seq: _Sequence) -> np.ndarray:
        """The log-softmax of the raw logits at the sequence's position in this step's batch."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx.ctx, seq.batch_index)
        return log_softmax(np.ctypeslib.as_array(pointer, shape=(self.details.vocab_size,)))

    def _decode_failed(
        self,
        running: dict[int, _Sequence],
        rc: int,
        spans: dict[int, tuple[int, int]],
        before: dict[int, tuple[int, int, int, int | None]],
    ) -> None:
        """Fails the sequences whose tokens broke the step; the others go back to retry it.

        Only when no sequence can be blamed (e.g. a backend fault) does every running one fail.
        """
        batch, n_vocab = self._batch.batch, self.details.vocab_size
        message = "the KV cache is full" if rc == 1 else f"llama_decode failed ({rc})"
        culprits = [
            seq
            for seq in running.values()
            if any(not 0 <= batch.token[i] < n_vocab for i in range(*spans.get(seq.seq_id, (0, 0))))
        ]
        if culprits:
            message = f"the prompt holds a token id outside the vocabulary ({message})"
        else:
            culprits = list(running.values())
        log.error("decode failed: %s; failing %d of %d sequences", message, len(culprits), len(running))
        for seq in culprits:
            seq.job.emit_error(message)
            self._finish(running, seq, "error")
        for seq in running.values():
            seq.prompt_pos, seq.n_past, kept, seq.next_token = before[seq.seq_id]
            del seq.cached[kept:]
            # After some failures llama.cpp keeps the ubatches it managed; drop them, they are redone.
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, seq.n_past, -1)

    # -- embeddings --------------------------------------------------------------------------------

    def _embedding_context(self) -> Any:
        if self._embed_ctx is None:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self._embed_length
            params.n_batch = self._embed_length
            params.n_ubatch = self._embed_length  # pooled embeddings need the whole input in one ubatch
            params.n_seq_max = 1
            params.n_threads = self._threads
            params.n_threads_batch = self._threads
            params.embeddings = True
            if self._generative:
                params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            params.no_perf = True
            with suppress_stdout_stderr(disable=self._verbose):
                self._embed_ctx = _internals.LlamaContext(
                    model=self._model, params=params, verbose=self._verbose
                )
        return self._embed_ctx

    def embed(self, texts: Sequence[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        if not self._embed_enabled:
            raise BackendError("embeddings are disabled for this model")
        vectors: list[list[float]] = []
        total_tokens = 0
        limit = self._embed_length
        with self._embed_lock:
            ctx = self._embedding_context()
            batch = _internals.LlamaBatch(n_tokens=limit, embd=0, n_seq_max=1)
            try:
                for text in texts:
                    tokens = self.tokenize(text, add_special=True)
                    if len(tokens) > limit:
                        if not truncate:
                            raise ContextLengthExceededError(
                                f"input is {len(tokens)} tokens; the embedding window is {limit}"
                            )
                        tokens = tokens[:limit]
                    if not tokens:
                        raise BackendError("cannot embed an empty input")
                    total_tokens += len(tokens)
                    if ctx.memory is not None:
                        llama_cpp.llama_memory_clear(ctx.memory, True)
                    for i, token in enumerate(tokens):
                        _batch_add(batch.batch, i, token, i, 0, True)
                    batch.batch.n_tokens = len(tokens)
                    rc = llama_cpp.llama_decode(ctx.ctx, batch.batch)
                    if rc != 0:
                        raise BackendError(f"embedding failed (llama_decode {rc})")
                    pointer = llama_cpp.llama_get_embeddings_seq(ctx.ctx, 0)
                    if not pointer:
                        pointer = llama_cpp.llama_get_embeddings_ith(ctx.ctx, len(tokens) - 1)
                    vector = np.ctypeslib.as_array(pointer, shape=(self._model.n_embd(),)).astype(np.float64)
                    norm = float(np.linalg.norm(vector))
                    vectors.append((vector / norm if norm > 0 else vector).tolist())
            finally:
                batch.close()
        return vectors, total_tokens

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._worker is not None:
            self._worker.join(timeout=30)
        if self._batch is not None:
            self._batch.close()
        for context in (self._ctx, self._embed_ctx):
            if context is not None:
                context.close()
        self._model.close()


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _batch_add(batch: Any, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = logits


def _typed_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """GGUF metadata as /api/show's model_info: numbers as numbers, the big token arrays left out."""
    info: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        if key == "tokenizer.chat_template":
            continue
        parsed: Any = value
        for convert in (int, float):
            try:
                parsed = convert(value)
                break
            except ValueError:
                continue
        info[key] = parsed
    return info
