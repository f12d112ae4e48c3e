"""Catalog lookups and merging; operator settings from env, file and the chart's values shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.catalog import Catalog, load_builtin_catalog, load_catalog, merge_catalogs, parse_catalog
from slm_operator.facts import Facts
from slm_operator.plan import Owner, Plan
from slm_operator.resolve import resolve
from slm_operator.settings import CONFIG_FILE_ENV, OperatorSettings, default_runtime_images
from tests.unit.operator.conftest import FIXTURE_CATALOG, cpu_node

EXTRA = {
    "models": {
        "tiny:1m": {
            "family": "llama",
            "parameters": 1000000,
            "contextLength": 512,
            "layers": 2,
            "kvHeads": 2,
            "headDim": 64,
            "variants": [{"format": "gguf", "quantization": "f16", "source": "file:///models/tiny.gguf"}],
        }
    },
    "aliases": {"tiny": "tiny:1m"},
}


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("qwen2.5:0.5b", "qwen2.5:0.5b"),
        ("qwen2.5", "qwen2.5:0.5b"),  # alias
        ("Phi4:Mini", "phi4:mini"),  # case-insensitive like Ollama
        ("phi4-mini", "phi4:mini"),
        ("nomic-embed-text", "nomic-embed-text:v1.5"),
    ],
)
def test_lookup(catalog: Catalog, name: str, canonical: str) -> None:
    found = catalog.lookup(name)
    assert found is not None
    assert found[0] == canonical


def test_lookup_tries_latest_and_follows_alias_chains() -> None:
    chained = parse_catalog({**EXTRA, "aliases": {"t": "tiny", "tiny": "tiny:1m", "tiny:latest": "tiny:1m"}})
    assert chained.lookup("t") is not None
    assert chained.lookup("t")[0] == "tiny:1m"  # type: ignore[index]
    assert chained.lookup("nothing") is None
    looping = parse_catalog({"models": {}, "aliases": {"a": "b", "b": "a"}})
    assert looping.lookup("a") is None


def test_merge_replaces_and_adds(catalog: Catalog) -> None:
    replacement = EXTRA["models"]["tiny:1m"]
    merged = merge_catalogs(
        catalog, [parse_catalog({"models": {"qwen2.5:0.5b": replacement, **EXTRA["models"]}})]
    )
    assert merged.models["qwen2.5:0.5b"].parameters == 1000000
    assert "tiny:1m" in merged.models
    assert merged.lookup("qwen2.5") is not None  # aliases of the base survive


def test_settings_catalog_as_text_mapping_or_file(tmp_path: Path) -> None:
    as_text = OperatorSettings(catalog=json.dumps(EXTRA))
    as_mapping = OperatorSettings(catalog=EXTRA)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(EXTRA))
    as_file = OperatorSettings(catalog_file=str(path))
    for settings in (as_text, as_mapping, as_file):
        merged = load_catalog(settings.catalog_overrides())
        assert merged.lookup("tiny") is not None
    with pytest.raises(ValueError, match="must be a mapping"):
        OperatorSettings(catalog="- just\n- a list").catalog_overrides()


def test_builtin_catalog_entries_all_resolve_on_a_cpu_node(owner: Owner) -> None:
    builtin = load_builtin_catalog()
    assert "qwen2.5:0.5b" in builtin.models
    facts = Facts(catalog=builtin, nodes=[cpu_node(memory="256Gi")], settings=OperatorSettings())
    for name in builtin.names():
        result = resolve(
            owner,
            SLMDeploymentSpec.model_validate({"model": {"name": name}, "hardware": {"preferred": "cpu"}}),
            facts,
        )
        assert isinstance(result, Plan), (name, result)


def test_fixture_catalog_parses() -> None:
    assert set(parse_catalog(yaml.safe_load(FIXTURE_CATALOG.read_text())).models) == {
        "qwen2.5:0.5b",
        "llama3.1:8b",
        "phi4:mini",
        "nomic-embed-text:v1.5",
    }


def test_settings_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The chart's ConfigMap: `settings` values rendered as YAML (camelCase, images, defaults).
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "images": {
                    "cpu": "registry.local/slm-runtime:dev",
                    "cuda": "registry.local/slm-runtime:dev-cuda",
                },
                "tiers": {},
                "catalog": EXTRA,
                "defaults": {
                    "storageClassName": "local-path",
                    "cacheHeadroom": 0.5,
                    "imagePullSecrets": [{"name": "regcred"}],
                },
                "memoryOverheadBytes": 1073741824,
                "allowedImages": ["registry.local/*"],
            }
        )
    )
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    monkeypatch.setenv("SLM_OPERATOR_FETCH_BACKOFF_LIMIT", "7")
    monkeypatch.setenv("SLM_OPERATOR_DEFAULTS__STORAGE_CLASS_NAME", "from-env")
    settings = OperatorSettings()
    assert settings.images["cpu"] == "registry.local/slm-runtime:dev"
    assert settings.images["rocm"] == default_runtime_images()["rocm"]  # unset variants keep defaults
    assert settings.effective_fetch_image() == "registry.local/slm-runtime:dev"
    assert settings.allowed_images == ["registry.local/*"]
    assert settings.image_allowed("registry.local/custom:1") and not settings.image_allowed("elsewhere/x:1")
    assert settings.fetch_backoff_limit == 7  # env wins over the file
    assert settings.defaults.storage_class_name == "from-env"
    assert settings.defaults.cache_headroom == 0.5
    assert settings.defaults.image_pull_secrets == ["regcred"]
    assert settings.memory_overhead_bytes == 1 << 30
    assert set(settings.tiers) == {"npu", "gpu", "cpu"}
    assert load_catalog(settings.catalog_overrides()).lookup("tiny") is not None


def test_default_tiers_are_the_documented_device_plugins() -> None:
    tiers = OperatorSettings().tiers
    resources = {tier: [a.resource_name for a in t.accelerators] for tier, t in tiers.items()}
    assert resources == {
        "npu": [
            "npu.intel.com/npu",
            "huawei.com/Ascend910",
            "huawei.com/Ascend310",
            "huawei.com/Ascend310P",
            "qualcomm.com/qaic",
        ],
        "gpu": ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "gpu.intel.com/xe"],
        "cpu": [""],
    }
    assert tiers["gpu"].auto_quantization == {
        "gguf": ["f16", "q8_0", "q4_k_m"],
        "onnx": ["fp16", "int8", "int4"],
    }
    assert tiers["npu"].auto_quantization == {"onnx": ["int8", "int4"]}
    assert all(a.formats == ["onnx"] for a in tiers["npu"].accelerators)


def test_spec_defaults_and_fallback_order() -> None:
    spec = SLMDeploymentSpec.model_validate({"model": {"name": "phi4:mini"}})
    assert spec.tier_order() == ("gpu", "cpu")
    npu_first = SLMDeploymentSpec.model_validate({"model": {"name": "x"}, "hardware": {"preferred": "npu"}})
    assert npu_first.tier_order() == ("npu", "gpu", "cpu")
    no_fallback = SLMDeploymentSpec.model_validate({"model": {"name": "x"}, "hardware": {"fallback": []}})
    assert no_fallback.tier_order() == ("gpu",)
    assert spec.optimization.max_context == 4096 and spec.api.port == 8080 and spec.cache.retain is True


def test_variant_quantization_is_normalised_to_lowercase() -> None:
    entry = dict(EXTRA["models"]["tiny:1m"])  # type: ignore[arg-type]
    entry["variants"] = [{"format": "gguf", "quantization": "Q4_K_M", "source": "file:///m/tiny-Q4_K_M.gguf"}]
    parsed = parse_catalog({"models": {"tiny:1m": entry}})
    assert parsed.models["tiny:1m"].variants[0].quantization == "q4_k_m"
