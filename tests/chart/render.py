"""Render the Helm chart with the real helm binary and parse what comes out."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slm-operator"
RELEASE = "slm"
NAMESPACE = "slm-system"

Manifest = dict[str, Any]


@functools.cache
def helm_binary() -> str:
    """helm from the project's cached control-plane binaries (built once, then instant)."""
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-k8s-bins.sh")],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"hack/build-k8s-bins.sh failed ({result.returncode}): {result.stderr[-2000:]}")
    helm = Path(lines[-1]) / "helm"
    if not helm.is_file():
        raise RuntimeError(f"no helm in {helm.parent}")
    return str(helm)


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
        )
        return found[0]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False, cwd=ROOT)


def template_text(*sets: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`helm template` with `--set` pairs; the result carries stdout, stderr and the exit code."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra]
    for item in sets:
        args += ["--set", item]
    return helm(*args)


@functools.cache
def render(*sets: str, include_crds: bool = False) -> Rendered:
    """Render (cached per value set) and parse every document."""
    result = template_text(*sets, extra=("--include-crds",) if include_crds else ())
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(sets)} failed:\n{result.stderr}")
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendered(manifests=docs)
