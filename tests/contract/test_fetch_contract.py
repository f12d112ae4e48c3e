"""What the fetcher writes is what the operator reads: progress lines and failure prefixes.

The operator reads the last lines of a running fetch Pod's log (`status.parse_fetch_progress`);
the fetcher writes them (`slm_runtime.fetch.progress.Progress`). This test drives the real writer and
parses its output with the real reader.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slm_operator.observe import parse_fetch_progress
from slm_runtime.fetch.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_parse_back_with_bytes_total_and_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    progress = Progress(tmp_path, "https://example.test/model.gguf", interval=2.0, clock=clock)
    progress.total = 10_000
    progress.update(1_000)  # the first line: resumed bytes, no rate yet
    assert parse_fetch_progress(capsys.readouterr().err) == (1_000, 10_000, 0)

    clock.now += 1.0
    progress.update(1_500)  # within the interval: no line
    assert capsys.readouterr().err == ""

    clock.now += 3.0
    progress.update(4_000)  # 3,000 bytes in 4 s
    err = capsys.readouterr().err
    assert err == "fetch: 4000/10000 bytes (40.0%) at 750 B/s\n"
    assert parse_fetch_progress("fetch: waiting for another fetcher\n" + err) == (4_000, 10_000, 750)


def test_a_source_without_a_size_still_reports_bytes_and_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = Clock()
    progress = Progress(tmp_path, "https://example.test/model.gguf", clock=clock)
    progress.update(0)
    clock.now += 2.0
    progress.update(2_048)
    assert parse_fetch_progress(capsys.readouterr().err) == (2_048, 0, 1_024)


def test_no_progress_line_is_none() -> None:
    assert parse_fetch_progress("") is None
    assert parse_fetch_progress("fetch: /models/x.gguf is already cached\n") is None


def test_every_fetch_failure_kind_is_a_prefix_the_runtime_writes() -> None:
    """status.FETCH_FAILURE_KINDS reads prefixes of the fetcher's termination message."""
    from slm_operator.observe import FETCH_FAILURE_KINDS, MODEL_CORRUPTED
    from slm_runtime import fetch, integrity

    written = {integrity.CACHE_NOT_WRITABLE, integrity.MODEL_CORRUPTED, fetch.SOURCE_UNAUTHORIZED}
    assert set(FETCH_FAILURE_KINDS) - {""} <= written
    assert MODEL_CORRUPTED == integrity.MODEL_CORRUPTED
