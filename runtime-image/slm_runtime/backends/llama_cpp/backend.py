"""GGUF models through llama-cpp-python's low-level API: what the HTTP layer sees of them.

Loading, the model's details, tokenizing, chat rendering and request checks live here; the
continuous-batching worker is `batching.BatchScheduler`, embeddings are `embeddings.Embedder`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_runtime.backends.base import (
    BackendError,
    GenerationJob,
    ModelDetails,
    SamplingOptions,
    check_prompt,
    format_parameter_count,
)
from slm_runtime.backends.grammars import GrammarCache
from slm_runtime.backends.llama_cpp.batching import BatchScheduler
from slm_runtime.backends.llama_cpp.chat import ChatTemplate
from slm_runtime.backends.llama_cpp.embeddings import Embedder
from slm_runtime.backends.llama_cpp.native import (
    EMBEDDING_ARCHS,
    ContextShape,
    TokenPieces,
    generation_context,
    load_model,
    supports_gpu,
)
from slm_runtime.gguf_header import FILE_TYPE_NAMES
from slm_runtime.settings import ServeSettings

log = logging.getLogger(__name__)

EMBEDDING_WINDOW = 2048  # tokens at most per embedded input (its context is made for that)
# On a CPU, reading a prompt reaches ~95% of its full speed from ~96 tokens per step (2-core AVX2,
# 336M Q4_K_M: 16 tokens 73%, 64 88%, 128 100%); a step holding more prompts than that only makes
# the first comers wait for the later ones. A GPU needs big steps to be busy: it fills the batch.
CPU_PREFILL_TARGET = 96


class LlamaCppBackend:
    """Loads a GGUF and serves generation (continuous batching) and embeddings."""

    def __init__(self, settings: ServeSettings) -> None:
        verbose = settings.log_level == "debug"
        # llama-cpp-python routes llama.cpp's log through this logger's level; keep load chatter out.
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.WARNING)
        warnings: list[str] = []
        gpu = supports_gpu()
        if settings.device == "gpu" and not gpu:
            warnings.append("device gpu requested but this llama.cpp build has no GPU support; using CPU")
        gpu_layers = (settings.gpu_layers if settings.gpu_layers >= 0 else 999) if gpu else 0
        self._model = load_model(str(settings.model), gpu_layers=gpu_layers, verbose=verbose)
        self._vocab = self._model.vocab
        self._pieces = TokenPieces(self._vocab)
        self._grammars = GrammarCache(self._vocab)
        metadata: dict[str, str] = self._model.metadata()
        arch = metadata.get("general.architecture", "")
        self._generative = arch not in EMBEDDING_ARCHS
        threads = settings.effective_threads()
        self._context_length = min(
            settings.context_length, self._model.n_ctx_train() or settings.context_length
        )
        kv_type = settings.kv_cache_type
        if kv_type != "f16" and settings.flash_attention == "off":
            # llama.cpp needs flash attention for a quantized V cache; Ollama falls back the same way.
            warnings.append(f"kv_cache_type {kv_type} needs flash attention; using f16")
            kv_type = "f16"
        chat_template = settings.chat_template or metadata.get("tokenizer.chat_template", "")
        self._bos_text = self._pieces(self._model.token_bos(), special=True).decode("utf-8", "replace")
        eos_text = self._pieces(self._model.token_eos(), special=True).decode("utf-8", "replace")
        self._chat = ChatTemplate(chat_template, bos_text=self._bos_text, eos_text=eos_text)
        self._add_bos = self._model.add_bos_token()
        embed_enabled = not self._generative or settings.embeddings is not False
        self._embedder = (
            Embedder(
                self._model,
                lambda text: self.tokenize(text, add_special=True),
                window=min(self._context_length, EMBEDDING_WINDOW),
                threads=threads,
                generative=self._generative,
                verbose=verbose,
            )
            if embed_enabled
            else None
        )
        capabilities = (["completion"] if self._generative else []) + (["embedding"] if embed_enabled else [])
        file_type = int(metadata.get("general.file_type", "-1") or -1)
        self.details = ModelDetails(
            format="gguf",
            family=arch or "unknown",
            parameter_size=format_parameter_count(self._model.n_params()),
            quantization_level=FILE_TYPE_NAMES.get(file_type, "unknown"),
            size_bytes=Path(settings.model).stat().st_size,
            context_length=self._context_length,
            capabilities=tuple(capabilities),
            model_info=typed_metadata(metadata),
            chat_template=chat_template,
            backend="llama-cpp",
            device="gpu" if gpu and gpu_layers > 0 else "cpu",
            execution_provider="",
            warnings=tuple(warnings),
            vocab_size=self._model.n_vocab(),
        )
        for warning in warnings:
            log.warning(warning)

        self._ctx: Any = None
        self.scheduler: BatchScheduler | None = None
        if self._generative:
            parallel = settings.parallel_requests
            step_tokens = max(settings.batch_size, parallel)
            shape = ContextShape(
                n_ctx=self._context_length * parallel,
                n_batch=step_tokens,
                n_ubatch=min(step_tokens, 512),
                n_seq_max=parallel,
                threads=threads,
            )
            self._ctx = generation_context(
                self._model, shape, flash_attention=settings.flash_attention, kv_type=kv_type, verbose=verbose
            )
            self.scheduler = BatchScheduler(
                self._ctx,
                self._vocab,
                self._pieces,
                self._grammars,
                parallel=parallel,
                step_tokens=step_tokens,
                prefill_target=step_tokens if gpu_layers > 0 else min(step_tokens, CPU_PREFILL_TARGET),
                context_length=self._context_length,
                n_vocab=self.details.vocab_size,
            )

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        add_bos = add_special and self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        tokens: list[int] = self._model.tokenize(text.encode("utf-8"), add_bos, True)
        return tokens

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        return self._chat.render(messages, tools)

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
        assert self.scheduler is not None  # validate() refuses generation on embedding-only models
        self.scheduler.enqueue(job)

    def embed(self, texts: Sequence[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        if self._embedder is None:
            raise BackendError("embeddings are disabled for this model")
        return self._embedder.embed(texts, truncate=truncate)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(timeout=30)
        if self._ctx is not None:
            self._ctx.close()
        if self._embedder is not None:
            self._embedder.close()
        self._model.close()


def typed_metadata(metadata: dict[str, str]) -> dict[str, Any]:
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
