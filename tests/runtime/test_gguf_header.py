"""The quantization a GGUF declares, read from its header (the fetcher reports it)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from slm_runtime.gguf_header import quantization_of, read_file_type
from slm_runtime.testing.tiny_models import write_tiny_gguf

pytestmark = pytest.mark.runtime


def test_reads_f16_and_a_requantized_file(tiny_gguf: Path, tmp_path: Path) -> None:
    assert quantization_of(tiny_gguf) == "f16"
    assert quantization_of(write_tiny_gguf(tmp_path / "q8.gguf", quantize="q8_0")) == "q8_0"


def test_not_gguf_or_truncated_is_unknown(tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"\x00" * 64)
    assert read_file_type(other) is None
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + struct.pack("<Q", 100))
    assert quantization_of(truncated) == ""


def test_file_type_after_arrays_and_strings(tmp_path: Path) -> None:
    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    body = b"GGUF" + struct.pack("<IQQ", 3, 0, 3)
    body += string("general.name") + struct.pack("<I", 8) + string("x")
    body += string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("bc")
    body += string("general.file_type") + struct.pack("<II", 4, 15)
    path = tmp_path / "crafted.gguf"
    path.write_bytes(body)
    assert quantization_of(path) == "q4_k_m"
