"""What a fetch reports while it runs: progress lines on stderr and the result record in dest.

The line format ("fetch: D/T bytes (P%) at R B/s") is parsed by the operator
(slm_operator.observe.parse_fetch_progress; tests/contract/test_fetch_contract.py holds the two in
step). The record (integrity.RESULT_FILE) is replaced atomically, never seen half-written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slm_runtime.integrity import RESULT_FILE


class Progress:
    """Progress lines on stderr and the result file in dest, at most every few seconds.

    `total` is the current file's size; for a folder, `base` counts finished files and `overall`
    the whole folder, so the record shows the folder's progress. Each line ends with the rate
    since the line before ("at N B/s"): the operator reads the last one from the Pod's log into
    status.cache (slm_operator.observe.parse_fetch_progress), so keep the two in step.
    """

    def __init__(
        self, dest: Path, source: str, *, interval: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.dest = dest
        self.source = source
        self.interval = interval
        self.clock = clock
        self._last = 0.0
        self._last_done: int | None = None  # bytes at the last line; None before the first
        self.rate = 0
        self.total: int | None = None
        self.base = 0
        self.overall: int | None = None

    def update(self, done: int, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval:
            return
        done += self.base
        if self._last_done is not None and now > self._last and done >= self._last_done:
            # The rate since the previous line; the first line (which may count resumed bytes
            # already on disk) has none.
            self.rate = int((done - self._last_done) / (now - self._last))
        self._last, self._last_done = now, done
        total = self.overall if self.overall is not None else self.total
        if total:
            line = f"fetch: {done}/{total} bytes ({100 * done / total:.1f}%) at {self.rate} B/s"
        else:
            line = f"fetch: {done} bytes at {self.rate} B/s"
        print(line, file=sys.stderr)
        write_result(
            self.dest,
            {
                "phase": "Downloading",
                "source": self.source,
                "bytesDownloaded": done,
                "totalBytes": total,
                "bytesPerSecond": self.rate,
            },
        )


def write_result(dest: Path, data: dict[str, Any]) -> None:
    tmp = dest / f"{RESULT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, dest / RESULT_FILE)
