"""`slm_runtime fetch`: put one model file into the cache, safely.

Downloads resume with Range after a cut, retry with backoff, check free space first and verify
sha256 (given, or the digest the source publishes); the file appears under its final name only
complete and verified (atomic rename). A resumed download sends `If-Range` with the validator saved
beside the `.part` (ETag, else Last-Modified) and accepts only a 206 that continues the part exactly,
so a part of an older version of the file is never spliced with the new one. Bytes are fetched as
stored (`Accept-Encoding: identity`, no transparent decompression): sizes and ranges are of those.
An fcntl lock per file makes concurrent fetchers wait for each other instead of writing the same bytes. `.slm-fetch.json` in dest records the outcome.

A file already in dest is trusted only after its bytes hash to what was recorded (or to the
expected digest); a resumed partial download that fails its digest is fetched once more from the
start rather than spliced. A destination the process cannot write ends in one line naming the
path, the uid/gid, the likely cause and the fix (prefix `CacheNotWritable:`). Every failure ends in
a Failed record and one termination line; sources are written and logged only through `redact_url`.

Why one module of ~1,000 lines: it still holds the Hugging Face client, planning, resumable transfer,
locking and hashing, and quantization; the split into `fetch/` (sources, transfer, quantize) is the
redesign's step (issue 10), kept apart from these fixes so each can be reviewed on its own.
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
import traceback
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
from slm_runtime.redact import install_log_redaction, redact_text, redact_url
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
                try:
                    page = response.json()
                except ValueError as exc:
                    raise FetchError(f"listing from {redact_url(url)} is not JSON ({exc})") from exc
                if not isinstance(page, list):
                    raise FetchError(f"unexpected listing from {redact_url(url)}: not a list")
                for entry in page:
                    # A malformed entry is an error, not skipped: a model folder missing a file fails later, obscurely.
                    if not (
                        isinstance(entry, dict)
                        and isinstance(entry.get("type"), str)
                        and isinstance(entry.get("path"), str)
                        and entry["path"]
                    ):
                        shown = json.dumps(entry)[:200]
                        raise FetchError(f"malformed entry in the listing from {redact_url(url)}: {shown}")
                    entries.append(entry)
                url = response.links.get("next", {}).get("url")
        return entries

    def _get(self, client: httpx.Client, url: str) -> httpx.Response:
        shown = redact_url(url)
        for attempt in range(self.retries + 1):
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                error: str = str(exc)
            except httpx.HTTPError as exc:  # TooManyRedirects and the like: retrying will not help
                raise FetchError(f"listing {shown} failed: {type(exc).__name__}: {exc}") from exc
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
                    raise FetchError(f"HTTP {response.status_code} listing {shown}{hint}")
                error = f"HTTP {response.status_code}"
            if attempt < self.retries:
                time.sleep(self.backoff * (2**attempt))
        raise FetchError(f"giving up listing {shown}: {error}")

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
    display = redact_url(uri)
    rest = uri[len("hf://") :]
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or not revision:
        raise FetchError(f"hf source must look like hf://org/repo[/path][@revision], got {display!r}")
    repo = _HfRepo(settings, "/".join(parts[:2]), revision)
    path = "/".join(parts[2:])
    if path and _looks_like_file(path) and not path.endswith(".onnx"):
        return FetchPlan(
            display, [Source("http", repo.url(path), Path(path).name, dict(repo.headers), display)], False
        )
    if path.endswith(".onnx"):
        return FetchPlan(display, _hf_onnx_file(repo, path, display), True)
    entries = [e for e in repo.listing(path, recursive=True) if e.get("type") == "file"]
    prefix = f"{path}/" if path else ""
    files = [
        repo.source(e, str(e["path"])[len(prefix) :], display)
        for e in entries
        if str(e["path"]).startswith(prefix) and not Path(str(e["path"])).name.startswith(".")
    ]
    if not files:
        raise FetchError(f"{display} lists no files")
    return FetchPlan(display, files, True)


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


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _followed(path: Path, relative: Path, root: Path, display: str) -> Path:
    """Where a source folder's entry is read from: itself, or the file its symlink names inside root.

    Links inside the root are followed (a Hugging Face cache snapshot on a claim is made of links to
    ../../blobs); a link leaving it is refused, since it could copy files the source was never meant
    to expose (another mount, the container's secrets) into the shared cache.
    """
    if not path.is_symlink():
        return path
    target = path.resolve()
    if not _inside(target, root):
        raise FetchError(
            f"{display}: {relative} is a symlink to {target}, outside the source root {root}; refusing to follow it"
        )
    if not target.exists():
        raise FetchError(f"{display}: {relative} is a broken symlink (to {target})")
    return target


def _local_files(folder: Path, display: str, root: Path) -> list[Source]:
    found: list[tuple[Path, Path]] = []
    for current, dirnames, filenames in os.walk(folder):  # never descends into linked folders
        here = Path(current)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames:
            if (here / name).is_symlink():
                relative = (here / name).relative_to(folder)
                _followed(here / name, relative, root, display)  # outside the root: that error first
                # A linked folder would be copied twice (or forever, when it links to a parent).
                raise FetchError(
                    f"{display}: {relative} is a symlink to a folder ({(here / name).resolve()}); "
                    "only links to files are followed"
                )
        for name in filenames:
            if name.startswith("."):
                continue
            relative = (here / name).relative_to(folder)
            location = _followed(here / name, relative, root, display)
            if location.is_file():
                found.append((relative, location))
    # Sorted by path parts as before (the folder's manifest digest depends on this order).
    return [
        Source("local", str(location), str(relative), display=f"{display} ({relative})")
        for relative, location in sorted(found)
    ]


def _local_plan(local: Path, display: str, root: Path | None = None) -> FetchPlan:
    """Files of a local source; `root` bounds where its symlinks may lead (default: the folder named)."""
    if local.is_dir():
        files = _local_files(local, display, root or local.resolve())
        if not files:
            raise FetchError(f"source folder {local} holds no files")
        return FetchPlan(display, files, True)
    if not local.is_file():
        raise FetchError(f"source {local} does not exist")
    if local.suffix == ".onnx":
        bound = root or local.resolve().parent
        chosen = [
            (p, _followed(p, Path(p.name), bound, display))
            for p in sorted(local.parent.iterdir())
            if p.name.startswith(local.name) or p.name in _ONNX_COMPANIONS
        ]
        return FetchPlan(
            display,
            [
                Source("local", str(target), p.name, display=display)
                for p, target in chosen
                if target.is_file()
            ],
            True,
        )
    return FetchPlan(display, [Source("local", str(local), local.name, display=display)], False)


def plan_fetch(settings: FetchSettings) -> FetchPlan:
    """Which files the source names and where each goes under dest."""
    uri = settings.source.strip()
    display = redact_url(uri)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        name = Path(unquote(parsed.path)).name
        if not name:
            raise FetchError(f"an http source must name a file, got {display!r}")
        return FetchPlan(display, [Source("http", uri, name, display=display)], False)
    if scheme == "hf":
        return _hf_plan(settings, uri)
    if scheme == "pvc":
        claim, path = parsed.netloc, unquote(parsed.path).lstrip("/")
        if not claim or not path:
            raise FetchError(f"pvc source must look like pvc://claim/path, got {display!r}")
        root = settings.pvc_root.resolve()
        # The claim's own mount is the bound: the fetch Job mounts only that claim under the root.
        claim_root = (root / claim).resolve()
        local = (claim_root / path).resolve()
        if root not in claim_root.parents or claim_root not in local.parents:
            raise FetchError(f"pvc path {display!r} leaves the mount root {claim_root}")
        return _local_plan(local, display, claim_root)
    if scheme == "file":
        return _local_plan(Path(unquote(parsed.path)), display)
    if scheme == "s3":
        raise FetchError("s3:// sources are not supported by this runtime build; use https:// or hf://")
    raise FetchError(f"unsupported source scheme {scheme or '(none)'!r} in {display!r}")


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


def _free_bytes(path: Path) -> int:
    """Free bytes on path's filesystem (one function, so tests can stand in a small disk)."""
    return shutil.disk_usage(path).free


def _check_space(dest: Path, needed: int) -> None:
    free = _free_bytes(dest)
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


def _meta_path(part: Path) -> Path:
    return part.with_name(f"{part.name}.json")


def _read_meta(part: Path) -> dict[str, Any]:
    """What the response that started `part` said about the file (validators, total size)."""
    try:
        meta = json.loads(_meta_path(part).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _save_meta(part: Path, response: httpx.Response, total: int | None) -> None:
    etag = response.headers.get("etag")
    modified = response.headers.get("last-modified")
    # If-Range needs a strong validator: a weak ETag is only compared by us, on the 206 that answers.
    validator = etag if etag and not etag.startswith("W/") else modified
    meta = {"validator": validator, "etag": etag, "lastModified": modified, "total": total}
    _meta_path(part).write_text(json.dumps(meta))


def _discard_part(part: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)


def _resume_problem(response: httpx.Response, offset: int, meta: Mapping[str, Any], size: int | None) -> str:
    """Why a 206 does not continue `part` ("" when it does): wrong start, other total, other version."""
    content_range = response.headers.get("content-range", "")
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
    if not match:
        return f"the partial response has no usable Content-Range ({content_range!r})"
    if int(match.group(1)) != offset:
        return f"the server resumed at byte {match.group(1)}, not at {offset}"
    known = meta.get("total") if isinstance(meta.get("total"), int) else size
    if match.group(3) != "*" and known is not None and int(match.group(3)) != known:
        return f"the file is now {match.group(3)} bytes, not {known}"
    # For servers that ignore If-Range: the validators the 206 carries must still be the part's.
    for header, key in (("etag", "etag"), ("last-modified", "lastModified")):
        now, then = response.headers.get(header), meta.get(key)
        if now and then and now != then:
            return f"the file changed ({header} {now}, was {then})"
    return ""


def _download(
    settings: FetchSettings, source: Source, part: Path, progress: Progress, known_digest: str | None
) -> tuple[str, str | None]:
    """Downloads into `part` (resuming); returns (sha256 of the bytes, published digest).

    A part is continued only by a 206 that starts where it ends, for the same version of the file
    (If-Range with its saved validator; Content-Range, total size and validators checked). Anything
    else starts the file over: a 200 to the ranged request, or a 416 when no digest can tell a
    complete part from a stale one.
    """
    timeout = httpx.Timeout(settings.timeout_seconds)
    published: str | None = None
    attempt = 0
    # identity: the bytes as stored, so Content-Length, ranges and digests all count the same bytes
    # (a transparently decompressed body would not match them, nor resume).
    headers = {**source.headers, "Accept-Encoding": "identity"}
    with httpx.Client(timeout=timeout, follow_redirects=True, headers=headers) as client:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            meta = _read_meta(part) if offset else {}
            digest = hashlib.sha256()
            try:
                request_headers: dict[str, str] = {}
                if offset:
                    request_headers["Range"] = f"bytes={offset}-"
                    if isinstance(meta.get("validator"), str):
                        request_headers["If-Range"] = meta["validator"]
                with client.stream("GET", source.location, headers=request_headers) as response:
                    published = published or _published_digest(response)
                    if response.status_code == 416 and offset:
                        if known_digest or published:
                            # Our part may already be the whole file; the digest check decides.
                            return sha256_file(part), published
                        log.warning(
                            "fetch: %s: the server cannot continue the partial download of %d bytes and "
                            "no digest can tell it complete; downloading it again from the start",
                            source.display,
                            offset,
                        )
                        _discard_part(part)
                        continue
                    if response.status_code in (408, 429) or response.status_code >= 500:
                        raise _RetryableError(f"HTTP {response.status_code} from {source.display}")
                    if response.status_code >= 400:
                        hint = (
                            " (set HF_TOKEN for gated or private repositories)"
                            if response.status_code in (401, 403)
                            else ""
                        )
                        raise FetchError(f"HTTP {response.status_code} fetching {source.display}{hint}")
                    if response.status_code == 206:
                        problem = _resume_problem(response, offset, meta, source.size)
                        if problem and not offset:
                            raise FetchError(f"{source.display}: unexpected partial response: {problem}")
                        if problem:
                            log.warning(
                                "fetch: %s: %s; downloading it again from the start", source.display, problem
                            )
                            _discard_part(part)
                            continue
                    elif offset:
                        offset = 0  # a 200: the server ignored Range, or If-Range found a new version
                    total = _total_from(response, offset)
                    progress.total = total
                    if total is not None:
                        _check_space(part.parent, total - offset)
                    if not offset:
                        _save_meta(part, response, total)
                    mode = "ab" if offset else "wb"
                    with part.open(mode) as handle:
                        if offset:
                            _hash_prefix(part, offset, digest)
                        written = offset
                        # As the bytes arrive (not buffered to _CHUNK): a cut keeps all that came.
                        for chunk in response.iter_raw():
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
                        f"giving up on {source.display} after {attempt} attempts: {redact_text(str(exc))}"
                    ) from exc
                delay = settings.backoff_seconds * (2 ** (attempt - 1))
                print(
                    f"fetch: attempt {attempt} failed ({redact_text(str(exc))}); retrying in {delay:.1f}s",
                    file=sys.stderr,
                )
                time.sleep(delay)
            except httpx.HTTPError as exc:  # TooManyRedirects, a bad redirect: retrying will not help
                raise FetchError(
                    f"fetching {source.display} failed: {type(exc).__name__}: {redact_text(str(exc))}"
                ) from exc


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
        actual, published = _download(settings, source, part, progress, expected or source.sha256)
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
            _discard_part(part)
            actual, published = _download(settings, source, part, progress, expected or source.sha256)
    else:
        actual, published = _copy(source, part, progress), None
    want = expected or source.sha256 or published
    if want and actual != want:
        _discard_part(part)
        raise FetchError(f"sha256 mismatch for {source.display}: expected {want}, got {actual}")
    checked_blob = not want and source.git_sha1 is not None
    if checked_blob and _git_blob_sha1(part) != source.git_sha1:
        _discard_part(part)
        raise FetchError(f"git blob id mismatch for {source.display}: expected {source.git_sha1}")
    os.replace(part, target)
    _meta_path(part).unlink(missing_ok=True)
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
    # httpx logs every request's URL (at info), httpcore the response headers (a redirect's signed
    # Location, at debug): presigned query strings must not reach the logs. Logger filters apply
    # only where a record is logged, hence httpcore's own loggers by name.
    install_log_redaction(
        "httpx", "httpcore.http11", "httpcore.http2", "httpcore.connection", "httpcore.proxy"
    )
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
        _check_space(dest, remaining)
    files: list[dict[str, Any]] = []
    unverified: list[str] = []
    for source, target, done in zip(plan.files, targets, complete, strict=True):
        if done is None:
            actual, verified = _transfer(settings, source, target, progress, None)
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
        return (sha256_file(target), True) if _git_blob_sha1(target) == source.git_sha1 else None
    if source.kind == "local":
        origin = Path(source.location)
        if origin.is_file() and origin.stat().st_size == target.stat().st_size:
            actual = sha256_file(target)
            return (actual, False) if sha256_file(origin) == actual else None
    return None


def _still_to_fetch(source: Source, target: Path) -> int:
    """Bytes a file still needs on disk: its size less what its partial download already holds."""
    size = source.size or 0
    part = target.with_name(f".{target.name}.part")
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


def run(settings: FetchSettings, out: IO[str] = sys.stdout) -> int:
    """Fetch; the outcome (the result record, or one error line) is also the termination message."""
    try:
        record = fetch(settings)
    except Exception as exc:  # every failure ends in a Failed record and one line, never a traceback
        if isinstance(exc, FetchError):
            error = exc
        elif isinstance(exc, OSError):
            error = FetchError(str(exc))
        else:
            # A bug, not a known failure: its traceback helps a report, but it is not the last line.
            print(redact_text(traceback.format_exc()), file=sys.stderr, flush=True)
            error = FetchError(f"unexpected {type(exc).__name__}: {exc}")
        line = redact_text(" ".join(error.line().splitlines()))
        message = line if type(error) is not FetchError else f"fetch failed: {line.removeprefix('error: ')}"
        # A known failure's line is the last thing logged too, for FallbackToLogsOnError.
        print(message, file=sys.stderr, flush=True)
        source = redact_url(settings.source.strip())
        with contextlib.suppress(OSError):
            settings.dest.mkdir(parents=True, exist_ok=True)
            write_result(settings.dest, {"phase": "Failed", "source": source, "error": line})
        report_termination(settings.termination_log, line)
        return 1
    print(json.dumps(record), file=out)
    report_termination(settings.termination_log, json.dumps(record, separators=(",", ":")))
    return 0
