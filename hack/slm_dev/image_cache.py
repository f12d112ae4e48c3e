"""The built images, exported as docker-archive tarballs with the hash of their inputs beside them
(``$SLM_CACHE_DIR/images``), and their import into a containerd, labelled with that hash so that an
unchanged image is not imported twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_dev.image_engine import ImagesError, log, run_tool

# containerd label holding the input hash of an imported image.
INPUTS_LABEL = "dev.slm.inputs"


def cache_dir() -> Path:
    """Where the tarballs live: ``$SLM_CACHE_DIR/images``, default ``~/.cache/slm-operator/images``."""
    root = os.environ.get("SLM_CACHE_DIR") or str(Path.home() / ".cache" / "slm-operator")
    return Path(root) / "images"


@dataclass(frozen=True)
class CachedImage:
    """An exported image: the tarball and, beside it (same name, .json), what it was built from."""

    key: str
    name: str
    tar: Path
    inputs: str
    image_id: str
    size: int
    tar_bytes: int
    built_at: str
    engine: str
    base: str

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tar"] = str(self.tar)
        return data

    @classmethod
    def read(cls, tar: Path) -> CachedImage | None:
        meta = tar.with_suffix(".json")
        if not meta.is_file() or not tar.is_file():
            return None
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            data["tar"] = Path(data["tar"])
            cached = cls(**data)
        except (ValueError, TypeError, KeyError):
            return None
        return cached if cached.tar_bytes == tar.stat().st_size else None


def cached_images(directory: Path | None = None) -> list[CachedImage]:
    """The exported images in the cache, in build order (runtime, operator, pause)."""
    directory = directory or cache_dir()
    found = []
    for tar_name in ("runtime-cpu.tar", "operator.tar", "pause.tar"):
        cached = CachedImage.read(directory / tar_name)
        if cached is not None:
            found.append(cached)
    return found


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ctr_images(ctr: Sequence[str]) -> dict[str, str]:
    """Image name -> our input-hash label ("" when unlabelled) in a containerd namespace."""
    result = run_tool([*ctr, "images", "ls"], capture=True)
    found: dict[str, str] = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        if not fields:
            continue
        labels = dict(item.partition("=")[::2] for item in fields[-1].split(",") if "=" in item)
        found[fields[0]] = labels.get(INPUTS_LABEL, "")
    return found


def load_images(address: str, namespace: str = "k8s.io") -> list[str]:
    """Imports the cached images into the containerd at ``address`` (its socket); returns the names
    now there. An image already imported with the same inputs is not imported again."""
    ctr = ["ctr", "--address", address, "-n", namespace]
    images = cached_images()
    if not images:
        log(f"no images in {cache_dir()}: run `make images`")
        return []
    present = _ctr_images(ctr)
    loaded: list[str] = []
    for cached in images:
        if present.get(cached.name) == cached.inputs:
            loaded.append(cached.name)
            continue
        started = time.monotonic()
        run_tool([*ctr, "images", "import", str(cached.tar)], capture=True)
        run_tool([*ctr, "images", "label", cached.name, f"{INPUTS_LABEL}={cached.inputs}"], capture=True)
        log(f"imported {cached.name} in {time.monotonic() - started:.1f}s")
        loaded.append(cached.name)
    missing = set(loaded) - set(_ctr_images(ctr))
    if missing:
        raise ImagesError(f"not in containerd after the import: {', '.join(sorted(missing))}")
    return loaded
