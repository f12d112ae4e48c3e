"""What an image is made from, and the hash of it: the Dockerfile's instructions, the build-context
files its COPY and ADD read (minus .dockerignore's), build arguments and extra inputs. An image
whose inputs hash the same is not built again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Part of every input hash: bump it when a change here changes what gets built.
RECIPE_VERSION = "1"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments): continuations joined, comment lines dropped (also inside a
    continuation, as Docker does)."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined = (pending + stripped).strip()
        pending = ""
        if joined:
            keyword, _, rest = joined.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    if pending.strip():
        keyword, _, rest = pending.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def copy_sources(dockerfile_text: str) -> list[str]:
    """The build-context paths that COPY and ADD read (not those copied from another stage)."""
    sources: list[str] = []
    for keyword, rest in dockerfile_instructions(dockerfile_text):
        if keyword not in {"COPY", "ADD"}:
            continue
        tokens = [str(token) for token in json.loads(rest)] if rest.startswith("[") else rest.split()
        flags = [token for token in tokens if token.startswith("--")]
        if any(flag.startswith("--from") for flag in flags):
            continue
        paths = [token for token in tokens if not token.startswith("--")]
        sources.extend(path for path in paths[:-1] if "://" not in path)
    return sources


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i)
            if end < 0:
                out.append(re.escape(char))
            else:
                out.append(pattern[i : end + 1].replace("\\", "\\\\"))
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


@dataclass(frozen=True)
class DockerIgnore:
    """The patterns of a .dockerignore; a pattern that matches a folder excludes what is under it,
    ``!pattern`` re-includes, the last matching pattern wins."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for line in text.splitlines():
            pattern = line.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negated = pattern.startswith("!")
            pattern = os.path.normpath(pattern.removeprefix("!").strip()).lstrip("/")
            rules.append((negated, _ignore_regex(pattern)))
        return cls(tuple(rules))

    @classmethod
    def load(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls.parse(path.read_text(encoding="utf-8")) if path.is_file() else cls()

    def ignored(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                result = not negated
        return result


def context_files(context: Path, source: str, ignore: DockerIgnore) -> list[tuple[str, Path]]:
    """(path relative to the context, path) of every file a COPY source takes, sorted."""
    source = source.strip("/") or "."
    roots = sorted(context.glob(source)) if any(char in source for char in "*?[") else [context / source]
    found: dict[str, Path] = {}
    for root in roots:
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in filenames:
                    path = Path(dirpath) / name
                    found[path.relative_to(context).as_posix()] = path
        elif root.exists() or root.is_symlink():
            found[root.relative_to(context).as_posix()] = root
    return sorted((rel, path) for rel, path in found.items() if not ignore.ignored(rel))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- an image's recipe, and its hash -------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile, context and arguments, and what else its input hash covers."""

    key: str
    name: str
    dockerfile: Path
    context: Path
    tar_name: str
    build_args: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    # Hashed besides the Dockerfile and its COPY sources: files (the wheel, Go sources) and strings
    # (the base image's id, the Go version).
    extra_files: tuple[Path, ...] = ()
    extra_inputs: tuple[str, ...] = ()


def inputs_hash(spec: ImageSpec) -> str:
    """A content hash of everything that makes the image: unchanged hash, unchanged image."""
    digest = hashlib.sha256()

    def feed(*parts: str) -> None:
        for part in parts:
            data = part.encode()
            digest.update(len(data).to_bytes(8, "big") + data)

    text = spec.dockerfile.read_text(encoding="utf-8")
    feed("recipe", RECIPE_VERSION, "name", spec.name, "dockerfile", text)
    ignore = DockerIgnore.load(spec.context)
    for source in copy_sources(text):
        files = context_files(spec.context, source, ignore)
        feed("copy", source, str(len(files)))
        for relative, path in files:
            if path.is_symlink():
                feed(relative, "symlink", os.readlink(path))
            else:
                executable = "x" if os.access(path, os.X_OK) else "-"
                feed(relative, executable, file_sha256(path))
    for key in sorted(spec.build_args):
        feed("arg", key, spec.build_args[key])
    for path in spec.extra_files:
        feed("file", path.name, file_sha256(path))
    for value in spec.extra_inputs:
        feed("input", value)
    return digest.hexdigest()
