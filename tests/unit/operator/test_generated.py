"""Generated files: none is stale, the generator writes and checks them, and what it derives is right.

deploy/install.yaml needs helm; tests/chart/test_chart.py checks it against a fresh render.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml
from pydantic.alias_generators import to_camel

from slm_operator.api.crd import build_crd
from slm_operator.api.reference import api_reference
from slm_operator.chart_values import (
    CHART_OMITS,
    SETTINGS_REF,
    TIERS_BLOCK_BEGIN,
    TIERS_BLOCK_END,
    values_schema,
    with_default_tiers_block,
)
from slm_operator.generate import (
    CHART_DIR,
    RUNTIME_SETTINGS_RENDERER,
    VALUES_SCHEMA_BASE,
    generated_files,
    main,
    stale_files,
)
from slm_operator.settings import OperatorSettings, default_tiers, parse_tiers

REPO_ROOT = Path(__file__).resolve().parents[3]
VALUES = CHART_DIR / "values.yaml"
SCHEMA = json.loads((REPO_ROOT / CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
# The files the generator reads besides the Python models.
SOURCES = (VALUES, VALUES_SCHEMA_BASE, RUNTIME_SETTINGS_RENDERER)


def test_every_generated_file_is_current() -> None:
    drifts = stale_files(REPO_ROOT)
    report = "\n".join(f"{d.path}:\n{d.detail}" for d in drifts)
    assert not drifts, f"stale generated files (run `make generate`):\n{report}"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A repository root holding only the generator's sources: every generated file is missing or stale."""
    for source in SOURCES:
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / source, tmp_path / source)
    values = tmp_path / VALUES
    lines = values.read_text(encoding="utf-8").splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if TIERS_BLOCK_BEGIN in line)
    end = next(i for i, line in enumerate(lines) if TIERS_BLOCK_END in line)
    values.write_text("".join(lines[: begin + 1] + lines[end:]), encoding="utf-8")  # an empty block
    return tmp_path


def test_check_lists_stale_files_writes_nothing_and_write_fixes_them(
    checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values_before = (checkout / VALUES).read_text(encoding="utf-8")
    assert "#   npu:" not in values_before
    assert main(["--root", str(checkout), "--check"]) == 1
    report = capsys.readouterr().err
    for generated in generated_files():
        assert f"stale: {generated.path}" in report
    assert not (checkout / "crds").exists() and (checkout / VALUES).read_text() == values_before

    assert main(["--root", str(checkout)]) == 0
    assert main(["--root", str(checkout), "--check"]) == 0
    for generated in generated_files():
        assert (checkout / generated.path).read_text() == (REPO_ROOT / generated.path).read_text()

    schema_file = checkout / CHART_DIR / "values.schema.json"
    schema_file.write_text(schema_file.read_text().replace('"minLength": 1', '"minLength": 2', 1))
    capsys.readouterr()
    assert main(["--root", str(checkout), "--check"]) == 1
    report = capsys.readouterr().err
    assert re.findall(r"^stale: (.*)$", report, re.MULTILINE) == [str(CHART_DIR / "values.schema.json")]
    assert re.search(r'^-\s+"minLength": 2', report, re.MULTILINE), report  # the diff head
    assert re.search(r'^\+\s+"minLength": 1', report, re.MULTILINE), report
    assert "1 generated file(s) out of date" in report


def test_install_manifest_is_last_and_never_rendered_from_a_stale_chart(checkout: Path) -> None:
    # This root has no deploy/render.sh: comparing the manifest would fail, so it must be skipped.
    drifts = stale_files(checkout, with_helm=True)
    assert drifts[-1].path == Path("deploy") / "install.yaml"
    assert drifts[-1].detail.startswith("not compared")
    assert [f.path.name for f in generated_files(with_helm=True)][-1] == "install.yaml"
    assert "install.yaml" not in {f.path.name for f in generated_files()}


def test_missing_source_is_named(checkout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (checkout / VALUES_SCHEMA_BASE).unlink()
    assert main(["--root", str(checkout)]) == 2
    assert f"{VALUES_SCHEMA_BASE} is missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The default tiers: a data file, shown in values.yaml


def commented_tiers(values_text: str) -> dict[str, Any]:
    block = values_text.split(TIERS_BLOCK_BEGIN, 1)[1].split(TIERS_BLOCK_END, 1)[0]
    lines = block.splitlines()[1:-1]  # the rest of the BEGIN line; the END line's indent
    plain = "\n".join(re.sub(r"^\s*# ?", "", line) for line in lines)
    loaded: dict[str, Any] = yaml.safe_load(plain)
    return loaded


def test_values_yaml_shows_exactly_the_built_in_tiers_and_leaves_them_to_the_operator() -> None:
    text = (REPO_ROOT / VALUES).read_text(encoding="utf-8")
    shown = commented_tiers(text)
    assert parse_tiers(yaml.safe_dump(shown["tiers"]), "values.yaml") == default_tiers()
    # Live values stay empty: a tier the user gives replaces the built-in one whole, as before.
    assert yaml.safe_load(text)["settings"]["tiers"] == {}


def test_tier_block_replaces_only_what_is_between_the_markers() -> None:
    text = f"a: 1\nb:\n  {TIERS_BLOCK_BEGIN} (note)\n  # old\n  {TIERS_BLOCK_END}\nc: 2\n"
    result = with_default_tiers_block(text)
    assert result.startswith(f"a: 1\nb:\n  {TIERS_BLOCK_BEGIN} (note)\n  # tiers:\n  #   npu:\n")
    assert result.endswith(f"  {TIERS_BLOCK_END}\nc: 2\n") and "# old" not in result
    assert with_default_tiers_block(result) == result
    with pytest.raises(ValueError, match="BEGIN generated: default tiers"):
        with_default_tiers_block("tiers: {}\n")


def test_tier_data_errors_name_the_file_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"tiers\.yaml: every tier needs a definition; add npu, cpu"):
        parse_tiers(yaml.safe_dump({"gpu": shown_tier("gpu")}), "tiers.yaml")
    broken = {tier: shown_tier(tier) for tier in ("npu", "gpu", "cpu")}
    broken["cpu"]["accelerators"][0]["runtime"] = ""
    with pytest.raises(ValueError, match=r"(?s)tiers\.yaml: not a valid map.*cpu\.accelerators\.0\.runtime"):
        parse_tiers(yaml.safe_dump(broken), "tiers.yaml")


def shown_tier(tier: str) -> dict[str, Any]:
    values_text = (REPO_ROOT / VALUES).read_text(encoding="utf-8")
    shown: dict[str, Any] = commented_tiers(values_text)["tiers"][tier]
    return shown


# ---------------------------------------------------------------------------------------------
# values.schema.json: the settings model's schema in the chart's spelling


def test_the_tier_schema_is_defined_once() -> None:
    text = json.dumps(SCHEMA)
    assert text.count('"accelerators":') == 1
    tiers = SCHEMA["$defs"]["OperatorSettings"]["properties"]["tiers"]
    assert tiers["properties"] == {t: {"$ref": "#/$defs/TierSettings"} for t in ("npu", "gpu", "cpu")}
    assert tiers["additionalProperties"] is False


def test_every_setting_but_the_omitted_ones_is_a_chart_value() -> None:
    offered = set(SCHEMA["$defs"]["OperatorSettings"]["properties"])
    expected = {to_camel(name) for name in OperatorSettings.model_fields if name not in CHART_OMITS}
    assert offered == expected
    assert SCHEMA["properties"]["settings"]["$ref"] == SETTINGS_REF


def validate(values: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(values)


def chart_values(**settings: Any) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((REPO_ROOT / VALUES).read_text(encoding="utf-8"))
    values["settings"] = {**values["settings"], **settings}
    return values


def test_chart_values_and_the_shown_tiers_pass_the_schema() -> None:
    validate(chart_values())
    validate(chart_values(tiers=commented_tiers((REPO_ROOT / VALUES).read_text())["tiers"]))
    validate(chart_values(defaults={"imagePullSecrets": [{"name": "regcred"}, "other"]}))
    validate(chart_values(catalog="models: {}\n", fetchRetryBaseSeconds=5))


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"images": {"cuda": ""}}, ["settings", "images", "cuda"]),
        ({"images": {"cuda": "a b"}}, ["settings", "images", "cuda"]),
        ({"tiers": {"tpu": {}}}, ["settings", "tiers"]),
        (
            {
                "tiers": {
                    "gpu": {"accelerators": [{"name": "x", "formats": ["onnx"]}], "autoQuantization": {}}
                }
            },
            ["settings", "tiers", "gpu", "accelerators", 0],
        ),
        ({"tiers": {"gpu": {"accelerators": [], "autoQuantization": {}}}}, ["settings", "tiers", "gpu"]),
        ({"catalog": {"models": {"x:1": {"family": "x"}}}}, ["settings", "catalog"]),
        ({"configFile": "/elsewhere.yaml"}, ["settings"]),
        ({"logLevel": "trace"}, ["settings", "logLevel"]),
    ],
)
def test_schema_rejects_what_the_operator_would(settings: dict[str, Any], where: list[Any]) -> None:
    with pytest.raises(jsonschema.ValidationError) as error:
        validate(chart_values(**settings))
    assert list(error.value.absolute_path)[: len(where)] == where


def test_the_operator_rejects_the_same_empty_image() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"images\.cuda"):
        OperatorSettings(images={"cuda": ""})


def test_schema_base_must_refer_to_the_settings_and_not_shadow_their_definitions() -> None:
    with pytest.raises(ValueError, match="must declare `settings"):
        values_schema({"properties": {"settings": {"type": "object"}}})
    with pytest.raises(ValueError, match="TierSettings"):
        values_schema({"properties": {"settings": {"$ref": SETTINGS_REF}}, "$defs": {"TierSettings": {}}})


# ---------------------------------------------------------------------------------------------
# docs/api-reference.md


def test_api_reference_covers_every_spec_field_and_rule() -> None:
    page = api_reference(build_crd())
    for field in (
        "spec.model.name",
        "spec.hardware.fallback",
        "spec.cache.retain",
        "status.placement.reason",
    ):
        assert f"| `{field}`" in page
    assert "hardware.fallback must not contain the preferred tier" in page
