"""How a fetch fails: FetchError and its kinds, each a prefix of the termination message.

The operator maps known prefixes to condition reasons (slm_operator.observe.FETCH_FAILURE_KINDS):
`CacheNotWritable` (integrity.CACHE_NOT_WRITABLE) and `SourceUnauthorized` are a contract with it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from slm_runtime.integrity import CACHE_NOT_WRITABLE

SOURCE_UNAUTHORIZED = "SourceUnauthorized"


class FetchError(Exception):
    """A failure with a message for the operator's status; the fetch exits non-zero."""

    prefix = "error"  # of the termination message; the operator maps known prefixes to reasons

    def line(self) -> str:
        return f"{self.prefix}: {self}"


class CacheNotWritableError(FetchError):
    """The cache volume (or a file in it) cannot be written by this process."""

    prefix = CACHE_NOT_WRITABLE


class SourceUnauthorizedError(FetchError):
    """The source refused the request (401, 403): credentials missing, wrong, or not enough."""

    prefix = SOURCE_UNAUTHORIZED


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


def as_cache_error(exc: OSError, dest: Path) -> CacheNotWritableError | None:
    """`exc` as the unwritable-cache diagnosis when it is a permission error on dest's path; else None."""
    if exc.errno not in _NOT_WRITABLE:
        return None
    for filename in (exc.filename, exc.filename2):
        path = _in_cache(filename, dest)
        if path is not None:
            return cache_not_writable(path, exc.errno)
    return None
