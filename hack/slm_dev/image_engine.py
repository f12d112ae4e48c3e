"""The container engine that builds the images: buildah (installed from Debian's packages when nothing
else is), podman, or a Docker engine that answers; the commands each of them takes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from slm_dev.image_inputs import ImageSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a fresh machine needs, by command: the Debian package that provides it.
HOST_PACKAGES = {"buildah": "buildah", "mmdebstrap": "mmdebstrap", "ctr": "containerd", "runc": "runc"}
EngineKind = Literal["buildah", "podman", "docker"]


class ImagesError(RuntimeError):
    """A build, export or import that cannot go on; the message says what to do."""


def log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_tool(
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
        result = run_tool(argv, capture=True, check=False)
        found = result.stdout.strip().removeprefix("sha256:")
        return found if result.returncode == 0 and found else None

    def image_size(self, name: str) -> int | None:
        if self.kind == "buildah":
            argv = ["buildah", "images", "--json", name]
            result = run_tool(argv, capture=True, check=False)
            with contextlib.suppress(ValueError, LookupError, TypeError):
                return int(json.loads(result.stdout)[0]["size"])
            return None
        result = run_tool(
            [self.kind, "image", "inspect", "--format", "{{.Size}}", name], capture=True, check=False
        )
        with contextlib.suppress(ValueError):
            return int(result.stdout.strip())
        return None

    def pull(self, name: str) -> None:
        if self.image_id(name) is None:
            run_tool([self.kind, "pull", name])

    def run_in_image(self, name: str, argv: Sequence[str]) -> str:
        """Runs a command in a throwaway container of the image; returns its stdout."""
        if self.kind != "buildah":
            command = [self.kind, "run", "--rm", "--network=host", "--entrypoint", argv[0], name, *argv[1:]]
            return run_tool(command, capture=True).stdout
        container = run_tool(
            ["buildah", "from", "--pull=false", "--quiet", name], capture=True
        ).stdout.strip()
        try:
            return run_tool(["buildah", "run", "--network=host", container, "--", *argv], capture=True).stdout
        finally:
            run_tool(["buildah", "rm", container], capture=True, check=False)

    def import_rootfs(self, rootfs: Path, name: str, labels: Mapping[str, str]) -> None:
        """An image from a root filesystem tarball (the Debian base)."""
        changes = [f"ENV PATH={DEFAULT_PATH}", "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
        changes += [f"LABEL {key}={value}" for key, value in labels.items()]
        if self.kind != "buildah":
            command = [self.kind, "import"]
            for change in changes:
                command += ["--change", change]
            run_tool([*command, str(rootfs), name], capture=True)
            return
        container = run_tool(["buildah", "from", "--quiet", "scratch"], capture=True).stdout.strip()
        try:
            run_tool(["buildah", "add", "--quiet", container, str(rootfs), "/"], capture=True)
            config = ["buildah", "config", "--env", f"PATH={DEFAULT_PATH}", "--env", "LANG=C.UTF-8"]
            config += ["--cmd", '["/bin/bash"]']
            for key, value in labels.items():
                config += ["--label", f"{key}={value}"]
            run_tool([*config, container], capture=True)
            run_tool(["buildah", "commit", "--quiet", "--rm", container, name], capture=True)
        except BaseException:
            run_tool(["buildah", "rm", container], capture=True, check=False)
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
    if shutil.which("docker") and run_tool(["docker", "info"], capture=True, check=False).returncode == 0:
        return Engine("docker")
    ensure_host_tools(["buildah", "runc"])
    return Engine("buildah")
