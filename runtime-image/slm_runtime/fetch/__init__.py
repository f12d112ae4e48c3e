"""`slm_runtime fetch`: put one model (a file, or an ONNX folder) into the cache, safely.

Downloads resume with Range after a cut, retry with backoff, check free space first and verify
sha256 (given, or the digest the source publishes); each file appears under its final name only
complete and verified (atomic rename). An fcntl lock per destination makes concurrent fetchers wait
for each other instead of writing the same bytes. `.slm-fetch.json` in dest records the outcome.
A destination the process cannot write ends in one line naming the path, the uid/gid, the likely
cause and the fix (prefix `CacheNotWritable:`). Every failure ends in a Failed record and one
termination line; sources are written and logged only through `redact_url`. Credential headers
(read from Secret files) go to the source's own host only, never after a redirect to another; a 401
or 403 ends in `SourceUnauthorized:` naming their Secrets.

The modules, by concern: `sources` (a URI into a plan of files; `huggingface` and `local` by
scheme, `plan` their records), `credentials` (request headers from Secret files), `transfer`
(resumable download or local copy of one file), `cache` (what dest already holds, the Ready
record), `progress` (progress lines and the record writer), `locking`, `space`, `quantize`, and
`errors` (the failure kinds, prefixes of the termination message). This module is the entry point.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from typing import IO, Any

from slm_runtime.fetch.cache import fetch_file, fetch_folder
from slm_runtime.fetch.errors import SOURCE_UNAUTHORIZED, FetchError, as_cache_error
from slm_runtime.fetch.locking import LOCK_FILE, file_lock
from slm_runtime.fetch.progress import write_result
from slm_runtime.fetch.sources import plan_fetch
from slm_runtime.integrity import SHA256_HEX, report_termination
from slm_runtime.redact import install_log_redaction, redact_text, redact_url
from slm_runtime.settings import FetchSettings

__all__ = ["SOURCE_UNAUTHORIZED", "FetchError", "fetch", "run"]


def fetch(settings: FetchSettings) -> dict[str, Any]:
    """Fetches into settings.dest and returns the result record (also written to .slm-fetch.json)."""
    if settings.sha256 and not SHA256_HEX.match(settings.sha256):
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
                return fetch_folder(settings, plan)
            return fetch_file(settings, plan.files[0], plan.display)
    except OSError as exc:
        cache_error = as_cache_error(exc, dest)
        if cache_error is not None:
            raise cache_error from exc
        raise


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
