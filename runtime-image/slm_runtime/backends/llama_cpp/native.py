"""The llama.cpp handles: model and contexts, a numpy-backed batch, token pieces, logits views.

Everything here is a thin, typed wrapper over llama-cpp-python's low-level (ctypes) API, so the
scheduler above it reads as Python and allocates nothing per token.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llama_cpp
import llama_cpp._logger  # installs the log callback that honours the "llama-cpp-python" logger level
import numpy as np
from llama_cpp import _internals as _llama_internals
from llama_cpp._utils import suppress_stdout_stderr

# llama-cpp-python's internal wrappers are untyped; use them as Any so the rest stays strictly typed.
internals: Any = _llama_internals

KV_TYPES = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}
FLASH_ATTENTION = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
# Encoder-only architectures: embeddings, no text generation.
EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder"}

_INT32_POINTER = ctypes.POINTER(ctypes.c_int32)


def load_model(path: str, *, gpu_layers: int, verbose: bool) -> Any:
    """The model (an _internals.LlamaModel); `gpu_layers` 0 keeps it on the CPU."""
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = gpu_layers
    return internals.LlamaModel(path_model=path, params=params, verbose=verbose)


def supports_gpu() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


@dataclass(frozen=True)
class ContextShape:
    """What a llama context is made for: its size, batch sizes, sequences and threads."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    threads: int


def generation_context(
    model: Any, shape: ContextShape, *, flash_attention: str, kv_type: str, verbose: bool
) -> Any:
    """A context with one KV stream per sequence, n_ctx / n_seq_max cells each (llama-server's slots).

    Not a unified pool: there, every token's attention runs over all sequences' cells (masked),
    which costs ~15% of decode time at 8 sequences; and a slot never needs more than its share,
    since a request's prompt plus output is capped at the context length.
    """
    params = _context_params(shape)
    params.flash_attn_type = FLASH_ATTENTION[flash_attention]
    params.type_k = KV_TYPES[kv_type]
    params.type_v = KV_TYPES[kv_type]
    params.kv_unified = False
    return _new_context(model, params, verbose)


def embedding_context(model: Any, shape: ContextShape, *, mean_pooling: bool, verbose: bool) -> Any:
    params = _context_params(shape)
    params.embeddings = True
    if mean_pooling:  # a generative model has no pooling of its own
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
    return _new_context(model, params, verbose)


def _context_params(shape: ContextShape) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = shape.n_ctx
    params.n_batch = shape.n_batch
    params.n_ubatch = shape.n_ubatch
    params.n_seq_max = shape.n_seq_max
    params.n_threads = shape.threads
    params.n_threads_batch = shape.threads
    params.no_perf = True
    return params


def _new_context(model: Any, params: Any, verbose: bool) -> Any:
    with suppress_stdout_stderr(disable=verbose):  # llama.cpp prints context details to fd 2
        return internals.LlamaContext(model=model, params=params, verbose=verbose)


class Batch:
    """A llama_batch over numpy arrays it owns, one sequence id per token.

    Tokens go in with `add` (one) or `add_span` (a prompt chunk: one slice assignment instead of
    a ctypes write per field per token). `output_rows` counts the tokens that asked for logits:
    llama.cpp stores those rows contiguously, in batch order (llama.h, llama_get_logits).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.positions = np.zeros(capacity, dtype=np.int32)
        self.seq_ids = np.zeros(capacity, dtype=np.int32)
        self.outputs = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        base = self.seq_ids.ctypes.data
        # seq_id is an array of per-token arrays; each points at its own cell of `seq_ids`.
        self._seq_id_rows = (_INT32_POINTER * capacity)(
            *(ctypes.cast(base + i * self.seq_ids.itemsize, _INT32_POINTER) for i in range(capacity))
        )
        struct: Any = llama_cpp.llama_batch()  # its stubs type the fields as arrays; they are pointers
        struct.token = self.tokens.ctypes.data_as(_INT32_POINTER)
        struct.pos = self.positions.ctypes.data_as(_INT32_POINTER)
        struct.n_seq_id = self._n_seq_id.ctypes.data_as(_INT32_POINTER)
        struct.seq_id = self._seq_id_rows
        struct.logits = self.outputs.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct = struct
        self.size = 0
        self.output_rows = 0

    @property
    def room(self) -> int:
        return self.capacity - self.size

    def clear(self) -> None:
        self.size = 0
        self.output_rows = 0

    def add(self, token: int, position: int, seq_id: int, *, output: bool) -> int:
        """Appends one token; returns its index in the batch."""
        i = self.size
        self.tokens[i] = token
        self.positions[i] = position
        self.seq_ids[i] = seq_id
        self.outputs[i] = output
        self.output_rows += output
        self.size = i + 1
        return i

    def add_span(
        self, tokens: Sequence[int], position: int, seq_id: int, *, outputs: Literal["last", "all", "none"]
    ) -> int:
        """Appends consecutive tokens of one sequence from `position` on; returns the last one's index.

        `outputs`: which of them get logits (or embeddings): the last, all, or none.
        """
        start, end = self.size, self.size + len(tokens)
        self.tokens[start:end] = tokens
        self.positions[start:end] = np.arange(position, position + len(tokens), dtype=np.int32)
        self.seq_ids[start:end] = seq_id
        self.outputs[start:end] = outputs == "all"
        if outputs == "last":
            self.outputs[end - 1] = 1
        self.output_rows += {"last": 1, "all": len(tokens), "none": 0}[outputs]
        self.size = end
        return end - 1

    def decode(self, ctx: Any) -> int:
        """llama_decode over the batch: 0 on success, 1 when the KV cache has no room, <0 on errors."""
        self.struct.n_tokens = self.size
        return int(llama_cpp.llama_decode(ctx.ctx, self.struct))


def output_logits(ctx: Any, rows: int, n_vocab: int) -> np.ndarray:
    """The last decode's logits, one row per token that asked for them (a view: valid until the next decode)."""
    pointer = llama_cpp.llama_get_logits(ctx.ctx)
    return np.ctypeslib.as_array(pointer, shape=(rows, n_vocab))


def forget(ctx: Any, seq_id: int, start: int = -1) -> bool:
    """Drops a sequence's KV cells from position `start` on (-1: all of them)."""
    return bool(llama_cpp.llama_memory_seq_rm(ctx.memory, seq_id, start, -1))


def is_end_of_generation(vocab: Any, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


class TokenPieces:
    """Each token's bytes, read from llama.cpp once and then kept (the vocabulary is fixed)."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._plain: dict[int, bytes] = {}
        self._special: dict[int, bytes] = {}

    def __call__(self, token: int, *, special: bool = False) -> bytes:
        cache = self._special if special else self._plain
        piece = cache.get(token)
        if piece is None:
            piece = cache[token] = self._read(token, special)
        return piece

    def _read(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 256, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
        return buffer.raw[: max(n, 0)]
