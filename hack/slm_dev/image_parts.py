"""What the image builds start from or mount, made on this host: the Debian base image
(mmdebstrap, no registry needed), the llama-cpp-python wheel (hack/build-llama-wheel.sh, the image's
flags) and the sandbox image's static binary (hack/pause, Go).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from slm_dev.image_cache import cache_dir
from slm_dev.image_engine import Engine, ImagesError, ensure_host_tools, log, run_tool
from slm_dev.image_inputs import file_sha256
from slm_dev.paths import HACK_DIR

PAUSE_DIR = HACK_DIR / "pause"
WHEEL_SCRIPT = HACK_DIR / "build-llama-wheel.sh"
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
        run_tool([*command, DEBIAN_SUITE, str(rootfs), *DEBIAN_SOURCES])
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
