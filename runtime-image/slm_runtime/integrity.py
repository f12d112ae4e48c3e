"""Model integrity: sha256 of cached files, the fetcher's record, and the check `serve` runs first.

A cached model is trusted only when its bytes still hash to what was fetched: a file changed on
the cache claim after the fetch (a bad disk, a hand edit, a half-finished copy) would otherwise
load as garbage or crash llama.cpp. Failures the operator acts on carry a stable prefix on the
container's termination message (``<Prefix>: <message>``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The fetcher's record of what it put into a cache folder (the outcome, digests and sizes).
RESULT_FILE = ".slm-fetch.json"
# Termination-message prefixes the operator maps to condition reasons (a contract with it).
CACHE_NOT_WRITABLE = "CacheNotWritable"
MODEL_CORRUPTED = "ModelCorrupted"
# `serve` exits with this code when the model does not match its digest.
MODEL_CORRUPTED_EXIT = 3

# A sha256 as this package writes and compares it: 64 lowercase hex characters.
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

_CHUNK = 4 << 20
_LARGE = 256 << 20  # files from this size on get a "verifying" line first (a few hundred ms)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """Git's blob id of a file (sha1 over `blob <size>\\0` and the bytes): a Hub's id of a non-LFS file."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_digest(files: Iterable[Mapping[str, Any]]) -> str:
    """The digest of a folder model: sha256 over "<sha256>  <path>" lines, in record order."""
    lines = "".join(f"{entry['sha256']}  {entry['path']}\n" for entry in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def read_record(folder: Path) -> dict[str, Any] | None:
    """The fetcher's record in `folder`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def report_termination(path: Path, message: str) -> None:
    """Write the container's termination message (the kubelet provides the file; elsewhere skip)."""
    if path.is_file() and os.access(path, os.W_OK):
        with contextlib.suppress(OSError):
            path.write_text(message[-4000:])  # the kubelet keeps at most 4096 bytes


class ModelCorruptedError(Exception):
    """The cached model does not match the digest it was fetched with."""

    def line(self) -> str:
        return f"{MODEL_CORRUPTED}: {self}"


def verify_model(path: Path, expected: str) -> str:
    """Check the model at `path` against `expected` (its sha256; a folder's manifest digest).

    Returns what was checked (for the log); raises ModelCorruptedError on a mismatch or a missing file.
    A folder is checked file by file against the fetcher's record beside it; without a record
    (a folder not put there by the fetcher) there is nothing to compare and the check is skipped.
    """
    expected = expected.strip().lower()
    again = "the operator fetches it again"
    if path.is_dir():
        record = read_record(path)
        files = record.get("files") if record else None
        if not isinstance(files, list) or not files:
            note = f"not verified: {path} holds no fetch record ({RESULT_FILE}) to compare its files with"
            log.warning(note)
            return note
        started = time.perf_counter()
        actual_files: list[dict[str, Any]] = []
        for entry in files:
            file = path / str(entry.get("path", ""))
            if not file.is_file():
                raise ModelCorruptedError(f"{file} is missing from the cached model; {again}")
            actual = sha256_file(file)
            if actual != entry.get("sha256"):
                raise ModelCorruptedError(
                    f"{file} sha256 {actual} does not match the fetch record's {entry.get('sha256')}; {again}"
                )
            actual_files.append({"sha256": actual, "path": entry.get("path", "")})
        manifest = manifest_digest(actual_files)
        if manifest != expected:
            raise ModelCorruptedError(
                f"{path} manifest sha256 {manifest} does not match the cached model's {expected}; {again}"
            )
        return f"{path}: {len(actual_files)} files verified in {time.perf_counter() - started:.2f}s"
    if not path.is_file():
        raise ModelCorruptedError(f"{path} is missing from the cache; {again}")
    size = path.stat().st_size
    if size >= _LARGE:
        log.info("verifying %s (%d bytes) against sha256 %s", path, size, expected)
    started = time.perf_counter()
    actual = sha256_file(path)
    if actual != expected:
        raise ModelCorruptedError(
            f"{path} sha256 {actual} does not match the cached model's {expected}; {again}"
        )
    return f"{path}: sha256 verified ({size} bytes in {time.perf_counter() - started:.2f}s)"
