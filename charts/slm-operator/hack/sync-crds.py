#!/usr/bin/env python3
"""Copy the generated CRDs from crds/ into the chart's templates/crds/, behind `crds.install`.

    python charts/slm-operator/hack/sync-crds.py            # write templates/crds/*.yaml
    python charts/slm-operator/hack/sync-crds.py --check    # exit 1 when they drift from crds/

Helm never upgrades files in a chart's crds/ folder, so the SLMDeployment CRD ships as a template:
wrapped in `{{- if .Values.crds.install }}` and annotated `helm.sh/resource-policy: keep` (so
`helm uninstall` never deletes the CRD and, with it, every SLMDeployment). The output is byte for
byte what `python -m slm_operator.api.crd --write` writes into templates/crds/ when that folder
exists, so either way of producing it gives the same file; tests/chart/ fails when they drift.

Only PyYAML is needed (no operator import), so `make crds` can run it from any Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = CHART_DIR.parents[1]
SOURCE_DIR = REPO_ROOT / "crds"
TARGET_DIR = CHART_DIR / "templates" / "crds"

GUARD_OPEN = "{{- if .Values.crds.install }}\n"
GUARD_CLOSE = "{{- end }}\n"
KEEP_ANNOTATION = "helm.sh/resource-policy"


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def render(source_text: str) -> str:
    """The chart template for one generated CRD file."""
    documents = [doc for doc in yaml.safe_load_all(source_text) if doc]
    if len(documents) != 1:
        raise ValueError(f"expected one CRD per file, found {len(documents)} documents")
    crd: dict[str, Any] = documents[0]
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: kind={crd.get('kind')!r}")
    annotations = crd["metadata"].setdefault("annotations", {})
    annotations[KEEP_ANNOTATION] = "keep"
    body = yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)
    if "{{" in body or "}}" in body:
        raise ValueError("the CRD text contains '{{' or '}}', which Helm would parse as a template")
    return _leading_comments(source_text) + GUARD_OPEN + body + GUARD_CLOSE


def expected_outputs(source_dir: Path = SOURCE_DIR, target_dir: Path = TARGET_DIR) -> dict[Path, str]:
    sources = sorted(source_dir.glob("*.yaml"))
    if not sources:
        raise FileNotFoundError(
            f"no generated CRDs in {source_dir}: run `python -m slm_operator.api.crd --write`"
        )
    return {target_dir / src.name: render(src.read_text(encoding="utf-8")) for src in sources}


def drift(source_dir: Path = SOURCE_DIR, target_dir: Path = TARGET_DIR) -> list[str]:
    """Human-readable differences between templates/crds/ and what crds/ implies (empty = in sync)."""
    problems = []
    expected = expected_outputs(source_dir, target_dir)
    for path, text in expected.items():
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path} differs from {source_dir / path.name}")
    for path in sorted(target_dir.glob("*.yaml")):
        if path not in expected:
            problems.append(f"{path} has no source in {source_dir}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="report drift and exit 1 instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        problems = drift()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python charts/slm-operator/hack/sync-crds.py", file=sys.stderr)
        return 1 if problems else 0
    TARGET_DIR.mkdir(parents=True, exist_ok=True)
    for path, text in expected_outputs().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
