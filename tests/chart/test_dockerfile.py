"""operator/Dockerfile, read as text (no container engine here): multi-stage, slim Python 3.11,
the operator extra only, non-root, and the entry point the chart's command relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "operator" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def args_defaults() -> dict[str, str]:
    defaults = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name] = value
    return defaults


def final_stage() -> list[tuple[str, str]]:
    items = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(items) if keyword == "FROM")
    return items[last_from:]


def test_multi_stage_on_python_311_slim() -> None:
    defaults = args_defaults()
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    for image in froms:
        image = image.split(" AS ")[0].strip()
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert image.startswith("python:3.11-slim"), image
        assert not image.endswith(":latest")


def test_installs_only_the_operator_extra() -> None:
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    installs = [found.strip() for found in re.findall(r"pip install ([^&;|]+)", runs)]
    assert installs == ['".[operator]"'], installs
    assert "|| true" not in runs, "a failing install must fail the build"


def test_final_stage_runs_as_non_root_65532() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users == ["65532:65532"]
    values = yaml.safe_load((ROOT / "charts" / "slm-operator" / "values.yaml").read_text(encoding="utf-8"))
    assert values["podSecurityContext"]["runAsUser"] == 65532
    assert values["podSecurityContext"]["runAsGroup"] == 65532


def test_entrypoint_matches_the_chart_command() -> None:
    entrypoints = [rest for keyword, rest in final_stage() if keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["python", "-m", "slm_operator"]
    assert not [rest for keyword, rest in final_stage() if keyword == "CMD"]


def test_copied_sources_exist() -> None:
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source


def test_final_stage_copies_only_the_venv() -> None:
    copies = [rest for keyword, rest in final_stage() if keyword == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
