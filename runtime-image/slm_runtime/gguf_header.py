"""Reads the quantization a GGUF file declares, from its header alone (no model load)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# general.file_type values (llama.cpp's llama_ftype) and Ollama's spelling of them.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip
# GGUF value types: fixed-size scalars by their struct format; 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 100_000


def _read(handle: BinaryIO, fmt: str) -> int | float | bool:
    size = struct.calcsize("<" + fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    value: int | float | bool = struct.unpack("<" + fmt, data)[0]
    return value


def _skip_value(handle: BinaryIO, value_type: int) -> None:
    if value_type in _SCALARS:
        handle.seek(struct.calcsize("<" + _SCALARS[value_type]), 1)
    elif value_type == _STRING:
        handle.seek(int(_read(handle, "Q")), 1)
    elif value_type == _ARRAY:
        item_type, count = int(_read(handle, "I")), int(_read(handle, "Q"))
        if item_type in _SCALARS:
            handle.seek(struct.calcsize("<" + _SCALARS[item_type]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, item_type)
    else:
        raise ValueError(f"unknown GGUF value type {value_type}")


def read_file_type(path: Path) -> int | None:
    """general.file_type of a GGUF file; None when the file is not GGUF or does not say."""
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            return None
        try:
            _read(handle, "I")  # version
            _read(handle, "Q")  # tensor count
            keys = int(_read(handle, "Q"))
            for _ in range(min(keys, _MAX_KEYS)):
                key = handle.read(int(_read(handle, "Q"))).decode("utf-8", "replace")
                value_type = int(_read(handle, "I"))
                if key == "general.file_type" and value_type in _SCALARS:
                    return int(_read(handle, _SCALARS[value_type]))
                _skip_value(handle, value_type)
        except (ValueError, struct.error):
            return None
    return None


def quantization_of(path: Path) -> str:
    """The file's quantization in the operator's spelling (q4_k_m, f16, ...), or ""."""
    file_type = read_file_type(path)
    return FILE_TYPE_NAMES.get(file_type, "").lower() if file_type is not None else ""
