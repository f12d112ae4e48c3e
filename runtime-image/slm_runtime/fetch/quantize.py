"""Requantizing a fetched GGUF through llama.cpp (`fetch --quantize`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from slm_runtime.fetch.errors import FetchError
from slm_runtime.fetch.space import check_space

# llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*) for each quantization `--quantize` accepts.
QUANTIZE_TYPES = {"q8_0": 7, "q4_k_m": 15, "q4_0": 2, "q5_k_m": 17, "q6_k": 18, "f16": 1}


def quantize_gguf(source: Path, target: Path, quantization: str, threads: int = 0) -> None:
    """Requantizes a GGUF through llama.cpp (f16 → q8_0 / q4_k_m …), atomically."""
    if quantization not in QUANTIZE_TYPES:
        raise FetchError(
            f"unsupported quantization {quantization!r}; choose one of {', '.join(QUANTIZE_TYPES)}"
        )
    try:
        import llama_cpp
        import llama_cpp._logger  # routes llama.cpp's per-tensor chatter through a logger we can quiet
    except ImportError as exc:
        raise FetchError("quantization needs llama-cpp-python, which this image lacks") from exc
    logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)
    check_space(target.parent, source.stat().st_size)
    tmp = target.with_name(f".{target.name}.part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZE_TYPES[quantization]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise FetchError(
            f"quantizing {source.name} to {quantization} failed (llama_model_quantize returned {rc})"
        )
    os.replace(tmp, target)
