"""The model in dest: reuse what is cached and still verified, fetch the rest, record the outcome.

A file already in dest is trusted only after its bytes hash to what was recorded (or to the
expected digest); a folder retry keeps the files an earlier attempt completed and needs space only
for what is left. The Ready record (integrity.RESULT_FILE) is what the operator and `serve` read.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slm_runtime.fetch.errors import FetchError
from slm_runtime.fetch.plan import FetchPlan, Source
from slm_runtime.fetch.progress import Progress, write_result
from slm_runtime.fetch.quantize import quantize_gguf
from slm_runtime.fetch.space import check_space
from slm_runtime.fetch.transfer import part_path, transfer
from slm_runtime.gguf_header import quantization_of
from slm_runtime.integrity import git_blob_sha1, manifest_digest, read_record, sha256_file
from slm_runtime.redact import redact_url
from slm_runtime.settings import FetchSettings

log = logging.getLogger(__package__)  # "slm_runtime.fetch": the fetcher's one logger, as before the split


def fetch_file(settings: FetchSettings, source: Source, display: str) -> dict[str, Any]:
    """One model file into dest (requantized when asked); returns the Ready record it writes."""
    dest = settings.dest
    final = dest / (Path(source.filename).name or "model")
    served = final
    if settings.quantize:
        served = dest / (settings.filename or f"{final.name.removesuffix('.gguf')}.{settings.quantize}.gguf")
    elif settings.filename:
        served = final = dest / settings.filename
    record = _existing_record(dest, served, settings)
    if record is not None:
        print(f"fetch: {served} already cached and verified", file=sys.stderr)
        return record
    if settings.sha256 and not settings.quantize and final.is_file():
        # A file with no usable record (seeded by hand, or the record lost): its digest decides.
        actual = sha256_file(final)
        if actual == settings.sha256:
            print(f"fetch: {final} already present and matches sha256 {actual}", file=sys.stderr)
            return _file_record(final, display, actual, verified=True)
        log.warning(
            "fetch: %s is present but its sha256 %s is not %s; fetching it again",
            final,
            actual,
            settings.sha256,
        )
        final.unlink()
    progress = Progress(dest, display)
    actual, verified = transfer(settings, source, final, progress, settings.sha256 or None)
    _fsync_dir(dest)
    record = _file_record(final, display, actual, verified=verified, write=False)
    if settings.quantize:
        print(f"fetch: quantizing {final.name} to {settings.quantize}", file=sys.stderr)
        quantize_gguf(final, served, settings.quantize)
        record |= {
            "file": served.name,
            "path": str(served),
            "sourceSha256": actual,
            "sha256": sha256_file(served),
            "sizeBytes": served.stat().st_size,
            "quantization": settings.quantize,
        }
    write_result(dest, record)
    return record


def _file_record(
    final: Path, display: str, actual: str, *, verified: bool, write: bool = True
) -> dict[str, Any]:
    size = final.stat().st_size
    record: dict[str, Any] = {
        "phase": "Ready",
        "source": display,
        "file": final.name,
        "path": str(final),
        "sha256": actual,
        "verified": verified,
        "sizeBytes": size,
        "bytesDownloaded": size,
        "totalBytes": size,
    }
    if final.suffix == ".gguf":
        record["quantization"] = quantization_of(final)
    if write:
        write_result(final.parent, record)
    return record


def fetch_folder(settings: FetchSettings, plan: FetchPlan) -> dict[str, Any]:
    """Every file of an ONNX model folder into dest, each verified; dest is what serve loads."""
    dest = settings.dest
    record = _existing_record(dest, dest, settings)
    if record is not None:
        print(f"fetch: {dest} already cached and verified", file=sys.stderr)
        return record
    progress = Progress(dest, plan.display)
    targets: list[Path] = []
    for source in plan.files:
        target = (dest / source.filename).resolve()
        if dest.resolve() not in target.parents:
            raise FetchError(f"{source.display} would be written outside {dest}")
        targets.append(target)
    # Files an interrupted earlier attempt completed (and that still match) are kept, not fetched
    # again, and the space check counts only what is still to come: else a retry on a nearly full
    # volume could never succeed.
    complete = [_already_complete(source, target) for source, target in zip(plan.files, targets, strict=True)]
    known = [f.size for f in plan.files]
    if all(size is not None for size in known):
        progress.overall = sum(size or 0 for size in known)
        remaining = sum(
            _still_to_fetch(source, target)
            for source, target, done in zip(plan.files, targets, complete, strict=True)
            if done is None
        )
        check_space(dest, remaining)
    files: list[dict[str, Any]] = []
    unverified: list[str] = []
    for source, target, done in zip(plan.files, targets, complete, strict=True):
        if done is None:
            actual, verified = transfer(settings, source, target, progress, None)
        else:
            (actual, verified) = done
            print(f"fetch: {target} already complete, kept", file=sys.stderr)
            progress.base += target.stat().st_size
        files.append({"path": source.filename, "sha256": actual, "sizeBytes": target.stat().st_size})
        if not verified:
            unverified.append(source.filename)
    _fsync_dir(dest)
    manifest = manifest_digest(files)
    if settings.sha256 and settings.sha256 != manifest:
        raise FetchError(
            f"sha256 mismatch for {plan.display}: expected {settings.sha256}, manifest is {manifest}"
        )
    size = sum(int(f["sizeBytes"]) for f in files)
    record = {
        "phase": "Ready",
        "source": plan.display,
        "file": "",
        "path": str(dest),
        "sha256": manifest,
        "verified": bool(settings.sha256) or not unverified,
        "sizeBytes": size,
        "bytesDownloaded": size,
        "totalBytes": size,
        "files": files,
    }
    write_result(dest, record)
    return record


def _already_complete(source: Source, target: Path) -> tuple[str, bool] | None:
    """(sha256, verified) of a folder file already in place that matches its source; else None.

    Only a file its source vouches for counts: the published sha256 or git blob id, or for a local
    source the same bytes as the original.
    """
    if not target.is_file() or (source.size is not None and target.stat().st_size != source.size):
        return None
    if source.sha256:
        actual = sha256_file(target)
        return (actual, True) if actual == source.sha256 else None
    if source.git_sha1:
        return (sha256_file(target), True) if git_blob_sha1(target) == source.git_sha1 else None
    if source.kind == "local":
        origin = Path(source.location)
        if origin.is_file() and origin.stat().st_size == target.stat().st_size:
            actual = sha256_file(target)
            return (actual, False) if sha256_file(origin) == actual else None
    return None


def _still_to_fetch(source: Source, target: Path) -> int:
    """Bytes a file still needs on disk: its size less what its partial download already holds."""
    size = source.size or 0
    part = part_path(target)
    held = part.stat().st_size if source.kind == "http" and part.is_file() else 0
    return max(size - held, 0)


def _existing_record(dest: Path, served: Path, settings: FetchSettings) -> dict[str, Any] | None:
    """The previous result when it matches this request and its files still hash to what it records.

    A file that changed since (size or sha256) is logged, removed and fetched again.
    """
    if not served.exists():
        return None
    record = read_record(dest)
    if record is None or record.get("phase") != "Ready" or record.get("path") != str(served):
        return None
    if record.get("source") != redact_url(settings.source.strip()):
        return None
    source_digest = record.get("sourceSha256") or record.get("sha256")
    if settings.sha256 and settings.sha256 != source_digest:
        return None
    if settings.quantize:
        if record.get("quantization") != settings.quantize:
            return None
    elif record.get("sourceSha256"):
        return None  # a requantized copy, not the file itself
    entries = (
        [(dest / str(e.get("path", "")), e) for e in record["files"] if isinstance(e, dict)]
        if isinstance(record.get("files"), list)
        else [(served, record)]
    )
    for path, entry in entries:
        problem = _changed(path, entry)
        if problem:
            log.warning("fetch: %s changed since it was fetched (%s); fetching it again", path, problem)
            path.unlink(missing_ok=True)
            return None
    return record


def _changed(path: Path, entry: Mapping[str, Any]) -> str:
    """How a cached file differs from its record ("" when it matches in size and sha256)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.get("sizeBytes"):
        return f"{size} bytes, recorded {entry.get('sizeBytes')}"
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        return f"sha256 {actual}, recorded {entry.get('sha256')}"
    return ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
