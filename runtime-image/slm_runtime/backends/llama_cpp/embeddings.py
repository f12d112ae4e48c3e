"""Embeddings on a context of their own, created on first use (it costs memory only when used)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp
import numpy as np

from slm_runtime.backends.base import BackendError, ContextLengthExceededError
from slm_runtime.backends.llama_cpp.native import Batch, ContextShape, embedding_context

Tokenize = Callable[[str], list[int]]


class Embedder:
    """Unit-length vectors, one input at a time (pooled embeddings need the whole input in one ubatch)."""

    def __init__(
        self, model: Any, tokenize: Tokenize, *, window: int, threads: int, generative: bool, verbose: bool
    ) -> None:
        self.window = window
        self._model = model
        self._tokenize = tokenize
        self._shape = ContextShape(
            n_ctx=window, n_batch=window, n_ubatch=window, n_seq_max=1, threads=threads
        )
        self._mean_pooling = generative
        self._verbose = verbose
        self._ctx: Any = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        vectors: list[list[float]] = []
        total_tokens = 0
        with self._lock:
            if self._ctx is None:
                self._ctx = embedding_context(
                    self._model, self._shape, mean_pooling=self._mean_pooling, verbose=self._verbose
                )
            batch = Batch(self.window)
            for text in texts:
                tokens = self._tokenize(text)
                if len(tokens) > self.window:
                    if not truncate:
                        raise ContextLengthExceededError(
                            f"input is {len(tokens)} tokens; the embedding window is {self.window}"
                        )
                    tokens = tokens[: self.window]
                if not tokens:
                    raise BackendError("cannot embed an empty input")
                total_tokens += len(tokens)
                vectors.append(self._one(batch, tokens))
        return vectors, total_tokens

    def _one(self, batch: Batch, tokens: list[int]) -> list[float]:
        ctx = self._ctx
        if ctx.memory is not None:
            llama_cpp.llama_memory_clear(ctx.memory, True)
        batch.clear()
        batch.add_span(tokens, 0, 0, outputs="all")  # every position's, for models that pool none
        rc = batch.decode(ctx)
        if rc != 0:
            raise BackendError(f"embedding failed (llama_decode {rc})")
        pointer = llama_cpp.llama_get_embeddings_seq(ctx.ctx, 0)
        if not pointer:
            pointer = llama_cpp.llama_get_embeddings_ith(ctx.ctx, len(tokens) - 1)
        vector = np.ctypeslib.as_array(pointer, shape=(self._model.n_embd(),)).astype(np.float64)
        norm = float(np.linalg.norm(vector))
        result: list[float] = (vector / norm if norm > 0 else vector).tolist()
        return result

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
