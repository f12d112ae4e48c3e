"""One file into dest: a resumable HTTP download or a local copy, checked, then renamed into place.

A download resumes with Range after a cut and retries with backoff. A resumed download sends
`If-Range` with the validator saved beside the `.part` (ETag, else Last-Modified) and accepts only
a 206 that continues the part exactly, so a part of an older version of the file is never spliced
with the new one. Bytes are fetched as stored (`Accept-Encoding: identity`, no transparent
decompression): sizes and ranges are of those. The file appears under its final name only complete
and verified (sha256 given, published, or the git blob id).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from slm_runtime.fetch.credentials import credentialed_client, refusal
from slm_runtime.fetch.errors import FetchError, SourceUnauthorizedError
from slm_runtime.fetch.plan import Source
from slm_runtime.fetch.progress import Progress
from slm_runtime.fetch.space import check_space
from slm_runtime.integrity import SHA256_HEX, git_blob_sha1, sha256_file
from slm_runtime.redact import redact_text
from slm_runtime.settings import FetchSettings

log = logging.getLogger(__package__)  # "slm_runtime.fetch": the fetcher's one logger, as before the split
_CHUNK = 1 << 20


class _RetryableError(Exception):
    pass


def part_path(target: Path) -> Path:
    """Where `target` is written until it is complete and verified."""
    return target.with_name(f".{target.name}.part")


def _published_digest(response: httpx.Response) -> str | None:
    """sha256 the server publishes: HF's X-Linked-ETag (LFS), a 64-hex ETag, or Repr-Digest/Digest."""
    for candidate in [*response.history, response]:
        for header in ("x-linked-etag", "etag"):
            value = str(candidate.headers.get(header, "")).strip().removeprefix("W/").strip('"').lower()
            if SHA256_HEX.match(value):
                return value
        for header in ("repr-digest", "digest"):
            value = candidate.headers.get(header, "")
            match = re.search(r"sha-256=:?([A-Za-z0-9+/=]+):?", value)
            if match:
                with contextlib.suppress(ValueError):
                    return str(base64.b64decode(match.group(1)).hex())
    return None


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
    headers = {"Accept-Encoding": "identity"}
    with credentialed_client(source.location, source.credentials, timeout=timeout, headers=headers) as client:
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
                    if response.status_code in (401, 403):
                        what = f"fetching {source.display}"
                        raise SourceUnauthorizedError(
                            refusal(
                                response,
                                what,
                                source.location,
                                source.credentials,
                                hf=source.display.startswith("hf://"),
                            )
                        )
                    if response.status_code >= 400:
                        raise FetchError(f"HTTP {response.status_code} fetching {source.display}")
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
                        check_space(part.parent, total - offset)
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
    check_space(part.parent, size)
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


def transfer(
    settings: FetchSettings, source: Source, target: Path, progress: Progress, expected: str | None
) -> tuple[str, bool]:
    """One file into target, checked, renamed into place only when complete.

    Returns its sha256 and whether a published digest (or git blob id) confirmed it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
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
    if checked_blob and git_blob_sha1(part) != source.git_sha1:
        _discard_part(part)
        raise FetchError(f"git blob id mismatch for {source.display}: expected {source.git_sha1}")
    os.replace(part, target)
    _meta_path(part).unlink(missing_ok=True)
    progress.base += target.stat().st_size
    return actual, bool(want) or checked_blob
