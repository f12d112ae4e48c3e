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

``slm_dev.image_cache.load_images(address)`` imports the cached tarballs into a containerd (``ctr
images import``) and labels them with their input hash, so a later call skips the ones already there.

    python -m slm_dev.images build [--only runtime|operator|pause] [--base debian|IMAGE]
                                   [--engine auto|buildah|podman|docker] [--force]
    python -m slm_dev.images load --address /path/containerd.sock [--namespace k8s.io]
    python -m slm_dev.images list

Needs only the standard library and PyYAML (to read the chart's image names). Beside it:
``image_inputs`` (what an image is made from, hashed), ``image_parts`` (the Debian base, the host's
wheel, the pause binary), ``image_engine`` (buildah, podman, docker) and ``image_cache`` (the
exported tarballs, and their import into containerd).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from slm_dev.image_cache import CachedImage, cache_dir, cache_lock, cached_images, load_images
from slm_dev.image_engine import Engine, ImagesError, detect_engine, log, run_tool
from slm_dev.image_inputs import ImageSpec, Mount, inputs_hash
from slm_dev.image_parts import (
    DEBIAN_BASE_IMAGE,
    PAUSE_DIR,
    PAUSE_IMAGE,
    Wheels,
    compile_pause,
    ensure_debian_base,
    go_version,
    host_wheels,
)
from slm_dev.paths import REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "slm-operator"
RUNTIME_DOCKERFILE = REPO_ROOT / "runtime-image" / "Dockerfile"
OPERATOR_DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Build mounts go under /dev: it is a fresh tmpfs in every RUN, so the mount points leave no empty
# folders or files behind in the image's layers.
BUILD_MOUNT_DIR = "/dev/slm-build"

KINDS = ("runtime", "operator", "pause")


# --- names from the chart, what gets built ----------------------------------------------------


def chart_image_names(chart_dir: Path = CHART_DIR) -> dict[str, str]:
    """The names the chart uses by default: {"runtime": settings.images.cpu, "operator": repo:tag}."""
    values = yaml.safe_load((chart_dir / "values.yaml").read_text(encoding="utf-8"))
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8"))
    image = values["image"]
    tag = str(image.get("tag") or chart["appVersion"])
    return {"runtime": str(values["settings"]["images"]["cpu"]), "operator": f"{image['repository']}:{tag}"}


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
        run_tool(command)
    built = time.monotonic()
    _smoke_test(engine, spec, wheels)
    image_id = engine.image_id(spec.name) or ""
    tar = cache_dir() / spec.tar_name
    partial = tar.with_name(tar.name + ".partial")
    partial.unlink(missing_ok=True)
    run_tool(engine.export_command(spec.name, partial), capture=True)
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
    with cache_lock():
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


# --- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slm_dev.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
