"""What a model source URI says: its file name, format and quantization."""

from __future__ import annotations

import re
from typing import Literal

from slm_operator.api.v1alpha1 import GGUF_QUANTIZATIONS, ONNX_QUANTIZATIONS


def _source_path(source: str) -> str:
    """The path part of a source URI, without query, fragment or @revision."""
    path = source.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0].rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if "@" in last:
        path = path[: len(path) - len(last)] + last.split("@", 1)[0]
    return path


def source_basename(source: str) -> str:
    """The file or folder name a source URI ends in."""
    return _source_path(source).rsplit("/", 1)[-1]


def detect_format(source: str) -> Literal["gguf", "onnx"]:
    """A `.gguf` file is GGUF; anything else (a folder, a .onnx file) is an ONNX model."""
    return "gguf" if source_basename(source).lower().endswith(".gguf") else "onnx"


def detect_quantization(source: str, format: str) -> str:
    """The quantization named in the file or folder name (e.g. ...-q4_k_m.gguf, cpu-int4-rtn), or ""."""
    stem = _source_path(source).lower()
    known = GGUF_QUANTIZATIONS if format == "gguf" else ONNX_QUANTIZATIONS
    for quantization in sorted(known, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9]){re.escape(quantization)}($|[^a-z0-9])", stem):
            return quantization
    return ""
