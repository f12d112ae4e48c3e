"""`slm_runtime serve` checks the cached model against SLM_MODEL_SHA256 before it loads anything."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm_runtime.__main__ import verify
from slm_runtime.fetch import fetch
from slm_runtime.integrity import (
    MODEL_CORRUPTED_EXIT,
    ModelCorruptedError,
    manifest_digest,
    read_record,
    verify_model,
)
from slm_runtime.settings import FetchSettings, ServeSettings

pytestmark = pytest.mark.runtime

CONTENT = os.urandom(2 * 1024 * 1024 + 7)
DIGEST = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(CONTENT)
    return path


def test_a_matching_file_passes(model: Path) -> None:
    assert verify_model(model, DIGEST.upper()).startswith(
        f"{model}: sha256 verified ({len(CONTENT)} bytes in "
    )


def test_a_changed_file_is_named_with_both_digests(model: Path) -> None:
    with model.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00" * 16)
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    with pytest.raises(ModelCorruptedError) as caught:
        verify_model(model, DIGEST)
    assert caught.value.line() == (
        f"ModelCorrupted: {model} sha256 {actual} does not match the cached model's {DIGEST}; "
        "the operator fetches it again"
    )


def test_a_missing_file_is_corrupted_too(tmp_path: Path) -> None:
    with pytest.raises(ModelCorruptedError) as caught:
        verify_model(tmp_path / "gone.gguf", DIGEST)
    assert caught.value.line() == (
        f"ModelCorrupted: {tmp_path / 'gone.gguf'} is missing from the cache; the operator fetches it again"
    )


def test_large_files_say_they_are_being_verified(
    model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("slm_runtime.integrity._LARGE", 1024)
    with caplog.at_level(logging.INFO, logger="slm_runtime.integrity"):
        verify_model(model, DIGEST)
    assert [r.getMessage() for r in caplog.records] == [
        f"verifying {model} ({len(CONTENT)} bytes) against sha256 {DIGEST}"
    ]


def _fetched_folder(tmp_path: Path) -> tuple[Path, str]:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "model.onnx").write_bytes(CONTENT)
    (source / "sub" / "tokenizer.json").write_bytes(b"{}")
    dest = tmp_path / "cache"
    record = fetch(FetchSettings(source=source.as_uri(), dest=dest))
    return dest, str(record["sha256"])


def test_a_folder_is_checked_against_the_fetch_record(tmp_path: Path) -> None:
    folder, digest = _fetched_folder(tmp_path)
    assert verify_model(folder, digest).startswith(f"{folder}: 2 files verified in ")
    record = read_record(folder)
    assert record is not None and manifest_digest(record["files"]) == digest

    with pytest.raises(ModelCorruptedError) as caught:
        verify_model(folder, "0" * 64)  # files intact, but not the model the operator cached
    assert caught.value.line() == (
        f"ModelCorrupted: {folder} manifest sha256 {digest} does not match the cached model's {'0' * 64}; "
        "the operator fetches it again"
    )

    (folder / "sub" / "tokenizer.json").write_bytes(b"[]")
    recorded = next(f["sha256"] for f in record["files"] if f["path"] == "sub/tokenizer.json")
    with pytest.raises(ModelCorruptedError) as caught:
        verify_model(folder, digest)
    assert caught.value.line() == (
        f"ModelCorrupted: {folder / 'sub' / 'tokenizer.json'} sha256 {hashlib.sha256(b'[]').hexdigest()} "
        f"does not match the fetch record's {recorded}; the operator fetches it again"
    )

    (folder / "model.onnx").unlink()
    with pytest.raises(ModelCorruptedError) as caught:
        verify_model(folder, digest)
    assert str(caught.value) == (
        f"{folder / 'model.onnx'} is missing from the cached model; the operator fetches it again"
    )


def test_a_folder_without_a_record_is_not_verified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    note = verify_model(tmp_path, DIGEST)
    assert (
        note == f"not verified: {tmp_path} holds no fetch record (.slm-fetch.json) to compare its files with"
    )
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [note]


def test_verify_before_serving(model: Path, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    assert verify(ServeSettings(model=model, termination_log=log)) == 0  # no digest: nothing checked
    assert verify(ServeSettings(model=model, model_sha256=DIGEST, termination_log=log)) == 0
    assert log.read_text() == ""
    assert verify(ServeSettings(model=model, model_sha256="f" * 64, termination_log=log)) == 3


def test_serve_exits_with_the_termination_message_before_loading(model: Path, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.touch()
    wrong = "ab" * 32
    process = subprocess.run(
        [sys.executable, "-m", "slm_runtime", "serve", "--model", str(model), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SLM_MODEL_SHA256": wrong.upper(), "SLM_TERMINATION_LOG": str(log)},
    )
    expected = (
        f"ModelCorrupted: {model} sha256 {DIGEST} does not match the cached model's {wrong}; "
        "the operator fetches it again"
    )
    assert process.returncode == MODEL_CORRUPTED_EXIT == 3
    assert log.read_text() == expected
    assert process.stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in process.stderr
    assert "loading model" not in process.stderr
    logged = [json.loads(line) for line in process.stderr.strip().splitlines()[:-1]]
    assert [(r["level"], r["message"]) for r in logged] == [("error", expected)]


def test_a_malformed_digest_is_a_settings_error(model: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "slm_runtime", "serve", "--model", str(model), "--model-sha256", "abc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    assert "invalid setting model_sha256 (SLM_MODEL_SHA256)" in process.stderr
