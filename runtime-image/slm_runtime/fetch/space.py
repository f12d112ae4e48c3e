"""Free space checked before writing, so a full volume fails at once and not half-way."""

from __future__ import annotations

import shutil
from pathlib import Path

from slm_runtime.fetch.errors import FetchError

# Free space kept beyond the file itself (filesystem metadata, the result file, a quantized copy's start).
SPACE_MARGIN = 16 << 20


def _free_bytes(path: Path) -> int:
    """Free bytes on path's filesystem (one function, so tests can stand in a small disk)."""
    return shutil.disk_usage(path).free


def check_space(dest: Path, needed: int) -> None:
    free = _free_bytes(dest)
    if needed + SPACE_MARGIN > free:
        raise FetchError(f"not enough disk space in {dest}: need {needed + SPACE_MARGIN} bytes, {free} free")
