"""file:// and pvc:// sources: the files a local path names, and symlinks that may not be followed.

A folder is every file under it (hidden ones skipped); an `.onnx` file brings its external data and
the tokenizer and config files beside it. A symlink is followed only while it stays inside the
source's root, and never to a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from slm_runtime.fetch.errors import FetchError
from slm_runtime.fetch.plan import ONNX_COMPANIONS, FetchPlan, Source


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


def local_plan(local: Path, display: str, root: Path | None = None) -> FetchPlan:
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
            if p.name.startswith(local.name) or p.name in ONNX_COMPANIONS
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
