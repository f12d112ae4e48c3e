"""The Bearer key the API asks for: fixed, or read from a file (a mounted Secret) and re-read when
the file changes, so rotating the Secret takes effect without restarting the pod."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class ApiKey:
    """``current()`` is the key in force (b"" = none). With a file, a change of the file (kubelet
    swaps a Secret volume's files atomically, so the inode changes) is seen on the next request; a
    file that is missing or unreadable refuses every request rather than opening the API."""

    # Never equal to a presented token (a Bearer token is stripped and has no NUL bytes).
    _UNREADABLE = b"\0unreadable"

    def __init__(self, key: str = "", file: str = "") -> None:
        self._fixed = key.strip().encode()
        self._file = Path(file) if file else None
        self._lock = threading.RLock()  # _unreadable takes it again from inside current()
        self._seen: tuple[int, int, int, int] | None = None
        self._value = b""

    @property
    def enabled(self) -> bool:
        return bool(self._file) or bool(self._fixed)

    def current(self) -> bytes:
        if self._file is None:
            return self._fixed
        try:
            stat = os.stat(self._file)  # follows the ..data symlink of a Secret volume
        except OSError as error:
            return self._unreadable(f"cannot read the API key file {self._file}: {error.strerror}")
        seen = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if seen != self._seen:
                try:
                    value = self._file.read_bytes().strip()
                except OSError as error:
                    return self._unreadable(f"cannot read the API key file {self._file}: {error.strerror}")
                if not value:
                    return self._unreadable(f"the API key file {self._file} is empty")
                if self._seen is not None:
                    log.info("API key file %s changed; the new key is in force", self._file)
                self._seen, self._value = seen, value
            return self._value

    def _unreadable(self, why: str) -> bytes:
        with self._lock:
            if self._seen != (0, 0, 0, 0):
                log.error("%s; every request is refused until it can be read", why)
                self._seen = (0, 0, 0, 0)
        return self._UNREADABLE
