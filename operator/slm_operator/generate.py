"""Write every generated file of the repository from its single source, or check that none is stale.

    python -m slm_operator.generate                      # write them
    python -m slm_operator.generate --check              # write nothing; exit 1 listing each stale file
    python -m slm_operator.generate --with-helm [--check]  # deploy/install.yaml too (runs helm)

The files, each from its source:

- crds/slm.dev_slmdeployments.yaml and the chart's templates/crds/ copy: the API models (api/);
- docs/api-reference.md: the same CRD;
- docs/runtime-settings.md: the runtime's settings classes, rendered by hack/slm_dev/runtime_settings_doc.py
  in its own process, because the operator package never imports the runtime (import contract);
- charts/slm-operator/values.schema.json: values.schema.base.yaml plus the settings model's schema;
- charts/slm-operator/values.yaml, the marked block only: the built-in tiers (data/default_tiers.yaml);
- deploy/install.yaml, with --with-helm: `helm template` of the chart (deploy/render.sh), last,
  since it renders the files above. Helm is a binary this package does not ship, so it is opt-in;
  `make generate` and `make verify-generated` pass the flag.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slm_operator.api.crd import (
    CHART_CRD_DIR,
    CRD_FILE_NAME,
    CRD_PATH,
    build_crd,
    render_chart_crd_yaml,
    render_crd_yaml,
)
from slm_operator.api.reference import api_reference
from slm_operator.chart_values import render_values_schema, with_default_tiers_block

CHART_DIR = Path("charts") / "slm-operator"
VALUES_SCHEMA_BASE = CHART_DIR / "values.schema.base.yaml"
RUNTIME_SETTINGS_RENDERER = Path("hack") / "slm_dev" / "runtime_settings_doc.py"
INSTALL_RENDERER = Path("deploy") / "render.sh"
DIFF_HEAD_LINES = 40


class GenerationError(Exception):
    """A source could not be rendered (bad input, or a tool that failed)."""


@dataclass(frozen=True)
class GeneratedFile:
    path: Path  # relative to the repository root
    render: Callable[[Path], str]  # the content it must have, given the repository root


@dataclass(frozen=True)
class Drift:
    path: Path
    detail: str  # a unified diff head, or why the file was not compared


def generated_files(with_helm: bool = False) -> list[GeneratedFile]:
    """Every generated file, in the order they must be written (install.yaml renders the chart)."""
    files = [
        GeneratedFile(CRD_PATH, lambda root: render_crd_yaml()),
        GeneratedFile(CHART_CRD_DIR / CRD_FILE_NAME, lambda root: render_chart_crd_yaml()),
        GeneratedFile(Path("docs") / "api-reference.md", lambda root: api_reference(build_crd())),
        GeneratedFile(Path("docs") / "runtime-settings.md", _runtime_settings_page),
        GeneratedFile(
            CHART_DIR / "values.schema.json",
            lambda root: render_values_schema(_read(root, VALUES_SCHEMA_BASE)),
        ),
        GeneratedFile(
            CHART_DIR / "values.yaml",
            lambda root: with_default_tiers_block(_read(root, CHART_DIR / "values.yaml")),
        ),
    ]
    if with_helm:
        files.append(GeneratedFile(Path("deploy") / "install.yaml", _install_manifest))
    return files


def stale_files(root: Path, with_helm: bool = False) -> list[Drift]:
    """The generated files that differ from what their sources give now; writes nothing."""
    drifts: list[Drift] = []
    for generated in generated_files(with_helm):
        if generated.render is _install_manifest and any(_in_chart(d.path) for d in drifts):
            # helm renders the chart as it is on disk, which is stale itself.
            drifts.append(Drift(generated.path, "not compared: the chart is stale (see above)"))
            continue
        current = root / generated.path
        wanted = generated.render(root)
        text = current.read_text(encoding="utf-8") if current.is_file() else None
        if text != wanted:
            drifts.append(Drift(generated.path, _diff_head(generated.path, text, wanted)))
    return drifts


def write_files(root: Path, with_helm: bool = False) -> list[Path]:
    """Write every generated file whose content changed; returns those paths."""
    written: list[Path] = []
    for generated in generated_files(with_helm):
        target = root / generated.path
        wanted = generated.render(root)
        if target.is_file() and target.read_text(encoding="utf-8") == wanted:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(wanted, encoding="utf-8")
        written.append(generated.path)
    return written


def _read(root: Path, path: Path) -> str:
    try:
        return (root / path).read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise GenerationError(f"{path} is missing: it is a source of the generated files") from error


def _in_chart(path: Path) -> bool:
    return path.is_relative_to(CHART_DIR)


def _run(command: list[str], root: Path, what: str) -> str:
    try:
        result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    except OSError as error:
        raise GenerationError(f"{what}: cannot run {command[0]}: {error}") from error
    if result.returncode != 0:
        raise GenerationError(f"{what}: `{' '.join(command)}` failed:\n{result.stderr.strip()[-2000:]}")
    return result.stdout


def _runtime_settings_page(root: Path) -> str:
    # -P: the script's folder (a package of dev tools) is not put first on sys.path.
    command = [sys.executable, "-P", str(root / RUNTIME_SETTINGS_RENDERER)]
    return _run(command, root, "docs/runtime-settings.md")


def _install_manifest(root: Path) -> str:
    # deploy/render.sh finds helm itself ($HELM, the project's cached binaries, then PATH).
    return _run(["bash", str(root / INSTALL_RENDERER), "-"], root, "deploy/install.yaml")


def _diff_head(path: Path, current: str | None, wanted: str) -> str:
    if current is None:
        return "missing"
    diff = list(
        difflib.unified_diff(
            current.splitlines(),
            wanted.splitlines(),
            fromfile=f"{path} (committed)",
            tofile=f"{path} (generated)",
            lineterm="",
            n=1,
        )
    )
    more = len(diff) - DIFF_HEAD_LINES
    return "\n".join(diff[:DIFF_HEAD_LINES] + ([f"... {more} more diff lines"] if more > 0 else []))


def repo_root() -> Path:
    """The checkout this module runs from: the generated files live in the repository, not the package."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / CHART_DIR).is_dir():
        raise GenerationError(
            f"{root} is not a slm-operator checkout: run from an editable install or pass --root"
        )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slm_operator.generate",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    parser.add_argument(
        "--with-helm", action="store_true", help="also deploy/install.yaml (needs helm: see deploy/render.sh)"
    )
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        root = args.root or repo_root()
        if args.check:
            drifts = stale_files(root, args.with_helm)
            for drift in drifts:
                print(f"stale: {drift.path}\n{drift.detail}\n", file=sys.stderr)
            if drifts:
                print(f"{len(drifts)} generated file(s) out of date: run `make generate`", file=sys.stderr)
                return 1
            return 0
        for path in write_files(root, args.with_helm):
            print(f"wrote {path}", file=sys.stderr)
    except (GenerationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
