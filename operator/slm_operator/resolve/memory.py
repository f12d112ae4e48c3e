"""Memory a model needs: weights at a quantization, KV cache, runtime overhead."""

from __future__ import annotations

import math

from slm_operator.plan import MemoryEstimate
from slm_operator.resolve.errors import ResolveError

# Effective bits per weight, block scales included (llama.cpp's quantize table; ONNX int4 has
# one fp16 scale per 32-weight block).
BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32.0,
    "bf16": 16.0,
    "f16": 16.0,
    "q8_0": 8.5,
    "q6_k": 6.5625,
    "q5_k_m": 5.69,
    "q5_k_s": 5.54,
    "q5_1": 6.0,
    "q5_0": 5.5,
    "q4_k_m": 4.89,
    "q4_k_s": 4.58,
    "q4_1": 5.0,
    "q4_0": 4.5,
    "q3_k_m": 3.91,
    "q3_k_s": 3.5,
    "q2_k": 3.35,
    "fp32": 32.0,
    "fp16": 16.0,
    "int8": 8.5,
    "int4": 4.5,
}
KV_CACHE_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 1.0625, "q4_0": 0.5625}


def bits_per_weight(quantization: str) -> float:
    """Effective bits per weight of a quantization; an unknown one makes the model invalid."""
    try:
        return BITS_PER_WEIGHT[quantization]
    except KeyError:
        raise ResolveError("InvalidModel", f"unknown quantization {quantization!r}") from None


def estimate_memory(
    *,
    weights_bytes: int,
    layers: int,
    kv_heads: int,
    head_dim: int,
    context: int,
    parallel: int,
    kv_cache_type: str,
    overhead_bytes: int,
) -> MemoryEstimate:
    """weights + KV cache (2 x layers x context x kv_heads x head_dim x bytes x sequences) + overhead."""
    kv_bytes = (
        2 * layers * context * kv_heads * head_dim * KV_CACHE_BYTES_PER_ELEMENT[kv_cache_type] * parallel
    )
    return MemoryEstimate(
        weights_bytes=weights_bytes, kv_cache_bytes=math.ceil(kv_bytes), overhead_bytes=overhead_bytes
    )
