"""Embeddings for both APIs: the capability check, a slot under the same queue limit, the backend's refusals."""

from __future__ import annotations

import asyncio

from slm_runtime.backends.base import BackendError
from slm_runtime.errors import ApiError, backend_refusal
from slm_runtime.runtime import Runtime


async def embed_texts(runtime: Runtime, texts: list[str], *, truncate: bool) -> tuple[list[list[float]], int]:
    """Unit-length vectors for `texts` (the request's `input`) and the number of tokens read."""
    backend = runtime.require_backend()
    if "embedding" not in backend.details.capabilities:
        raise ApiError(400, f"model '{runtime.model_name}' does not support embeddings")
    try:
        async with runtime.slot():
            vectors, tokens = await asyncio.to_thread(backend.embed, texts, truncate=truncate)
    except BackendError as exc:
        raise backend_refusal(exc, "input", of_prompt=True) from exc
    runtime.metrics.embedding_inputs.labels(runtime.model_name).inc(len(texts))
    runtime.metrics.prompt_tokens.labels(runtime.model_name).inc(tokens)
    return vectors, tokens
