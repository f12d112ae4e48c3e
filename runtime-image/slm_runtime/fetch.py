"""`slm_runtime fetch`: put one model file into the cache, safely.

Downloads resume with Range after a cut, retry with backoff, check free space first and verify
sha256 (given, or the digest the source publishes); the file appears under its final name only
complete and verified (atomic rename). An fcntl lock per file makes concurrent fetchers wait for
each other instead of writing the same bytes. `.slm-fetch.json` in dest records the outcome.

A file already in dest is trusted only after its bytes hash to what was recorded (or to the
expected digest); a resumed partial download that fails its digest is fetched once more from the
start rather than spliced. A destination the process cannot write ends in one line naming the
path, the uid/gid, the likely cause and the fix (prefix `CacheNotWritable:`).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlparse

import httpx

from slm_runtime.gguf_header import quantization_of
from slm_runtime.integrity import (
    CACHE_NOT_WRITABLE,
    RESULT_FILE,
    manifest_digest,
    read_record,
    report_termination,
    sha256_file,
)
from slm_runtime.settings import FetchSettings

log = logging.getLogger(__name__)
LOCK_FILE = ".slm-fetch.lock"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Free space kept beyond the file itself (filesystem metadata, the result file, a quantized copy's start).
_SPACE_MARGIN = 16 << 20
QUANTIZE_TYPES = {"q8_0": 7, "q4_k_m": 15, "q4_0": 2, "q5_k_m": 17, "q6_k": 18, "f16": 1}


class FetchError(Exception):
    """A failure with a message for the operator's status; the fetch exits non-zero."""

    prefix = "error"  # of the termination message; the operator maps known prefixes to reasons

    def line(self) -> str:
        return f"{self.prefix}: {self}"


class CacheNotWritableError(FetchError):
    """The cache volume (or a file in it) cannot be written by this process."""

    prefix = CACHE_NOT_WRITABLE


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def cache_not_writable(path: Path, error_number: int) -> CacheNotWritableError:
    """The one-line diagnosis of an unwritable destination: who we are, what is in the way, the fix."""
    uid, gid = os.getuid(), os.getgid()
    where = f"cache volume not writable: {path} (uid {uid}, gid {gid})"
    if error_number == errno.EROFS:
        return CacheNotWritableError(
            f"{where}: the volume is mounted read-only; the fetch Job needs the cache claim read-write "
            "(a read-write PersistentVolume and mount)"
        )
    blocker = _nearest_existing(path)
    try:
        info = blocker.lstat()
        owned = (
            f"{blocker} is owned by {info.st_uid}:{info.st_gid} with mode {stat.S_IMODE(info.st_mode):04o}"
        )
    except OSError:
        owned = f"{blocker} cannot be inspected"
    return CacheNotWritableError(
        f"{where}: {owned} and the volume does not apply fsGroup (hostPath and some CSI drivers); "
        f"make it writable for uid {uid} (chown {uid}:{gid} or chmod on the node, "
        "or a StorageClass whose driver honours fsGroup)"
    )


def _in_cache(filename: object, dest: Path) -> Path | None:
    """`filename` (from an OSError) as a Path when it is dest, inside it, or a folder above it."""
    if not isinstance(filename, str | bytes | os.PathLike):
        return None
    path = Path(os.path.abspath(os.fsdecode(filename)))
    root = Path(os.path.abspath(dest))
    if path == root or root in path.parents or path in root.parents:
        return path
    return None


def _as_cache_error(exc: OSError, dest: Path) -> CacheNotWritableError | None:
    if exc.errno not in _NOT_WRITABLE:
        return None
    for filename in (exc.filename, exc.filename2):
        path = _in_cache(filename, dest)
        if path is not None:
            return cache_not_writable(path, exc.errno)
    return None


class _RetryableError(Exception):
    pass


@dataclass
class Source:
    """One file to transfer into dest."""

    kind: str  # http | local
    location: str  # URL or local path
    filename: str  # path under dest
    headers: dict[str, str] = field(default_factory=dict)
    display: str = ""
    sha256: str | None = None  # digest known before the transfer (Hugging Face LFS oid)
    git_sha1: str | None = None  # git blob id of a small non-LFS Hugging Face file
    size: int | None = None


@dataclass
class FetchPlan:
    display: str
    files: list[Source]
    folder: bool  # the model is dest itself (an ONNX folder) rather than one file in it


# Files an ONNX model file needs beside it: its tokenizer and configuration (looked up in the
# file's folder, then its parents, as Hugging Face repositories keep them at the root).
_ONNX_COMPANIONS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


class _HfRepo:
    """Hugging Face Hub file listing and download URLs for one repository revision."""

    def __init__(self, settings: FetchSettings, repo: str, revision: str) -> None:
        self.endpoint = settings.hf_endpoint.rstrip("/")
        self.repo = repo
        self.revision = revision
        self.headers = {"Authorization": f"Bearer {settings.hf_token}"} if settings.hf_token else {}
        self.timeout = settings.timeout_seconds
        self.retries = settings.retries
        self.backoff = settings.backoff_seconds

    def url(self, path: str) -> str:
        return f"{self.endpoint}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(path)}"

    def listing(self, folder: str, *, recursive: bool) -> list[dict[str, Any]]:
        """Entries under folder ("" = root), following pagination; retried like downloads."""
        base = f"{self.endpoint}/api/models/{self.repo}/tree/{quote(self.revision, safe='')}/{quote(folder)}"
        url: str | None = base.rstrip("/") + ("?recursive=true" if recursive else "")
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        with httpx.Client(timeout=self.timeout, follow_redirects=True, headers=self.headers) as client:
            while url and url not in seen:  # a cursor that repeats must not loop forever
                seen.add(url)
                response = self._get(client, url)
                page = response.json()
                if not isinstance(page, list):
                    raise FetchError(f"unexpected listing from {url}")
                entries.extend(e for e in page if isinstance(e, dict))
                url = response.links.get("next", {}).get("url")
        return entries

    def _get(self, client: httpx.Client, url: str) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                error: str = str(exc)
            else:
                if response.status_code == 200:
                    return response
                if response.status_code < 500 and response.status_code not in (408, 429):
                    hint = (
                        " (set HF_TOKEN for gated or private repositories)"
                        if response.status_code
                        in (
                            401,
                            403,
                        )
                        else ""
                    )
                    raise FetchError(f"HTTP {response.status_code} listing {url}{hint}")
                error = f"HTTP {response.status_code}"
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise FetchError(f"giving up listing {url}: {error}")

    def source(self, entry: dict[str, Any], relative: str, display: str) -> Source:
        lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else None
        sha256 = str(lfs["oid"]).lower() if lfs and _HEX64.match(str(lfs.get("oid", "")).lower()) else None
        git_sha1 = None if lfs else (str(entry["oid"]) if entry.get("oid") else None)
        size = entry.get("size")
        return Source(
            "http",
            self.url(str(entry["path"])),
            relative,
            dict(self.headers),
            display=f"{display} ({entry['path']})",
            sha256=sha256,
            git_sha1=git_sha1,
            size=int(size) if isinstance(size, int) else None,
        )


def _looks_like_file(path: str) -> bool:
    return "." in path.rsplit("/", 1)[-1]


def _hf_plan(settings: FetchSettings, uri: str) -> FetchPlan:
    rest = uri[len("hf://") :]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or not revision:
        raise FetchError(f"hf source must look like hf://org/repo[/path][@revision], got {uri!r}")
    repo = _HfRepo(settings, "/".join(parts[:2]), revision)
    path = "/".join(parts[2:])
    if path and _looks_like_file(path) and not path.endswith(".onnx"):
        return FetchPlan(
            uri, [Source("http", repo.url(path), Path(path).name, dict(repo.headers), uri)], False
        )
    if path.endswith(".onnx"):
        return FetchPlan(uri, _hf_onnx_file(repo, path, uri), True)
    entries = [e for e in repo.listing(path, recursive=True) if e.get("type") == "file"]
    prefix = f"{path}/" if path else ""
    files = [
        repo.source(e, str(e["path"])[len(prefix) :], uri)
        for e in entries
        if str(e["path"]).startswith(prefix) and not Path(str(e["path"])).name.startswith(".")
    ]
    if not files:
        raise FetchError(f"{uri} lists no files")
    return FetchPlan(uri, files, True)


def _hf_onnx_file(repo: _HfRepo, path: str, display: str) -> list[Source]:
    """The .onnx file, its external data files, and the nearest tokenizer and config files."""
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    here = {str(e["path"]): e for e in repo.listing(folder, recursive=False) if e.get("type") == "file"}
    if path not in here:
        raise FetchError(f"{display}: {path} is not in the repository listing")
    chosen = {Path(p).name: e for p, e in here.items() if p.startswith(path)}  # model.onnx(.data|_data)
    directory: str | None = folder
    while directory is not None:
        listing = (
            here
            if directory == folder
            else {
                str(e["path"]): e for e in repo.listing(directory, recursive=False) if e.get("type") == "file"
            }
        )
        for entry_path, entry in listing.items():
            name = Path(entry_path).name
            if name in _ONNX_COMPANIONS and name not in chosen:
                chosen[name] = entry
        directory = None if not directory else (directory.rsplit("/", 1)[0] if "/" in directory else "")
    return [repo.source(entry, name, display) for name, entry in sorted(chosen.items())]


def _local_plan(local: Path, display: str) -> FetchPlan:
    if local.is_dir():
        files = [
            Source("local", str(p), str(p.relative_to(local)), display=f"{display} ({p.relative_to(local)})")
            for p in sorted(local.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local).parts)
        ]
        if not files:
            raise FetchError(f"source folder {local} holds no files")
        return FetchPlan(display, files, True)
    if not local.is_file():
        raise FetchError(f"source {local} does not exist")
    if local.suffix == ".onnx":
        siblings = [p for p in local.parent.iterdir() if p.is_file()]
        chosen = [p for p in siblings if p.name.startswith(local.name) or p.name in _ONNX_COMPANIONS]
        return FetchPlan(
            display, [Source("local", str(p), p.name, display=display) for p in sorted(chosen)], True
        )
    return FetchPlan(display, [Source("local", str(local), local.name, display=display)], False)


def plan_fetch(settings: FetchSettings) -> FetchPlan:
    """Which files the source names and where each goes under dest."""
    uri = settings.source.strip()
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        name = Path(unquote(parsed.path)).name
        if not name:
            raise FetchError(f"an http source must name a file, got {uri!r}")
        return FetchPlan(uri, [Source("http", uri, name, display=uri)], False)
    if scheme == "hf":
        return _hf_plan(settings, uri)
    if scheme == "pvc":
        claim, path = parsed.netloc, unquote(parsed.path).lstrip("/")
        if not claim or not path:
            raise FetchError(f"pvc source must look like pvc://claim/path, got {uri!r}")
        root = settings.pvc_root.resolve()
        local = (root / claim / path).resolve()
        if root not in local.parents:
            raise FetchError(f"pvc path {uri!r} leaves the mount root {root}")
        return _local_plan(local, uri)
    if scheme == "file":
        return _local_plan(Path(unquote(parsed.path)), uri)
    if scheme == "s3":
        raise FetchError("s3:// sources are not supported by this runtime build; use https:// or hf://")
    raise FetchError(f"unsupported source scheme {scheme or '(none)'!r} in {uri!r}")


class Progress:
    """Progress lines on stderr and the result file in dest, at most every few seconds.

    `total` is the current file's size; for a folder, `base` counts finished files and `overall`
    the whole folder, so the record shows the folder's progress.
    """

    def __init__(self, dest: Path, source: str, *, interval: float = 2.0) -> None:
        self.dest = dest
        self.source = source
        self.interval = interval
        self._last = 0.0
        self.total: int | None = None
        self.base = 0
        self.overall: int | None = None

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        done += self.base
        total = self.overall if self.overall is not None else self.total
        if total:
            print(f"fetch: {done}/{total} bytes ({100 * done / total:.1f}%)", file=sys.stderr)
        else:
            print(f"fetch: {done} bytes", file=sys.stderr)
        write_result(
            self.dest,
            {"phase": "Downloading", "source": self.source, "bytesDownloaded": done, "totalBytes": total},
        )


def write_result(dest: Path, data: dict[str, Any]) -> None:
    tmp = dest / f"{RESULT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, dest / RESULT_FILE)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"fetch: waiting for another fetcher holding {path}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _published_digest(response: httpx.Response) -> str | None:
    """sha256 the server publishes: HF's X-Linked-ETag (LFS), a 64-hex ETag, or Repr-Digest/Digest."""
    for candidate in [*response.history, response]:
        for header in ("x-linked-etag", "etag"):
            value = str(candidate.headers.get(header, "")).strip().removeprefix("W/").strip('"').lower()
            if _HEX64.match(value):
                return value
        for header in ("repr-digest", "digest"):
            value = candidate.headers.get(header, "")
            match = re.search(r"sha-256=:?([A-Za-z0-9+/=]+):?", value)
            if match:
                with contextlib.suppress(ValueError):
                    return str(base64.b64decode(match.group(1)).hex())
    return None


def _check_space(dest: Path, needed: int) -> None:
    free = shutil.disk_usage(dest).free
    if needed + _SPACE_MARGIN > free:
        raise FetchError(f"not enough disk space in {dest}: need {needed + _SPACE_MARGIN} bytes, {free} free")


def _total_from(response: httpx.Response, offset: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    match = re.match(r"bytes \d+-\d+/(\d+)", content_range)
    if match:
        return int(match.group(1))
    length = response.headers.get("content-length")
    if length is not None and response.status_code == 200:
        return int(length)
    if length is not None and response.status_code == 206:
        return offset + int(length)
    return None


def _download(
    settings: FetchSettings, source: Source, part: Path, progress: Progress
) -> tuple[str, str | None]:
    """Downloads into `part` (resuming); returns (sha256 of the bytes, published digest)."""
    timeout = httpx.Timeout(settings.timeout_seconds)
    published: str | None = None
    attempt = 0
    with httpx.Client(timeout=timeout, follow_redirects=True, headers=source.headers) as client:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            digest = hashlib.sha256()
            try:
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                with client.stream("GET", source.location, headers=headers) as response:
                    if response.status_code == 416 and offset:
                        # Our part may already be the whole file; the server cannot give more.
                        published = published or _published_digest(response)
                        return sha256_file(part), published
                    if response.status_code in (408, 429) or response.status_code >= 500:
                        raise _RetryableError(f"HTTP {response.status_code} from {source.display}")
                    if response.status_code >= 400:
                        hint = (
                            " (set HF_TOKEN for gated or private repositories)"
                            if response.status_code
                            in (
                                401,
                                403,
                            )
                            else ""
                        )
                        raise FetchError(f"HTTP {response.status_code} fetching {source.display}{hint}")
                    published = published or _published_digest(response)
                    if response.status_code == 200 and offset:
                        offset = 0  # the server ignored Range: start over
                    total = _total_from(response, offset)
                    progress.total = total
                    if total is not None:
                        _check_space(part.parent, total - offset)
                    mode = "ab" if offset else "wb"
                    with part.open(mode) as handle:
                        if offset:
                            _hash_prefix(part, offset, digest)
                        written = offset
                        for chunk in response.iter_bytes(_CHUNK):
                            handle.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                            progress.update(written)
                        handle.flush()
                        os.fsync(handle.fileno())
                    if total is not None and written < total:
                        raise _RetryableError(f"connection ended at {written} of {total} bytes")
                    progress.update(written, force=True)
                    return digest.hexdigest(), published
            except (httpx.TransportError, _RetryableError) as exc:
                attempt += 1
                if attempt > settings.retries:
                    raise FetchError(
                        f"giving up on {source.display} after {attempt} attempts: {exc}"
                    ) from exc
                delay = settings.backoff_seconds * (2 ** (attempt - 1))
                print(f"fetch: attempt {attempt} failed ({exc}); retrying in {delay:.1f}s", file=sys.stderr)
                time.sleep(delay)


def _hash_prefix(part: Path, length: int, digest: Any) -> None:
    with part.open("rb") as handle:
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)


def _copy(source: Source, part: Path, progress: Progress) -> str:
    origin = Path(source.location)
    if not origin.is_file():
        raise FetchError(f"source file {origin} does not exist")
    size = origin.stat().st_size
    progress.total = size
    _check_space(part.parent, size)
    digest = hashlib.sha256()
    copied = 0
    with origin.open("rb") as reader, part.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            writer.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
            progress.update(copied)
        writer.flush()
        os.fsync(writer.fileno())
    progress.update(copied, force=True)
    return digest.hexdigest()


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
    _check_space(target.parent, source.stat().st_size)
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


def _transfer(
    settings: FetchSettings, source: Source, target: Path, progress: Progress, expected: str | None
) -> tuple[str, bool]:
    """One file into target, checked, renamed into place only when complete.

    Returns its sha256 and whether a published digest (or git blob id) confirmed it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    if source.kind == "http":
        resumed = part.is_file() and part.stat().st_size > 0
        actual, published = _download(settings, source, part, progress)
        want = expected or source.sha256 or published
        if want and actual != want and resumed:
            # The bytes kept from an earlier attempt may be what is wrong: never splice them.
            log.warning(
                "fetch: %s resumed from a partial download has sha256 %s, not %s; downloading it again "
                "from the start",
                source.display,
                actual,
                want,
            )
            part.unlink()
            actual, published = _download(settings, source, part, progress)
    else:
        actual, published = _copy(source, part, progress), None
    want = expected or source.sha256 or published
    if want and actual != want:
        part.unlink(missing_ok=True)
        raise FetchError(f"sha256 mismatch for {source.display}: expected {want}, got {actual}")
    checked_blob = not want and source.git_sha1 is not None
    if checked_blob and _git_blob_sha1(part) != source.git_sha1:
        part.unlink(missing_ok=True)
        raise FetchError(f"git blob id mismatch for {source.display}: expected {source.git_sha1}")
    os.replace(part, target)
    progress.base += target.stat().st_size
    return actual, bool(want) or checked_blob


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(settings: FetchSettings) -> dict[str, Any]:
    """Fetches into settings.dest and returns the result record (also written to .slm-fetch.json)."""
    if settings.sha256 and not _HEX64.match(settings.sha256):
        raise FetchError(f"sha256 must be 64 hex characters, got {settings.sha256!r}")
    dest = settings.dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with file_lock(dest / LOCK_FILE):
            plan = plan_fetch(settings)
            if plan.folder:
                return _fetch_folder(settings, plan)
            return _fetch_file(settings, plan.files[0], plan.display)
    except OSError as exc:
        cache_error = _as_cache_error(exc, dest)
        if cache_error is not None:
            raise cache_error from exc
        raise


def _fetch_file(settings: FetchSettings, source: Source, display: str) -> dict[str, Any]:
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
    actual, verified = _transfer(settings, source, final, progress, settings.sha256 or None)
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


def _fetch_folder(settings: FetchSettings, plan: FetchPlan) -> dict[str, Any]:
    """Every file of an ONNX model folder into dest, each verified; dest is what serve loads."""
    dest = settings.dest
    record = _existing_record(dest, dest, settings)
    if record is not None:
        print(f"fetch: {dest} already cached and verified", file=sys.stderr)
        return record
    progress = Progress(dest, plan.display)
    known = [f.size for f in plan.files]
    if all(size is not None for size in known):
        progress.overall = sum(size or 0 for size in known)
        _check_space(dest, progress.overall)
    files: list[dict[str, Any]] = []
    unverified: list[str] = []
    for source in plan.files:
        target = (dest / source.filename).resolve()
        if dest.resolve() not in target.parents:
            raise FetchError(f"{source.display} would be written outside {dest}")
        actual, verified = _transfer(settings, source, target, progress, None)
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


def _existing_record(dest: Path, served: Path, settings: FetchSettings) -> dict[str, Any] | None:
    """The previous result when it matches this request and its files still hash to what it records.

    A file that changed since (size or sha256) is logged, removed and fetched again.
    """
    if not served.exists():
        return None
    record = read_record(dest)
    if record is None or record.get("phase") != "Ready" or record.get("path") != str(served):
        return None
    if record.get("source") != settings.source.strip():
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


def run(settings: FetchSettings, out: IO[str] = sys.stdout) -> int:
    """Fetch; the outcome (the result record, or one error line) is also the termination message."""
    try:
        record = fetch(settings)
    except (FetchError, OSError) as exc:
        error = exc if isinstance(exc, FetchError) else FetchError(str(exc))
        line = error.line()
        # A known failure's line is the last thing logged too, for FallbackToLogsOnError.
        print(line if type(error) is not FetchError else f"fetch failed: {error}", file=sys.stderr)
        with contextlib.suppress(OSError):
            settings.dest.mkdir(parents=True, exist_ok=True)
            write_result(settings.dest, {"phase": "Failed", "source": settings.source, "error": line})
        report_termination(settings.termination_log, line)
        return 1
    print(json.dumps(record), file=out)
    report_termination(settings.termination_log, json.dumps(record, separators=(",", ":")))
    return 0
