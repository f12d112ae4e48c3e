#!/usr/bin/env python3
"""The project's container images, built without Docker or a registry, for the local real node.

``build`` makes, with buildah (podman, or a running Docker engine, where buildah is missing):

* the runtime image, CPU variant (``runtime-image/Dockerfile``), named as the chart's
  ``settings.images.cpu``;
* the operator image (``operator/Dockerfile``), named ``image.repository:appVersion`` from the chart;
* the sandbox (pause) image ``PAUSE_IMAGE``: hack/pause/main.go, a static Go program, ``FROM scratch``.

The base is made from Debian's packages by mmdebstrap (``DEBIAN_BASE_IMAGE``), so no registry is
needed; ``--base IMAGE`` uses another one (e.g. the Dockerfiles' default ``python:3.11-slim-bookworm``).
The llama-cpp-python wheel that hack/build-llama-wheel.sh compiled on the host (the image's flags,
``-DGGML_NATIVE=off``) is mounted into the runtime build, so llama.cpp is not compiled twice. Builds
use the engine's layer cache. Each image is exported as a docker-archive tarball into
``$SLM_CACHE_DIR/images`` (default ``~/.cache/slm-operator/images``) beside a JSON file holding the
hash of its inputs (Dockerfile, the files it copies, build arguments, the wheel, the base image's
id): an image whose inputs did not change is neither rebuilt nor exported again.

``load_images(address)`` imports the cached tarballs into a containerd (``ctr images import``) and
labels them with their input hash, so a later call skips the ones already there.

    python hack/images.py build [--only runtime|operator|pause] [--base debian|IMAGE]
                                [--engine auto|buildah|podman|docker] [--force]
    python hack/images.py load --address /path/containerd.sock [--namespace k8s.io]
    python hack/images.py list

Needs only the standard library and PyYAML (to read the chart's image names).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_ROOT / "charts" / "slm-operator"
RUNTIME_DOCKERFILE = REPO_ROOT / "runtime-image" / "Dockerfile"
OPERATOR_DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
PAUSE_DIR = REPO_ROOT / "hack" / "pause"
WHEEL_SCRIPT = REPO_ROOT / "hack" / "build-llama-wheel.sh"

# The sandbox image that the local real node's containerd names in `sandbox_image`.
PAUSE_IMAGE = "localhost/slm-local/pause:1"
# The base made from Debian's packages when no registry is reachable.
DEBIAN_BASE_IMAGE = "localhost/slm-base:bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_GLIBC = (2, 36)  # bookworm's; a wheel built against a newer glibc would not load in the image
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Left out of the base (and of everything apt installs on it later); the copyright files stay.
DEBIAN_PATH_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a fresh machine needs, by command: the Debian package that provides it.
HOST_PACKAGES = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "ctr": "containerd", "runc": "runc"}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Build mounts go under /dev: it is a fresh tmpfs in every RUN, so the mount points leave no empty
# folders or files behind in the image's layers.
BUILD_MOUNT_DIR = "/dev/slm-build"
# containerd label holding the input hash of an imported image.
INPUTS_LABEL = "dev.slm.inputs"
# Part of every input hash: bump it when a change here changes what gets built.
RECIPE_VERSION = "1"

KINDS = ("runtime", "operator", "pause")
EngineKind = Literal["buildah", "podman", "docker"]


class ImagesError(RuntimeError):
    """A build, export or import that cannot go on; the message says what to do."""


def log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where the tarballs live: ``$SLM_CACHE_DIR/images``, default ``~/.cache/slm-operator/images``."""
    root = os.environ.get("SLM_CACHE_DIR") or str(Path.home() / ".cache" / "slm-operator")
    return Path(root) / "images"


def _run(
    argv: Sequence[str], *, capture: bool = False, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Runs a command; with capture its stdout comes back, otherwise it goes to our stderr."""
    result = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        detail = f": {result.stderr.strip()[-2000:]}" if capture and result.stderr else ""
        raise ImagesError(f"`{' '.join(argv)}` failed with exit status {result.returncode}{detail}")
    return result


# --- names from the chart ------------------------------------------------------------------------


def chart_image_names(chart_dir: Path = CHART_DIR) -> dict[str, str]:
    """The names the chart uses by default: {"runtime": settings.images.cpu, "operator": repo:tag}."""
    values = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8"))
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    image = values["image"]
    tag = str(image.get("tag") or chart["appVersion"])
    return {"runtime": str(values["settings"]["images"]["cpu"]), "operator": f"{image['repository']}:{tag}"}


# --- Dockerfile inputs ---------------------------------------------------------------------------


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


# --- what gets built -----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Wheels:
    """The host's llama-cpp-python wheel folder, as the runtime build gets it."""

    folder: Path
    files: tuple[Path, ...]

    @property
    def digest(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(f"{path.name} {file_sha256(path)}\n".encode())
        return digest.hexdigest()


def runtime_spec(
    name: str, base: str, base_id: str, wheels: Wheels | None, ca_bundle: Path | None
) -> ImageSpec:
    args = {"ACCELERATOR": "cpu", "BUILD_BASE": base, "RUNTIME_BASE": base}
    mounts: list[Mount] = []
    files: tuple[Path, ...] = ()
    if ca_bundle is not None:
        mounts.append(Mount(ca_bundle, f"{BUILD_MOUNT_DIR}/ca.crt"))
        args["PIP_CERT"] = f"{BUILD_MOUNT_DIR}/ca.crt"
    if wheels is not None:
        # The wheel's digest is in the mount path so that the engine's layer cache (which does not
        # look into mounts) installs a changed wheel again.
        target = f"{BUILD_MOUNT_DIR}/wheels-{wheels.digest[:12]}"
        mounts.append(Mount(wheels.folder, target))
        args["PIP_FIND_LINKS"] = target
        files = wheels.files
    return ImageSpec(
        key="runtime",
        name=name,
        dockerfile=RUNTIME_DOCKERFILE,
        context=REPO_ROOT,
        tar_name="runtime-cpu.tar",
        build_args=args,
        mounts=tuple(mounts),
        extra_files=files,
        extra_inputs=(f"base={base_id}",),
    )


def operator_spec(name: str, base: str, base_id: str, ca_bundle: Path | None) -> ImageSpec:
    args = {"PYTHON_IMAGE": base}
    mounts: tuple[Mount, ...] = ()
    if ca_bundle is not None:
        mounts = (Mount(ca_bundle, f"{BUILD_MOUNT_DIR}/ca.crt"),)
        args["PIP_CERT"] = f"{BUILD_MOUNT_DIR}/ca.crt"
    return ImageSpec(
        key="operator",
        name=name,
        dockerfile=OPERATOR_DOCKERFILE,
        context=REPO_ROOT,
        tar_name="operator.tar",
        build_args=args,
        mounts=mounts,
        extra_inputs=(f"base={base_id}",),
    )


def pause_spec(go_version: str) -> ImageSpec:
    # The context is a temporary folder holding the compiled binary; the hash covers its sources.
    return ImageSpec(
        key="pause",
        name=PAUSE_IMAGE,
        dockerfile=PAUSE_DIR / "Dockerfile",
        context=PAUSE_DIR,
        tar_name="pause.tar",
        extra_files=(PAUSE_DIR / "main.go", PAUSE_DIR / "go.mod"),
        extra_inputs=(go_version,),
    )


# --- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    kind: EngineKind

    @property
    def mounts_supported(self) -> bool:
        """Whether a build can bind-mount host folders (Docker's builder cannot)."""
        return self.kind != "docker"

    def build_command(self, spec: ImageSpec) -> list[str]:
        if self.kind == "buildah":
            # --pull=false: a present base is used as is (the Debian one exists only here).
            command = ["buildah", "bud", "--layers", "--isolation", "oci", "--pull=false"]
        elif self.kind == "podman":
            command = ["podman", "build", "--layers", "--pull=missing"]
        else:
            command = ["docker", "build"]
        # Host networking: no bridge or NAT of the engine's own, the host's proxy and DNS as they are.
        command += ["--network=host", "-f", str(spec.dockerfile), "-t", spec.name]
        for key in sorted(spec.build_args):
            command += ["--build-arg", f"{key}={spec.build_args[key]}"]
        if self.mounts_supported:
            for mount in spec.mounts:
                command += ["-v", f"{mount.source}:{mount.target}:ro"]
        command.append(str(spec.context))
        return command

    def export_command(self, name: str, tar: Path) -> list[str]:
        if self.kind == "buildah":
            return ["buildah", "push", "--quiet", name, f"docker-archive:{tar}:{name}"]
        if self.kind == "podman":
            return ["podman", "save", "--quiet", "--format", "docker-archive", "-o", str(tar), name]
        return ["docker", "save", "-o", str(tar), name]

    def image_id(self, name: str) -> str | None:
        if self.kind == "buildah":
            argv = ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", name]
        else:
            argv = [self.kind, "image", "inspect", "--format", "{{.Id}}", name]
        result = _run(argv, capture=True, check=False)
        found = result.stdout.strip().removeprefix("sha256:")
        return found if result.returncode == 0 and found else None

    def image_size(self, name: str) -> int | None:
        if self.kind == "buildah":
            argv = ["buildah", "images", "--json", name]
            result = _run(argv, capture=True, check=False)
            with contextlib.suppress(ValueError, LookupError, TypeError):
                return int(json.loads(result.stdout)[0]["size"])
            return None
        result = _run(
            [self.kind, "image", "inspect", "--format", "{{.Size}}", name], capture=True, check=False
        )
        with contextlib.suppress(ValueError):
            return int(result.stdout.strip())
        return None

    def pull(self, name: str) -> None:
        if self.image_id(name) is None:
            _run([self.kind, "pull", name])

    def run_in_image(self, name: str, argv: Sequence[str]) -> str:
        """Runs a command in a throwaway container of the image; returns its stdout."""
        if self.kind != "buildah":
            command = [self.kind, "run", "--rm", "--network=host", "--entrypoint", argv[0], name, *argv[1:]]
            return _run(command, capture=True).stdout
        container = _run(["buildah", "from", "--pull=false", "--quiet", name], capture=True).stdout.strip()
        try:
            return _run(["buildah", "run", "--network=host", container, "--", *argv], capture=True).stdout
        finally:
            _run(["buildah", "rm", container], capture=True, check=False)

    def import_rootfs(self, rootfs: Path, name: str, labels: Mapping[str, str]) -> None:
        """An image from a root filesystem tarball (the Debian base)."""
        changes = [f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
        changes += [f"LABEL {key}={value}" for key, value in labels.items()]
        if self.kind != "buildah":
            command = [self.kind, "import"]
            for change in changes:
                command += ["--change", change]
            _run([*command, str(rootfs), name], capture=True)
            return
        container = _run(["buildah", "from", "--quiet", "scratch"], capture=True).stdout.strip()
        try:
            _run(["buildah", "add", "--quiet", container, str(rootfs), "/"], capture=True)
            config = ["buildah", "config", "--env", f"PATH={DEFAULT_PATH}", "--env", "LANG=C.UTF-8"]
            config += ["--cmd", '["/bin/bash"]']
            for key, value in labels.items():
                config += ["--label", f"{key}={value}"]
            _run([*config, container], capture=True)
            _run(["buildah", "commit", "--quiet", "--rm", container, name], capture=True)
        except BaseException:
            _run(["buildah", "rm", container], capture=True, check=False)
            raise


def ensure_host_tools(commands: Iterable[str]) -> None:
    """Installs the Debian packages behind missing commands (root, apt); fails naming them otherwise."""
    missing = sorted({command for command in commands if shutil.which(command) is None})
    if not missing:
        return
    packages = sorted({HOST_PACKAGES[command] for command in missing})
    hint = f"apt-get install -y --no-install-recommends {' '.join(packages)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImagesError(
            f"missing {', '.join(missing)}: install the Debian packages {', '.join(packages)} ({hint})"
        )
    log(f"installing {', '.join(packages)} from Debian's packages (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, stdout=sys.stderr, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, stdout=sys.stderr, check=False)
        if subprocess.run(install, env=env, stdout=sys.stderr, check=False).returncode != 0:
            raise ImagesError(f"could not install the Debian packages {', '.join(packages)} ({hint})")
    still = [command for command in missing if shutil.which(command) is None]
    if still:
        raise ImagesError(f"{', '.join(still)} still missing after installing {', '.join(packages)}")


def detect_engine(kind: str = "auto") -> Engine:
    """buildah where it is (installed from Debian's packages when nothing else is), else podman,
    else a Docker engine that answers."""
    chosen: dict[str, EngineKind] = {"buildah": "buildah", "podman": "podman", "docker": "docker"}
    if kind in chosen:
        if kind == "buildah":
            ensure_host_tools(["buildah", "runc"])
        elif shutil.which(kind) is None:
            raise ImagesError(f"{kind} is not installed")
        return Engine(chosen[kind])
    if kind != "auto":
        raise ImagesError(f"unknown engine {kind!r} (auto | buildah | podman | docker)")
    if shutil.which("buildah"):
        ensure_host_tools(["buildah", "runc"])
        return Engine("buildah")
    if shutil.which("podman"):
        return Engine("podman")
    if shutil.which("docker") and _run(["docker", "info"], capture=True, check=False).returncode == 0:
        return Engine("docker")
    ensure_host_tools(["buildah", "runc"])
    return Engine("buildah")


# --- base, wheel, pause binary -------------------------------------------------------------------


def ensure_debian_base(engine: Engine, *, force: bool = False) -> str:
    """Builds DEBIAN_BASE_IMAGE from Debian's packages (mmdebstrap) unless it exists; its id."""
    found = engine.image_id(DEBIAN_BASE_IMAGE)
    if found and not force:
        return found
    ensure_host_tools(["mmdebstrap"])
    log(f"building the base {DEBIAN_BASE_IMAGE} from Debian's packages (mmdebstrap, about 2 minutes)")
    started = time.monotonic()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slm-base-", dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}"]
        command += [f"--dpkgopt={option}" for option in DEBIAN_PATH_EXCLUDES]
        _run([*command, DEBIAN_SUITE, str(rootfs), *DEBIAN_SOURCES])
        labels = {
            "org.opencontainers.image.title": "slm-base",
            "org.opencontainers.image.description": f"Debian {DEBIAN_SUITE} minbase with {', '.join(DEBIAN_PACKAGES)}",
        }
        engine.import_rootfs(rootfs, DEBIAN_BASE_IMAGE, labels)
    found = engine.image_id(DEBIAN_BASE_IMAGE)
    if not found:
        raise ImagesError(f"{DEBIAN_BASE_IMAGE} is missing after building it")
    log(f"base {DEBIAN_BASE_IMAGE} ready in {time.monotonic() - started:.0f}s")
    return found


def _glibc_version() -> tuple[int, ...] | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        name, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").split()
        if name == "glibc":
            return tuple(int(part) for part in version.split("."))
    return None


def host_wheels() -> tuple[Wheels | None, str]:
    """The folder of the llama-cpp-python wheel built on the host (built now if missing, about 10
    minutes), or None and why the image compiles llama.cpp itself."""
    glibc = _glibc_version()
    if glibc is None or glibc > DEBIAN_GLIBC:
        return None, f"the host's glibc {glibc} is not bookworm's {DEBIAN_GLIBC}"
    if sys.version_info[:2] == (3, 11):
        python = sys.executable
    else:
        python = shutil.which("python3.11") or ""
        if not python:
            return None, "no Python 3.11 here to build the wheel with"
    result = subprocess.run(
        ["bash", str(WHEEL_SCRIPT)],
        env={**os.environ, "PYTHON": python},
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise ImagesError(f"{WHEEL_SCRIPT.name} failed (exit status {result.returncode})")
    folder = Path(result.stdout.strip().splitlines()[-1])
    files = tuple(sorted(folder.glob("llama_cpp_python-*.whl")))
    if not files:
        raise ImagesError(f"no llama-cpp-python wheel in {folder}")
    return Wheels(folder, files), ""


def go_tool() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else "")
    if not found:
        raise ImagesError("Go is needed to build the pause image (the toolchain hack/build-k8s-bins.sh uses)")
    return found


def go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOOS": "linux", "GOFLAGS": "-trimpath"}


def go_version() -> str:
    result = subprocess.run([go_tool(), "version"], env=go_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImagesError(f"`go version` failed: {result.stderr.strip()}")
    return result.stdout.strip()


def compile_pause(out_dir: Path) -> Path:
    binary = out_dir / "pause"
    command = [go_tool(), "build", "-ldflags=-s -w", "-o", str(binary), "."]
    result = subprocess.run(command, cwd=PAUSE_DIR, env=go_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImagesError(f"compiling hack/pause failed: {result.stderr.strip()}")
    return binary


# --- cache ---------------------------------------------------------------------------------------


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
def _cache_lock() -> Iterator[None]:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- build ---------------------------------------------------------------------------------------


def _smoke_test(engine: Engine, spec: ImageSpec, wheels: Wheels | None) -> None:
    """Imports what the image is for, in the image; for the runtime, also proves that its llama.cpp
    library is the one from the host's wheel (nothing was compiled in the build)."""
    if spec.key == "pause":
        engine.run_in_image(spec.name, ["/pause", "--version"])
        return
    if spec.key == "operator":
        engine.run_in_image(spec.name, ["python", "-c", "import kopf, slm_operator.handlers"])
        return
    code = (
        "import hashlib, pathlib, llama_cpp, slm_runtime; "
        "lib = pathlib.Path(llama_cpp.__file__).parent / 'lib' / 'libllama.so'; "
        "print(llama_cpp.__version__, hashlib.sha256(lib.read_bytes()).hexdigest())"
    )
    output = engine.run_in_image(spec.name, ["python", "-c", code]).split()
    if wheels is None:
        log(f"{spec.name}: llama-cpp-python {output[0]} (compiled in the build)")
        return
    with zipfile.ZipFile(wheels.files[0]) as wheel:
        expected = hashlib.sha256(wheel.read("llama_cpp/lib/libllama.so")).hexdigest()
    if output[-1] != expected:
        raise ImagesError(f"{spec.name}: libllama.so is not the one from {wheels.files[0].name}")
    log(f"{spec.name}: llama-cpp-python {output[0]} from the host's wheel {wheels.files[0].name}")


def _build_one(engine: Engine, spec: ImageSpec, inputs: str, base: str, wheels: Wheels | None) -> CachedImage:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slm-image-") as tmp:
        if spec.key == "pause":
            compile_pause(Path(tmp))
            spec = dataclasses.replace(spec, context=Path(tmp))
        command = engine.build_command(spec)
        log(f"building {spec.name}: {' '.join(command)}")
        _run(command)
    built = time.monotonic()
    _smoke_test(engine, spec, wheels)
    image_id = engine.image_id(spec.name) or ""
    tar = cache_dir() / spec.tar_name
    partial = tar.with_name(tar.name + ".partial")
    partial.unlink(missing_ok=True)
    _run(engine.export_command(spec.name, partial), capture=True)
    partial.replace(tar)
    cached = CachedImage(
        key=spec.key,
        name=spec.name,
        tar=tar,
        inputs=inputs,
        image_id=image_id,
        size=engine.image_size(spec.name) or 0,
        tar_bytes=tar.stat().st_size,
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        engine=engine.kind,
        base=base if spec.key != "pause" else "scratch",
    )
    tar.with_suffix(".json").write_text(json.dumps(cached.to_json(), indent=2) + "\n", encoding="utf-8")
    log(
        f"{spec.name}: built in {built - started:.0f}s, exported in {time.monotonic() - built:.0f}s "
        f"({cached.tar_bytes / 1e6:.0f} MB): {tar}"
    )
    return cached


def build_images(
    only: Sequence[str] | None = None, *, base: str = "debian", engine_kind: str = "auto", force: bool = False
) -> list[CachedImage]:
    """Builds (when their inputs changed) and exports the images; returns them as cached."""
    keys = [key for key in KINDS if not only or key in only]
    engine = detect_engine(engine_kind)
    results: list[CachedImage] = []
    with _cache_lock():
        names = chart_image_names()
        base_ref, base_id = "", ""
        if "runtime" in keys or "operator" in keys:
            if base == "debian":
                base_ref, base_id = DEBIAN_BASE_IMAGE, ensure_debian_base(engine)
            else:
                engine.pull(base)
                base_ref, base_id = base, engine.image_id(base) or base
        ca_bundle = _ca_bundle() if engine.mounts_supported else None
        wheels: Wheels | None = None
        specs: list[ImageSpec] = []
        for key in keys:
            if key == "runtime":
                if engine.mounts_supported:
                    wheels, why = host_wheels()
                    if wheels is None:
                        log(f"llama.cpp compiles in the runtime build: {why}")
                else:
                    log(
                        f"llama.cpp compiles in the runtime build: {engine.kind} cannot mount the host's wheel"
                    )
                specs.append(runtime_spec(names["runtime"], base_ref, base_id, wheels, ca_bundle))
            elif key == "operator":
                specs.append(operator_spec(names["operator"], base_ref, base_id, ca_bundle))
            else:
                specs.append(pause_spec(go_version()))
        for spec in specs:
            inputs = inputs_hash(spec)
            cached = CachedImage.read(cache_dir() / spec.tar_name)
            if not force and cached is not None and cached.inputs == inputs and cached.name == spec.name:
                log(f"{spec.name}: up to date ({cached.tar})")
                results.append(cached)
                continue
            results.append(
                _build_one(engine, spec, inputs, base_ref, wheels if spec.key == "runtime" else None)
            )
    return results


def _ca_bundle() -> Path | None:
    """The CA bundle pip uses here (a TLS-intercepting proxy's CA included), for pip in the builds."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), str(HOST_CA_BUNDLE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


# --- load into containerd ------------------------------------------------------------------------


def _ctr_images(ctr: Sequence[str]) -> dict[str, str]:
    """Image name -> our input-hash label ("" when unlabelled) in a containerd namespace."""
    result = _run([*ctr, "images", "ls"], capture=True)
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
        _run([*ctr, "images", "import", str(cached.tar)], capture=True)
        _run([*ctr, "images", "label", cached.name, f"{INPUTS_LABEL}={cached.inputs}"], capture=True)
        log(f"imported {cached.name} in {time.monotonic() - started:.1f}s")
        loaded.append(cached.name)
    missing = set(loaded) - set(_ctr_images(ctr))
    if missing:
        raise ImagesError(f"not in containerd after the import: {', '.join(sorted(missing))}")
    return loaded


# --- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build and export the images whose inputs changed")
    build.add_argument("--only", action="append", choices=KINDS, help="this image only (repeatable)")
    build.add_argument(
        "--base",
        default=os.environ.get("SLM_IMAGE_BASE", "debian"),
        help="base image: 'debian' (made from Debian's packages, no registry) or an image reference",
    )
    build.add_argument("--engine", default=os.environ.get("SLM_IMAGE_ENGINE", "auto"))
    build.add_argument("--force", action="store_true", help="rebuild and export even when up to date")
    load = commands.add_parser("load", help="import the cached images into a containerd")
    load.add_argument("--address", required=True, help="containerd's socket")
    load.add_argument("--namespace", default="k8s.io")
    commands.add_parser("list", help="show the cached images")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            started = time.monotonic()
            built = build_images(args.only, base=args.base, engine_kind=args.engine, force=args.force)
            for cached in built:
                print(f"{cached.name}\t{cached.tar}")
            log(f"done in {time.monotonic() - started:.0f}s")
        elif args.command == "load":
            for name in load_images(args.address, args.namespace):
                print(name)
        else:
            for cached in cached_images():
                print(f"{cached.name}\t{cached.size / 1e6:.0f} MB\t{cached.built_at}\t{cached.tar}")
    except ImagesError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
