"""Foundry Local's deployment configuration → SLMDeployment: the seed's JSON and refusals by name."""

from __future__ import annotations

import json

import pytest

from slm_operator.catalog import load_builtin_catalog
from slm_operator.cli.errors import CliError
from slm_operator.cli.foundry import default_name, load_document, resolve_model, to_spec

CATALOG = load_builtin_catalog()

# shared/seed, "Configurazione Avanzata della Distribuzione", verbatim.
SEED_JSON = """{
  "deployment": {
    "model": "microsoft/phi-4-mini",
    "hardware": {
      "preferred": "npu",
      "fallback": ["gpu", "cpu"]
    },
    "optimization": {
      "quantization": "dynamic",
      "batch_size": 4,
      "max_context": 4096
    },
    "api": {
      "port": 8080,
      "openai_compatible": true
    }
  }
}"""

# shared/seed, "Ottimizzazione con Foundry Local", verbatim.
SEED_PERFORMANCE_JSON = """{
  "performance": {
    "batch_processing": true,
    "parallel_requests": 8,
    "memory_optimization": {
      "enable_kv_cache": true,
      "max_cache_size": "4GB"
    },
    "hardware_scheduling": {
      "enable_dynamic_batching": true,
      "max_batch_size": 16
    }
  }
}"""


def test_seed_deployment_json() -> None:
    spec = to_spec(load_document(SEED_JSON, "seed.json"), CATALOG)
    assert spec == {
        "model": {"name": "phi4:mini", "quantization": "auto"},
        "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
        "optimization": {"parallelRequests": 4, "maxContext": 4096},
        "api": {"port": 8080, "openai": True},
    }
    assert default_name(spec) == "phi4-mini"


def test_seed_performance_block_refuses_what_has_no_equivalent() -> None:
    document = {"deployment": json.loads(SEED_JSON)["deployment"], **json.loads(SEED_PERFORMANCE_JSON)}
    with pytest.raises(CliError) as caught:
        to_spec(document, CATALOG)
    assert caught.value.details == [
        "unknown key deployment.performance.batch_processing: requests are always batched (continuous "
        "batching); remove the key",
        "unknown key deployment.performance.memory_optimization: set spec.optimization.kvCacheType "
        "(f16, q8_0, q4_0) instead",
        "unknown key deployment.performance.hardware_scheduling: batching is continuous; set "
        "optimization.batch_size (concurrent requests) instead",
        "optimization.batch_size and performance.parallel_requests disagree: both set the requests served "
        "together per replica; keep one",
    ]


def test_unknown_keys_and_bad_values_are_refused_by_name() -> None:
    document = {
        "deployment": {
            "model": "microsoft/phi-4-mini",
            "hardware": {"preferred": "tpu", "fallback": ["gpu"], "memory": "8G"},
            "optimization": {"quantization": "int3", "max_context": "big"},
            "api": {"port": 8080, "cors": True, "openai_compatible": "yes"},
            "telemetry": True,
        }
    }
    with pytest.raises(CliError) as caught:
        to_spec(document, CATALOG)
    assert caught.value.details == [
        "unknown key deployment.telemetry: it has no SLMDeployment equivalent; the keys are model, hardware, "
        "optimization, api, performance",
        "unknown key deployment.hardware.memory: it has no SLMDeployment equivalent; the keys are preferred, "
        "fallback",
        "deployment.hardware.preferred 'tpu' must be npu, gpu or cpu",
        caught.value.details[3],
        "deployment.optimization.max_context must be an integer, got 'big'",
        "unknown key deployment.api.cors: it has no SLMDeployment equivalent; the keys are port, "
        "openai_compatible",
        "deployment.api.openai_compatible must be true or false",
    ]
    assert caught.value.details[3].startswith("deployment.optimization.quantization 'int3': use dynamic")


def test_model_names() -> None:
    assert resolve_model("microsoft/phi-4-mini", CATALOG) == "phi4:mini"
    assert resolve_model("deepseek/r1-distill-qwen-1.5b", CATALOG) == "deepseek-r1:1.5b"
    assert resolve_model("qwen2.5:0.5b", CATALOG) == "qwen2.5:0.5b"
    assert resolve_model("hf://org/repo/model.gguf", CATALOG) == "hf://org/repo/model.gguf"
    with pytest.raises(CliError, match=r"did you mean .*phi-4-mini"):
        resolve_model("microsoft/phi-4-mimi", CATALOG)


def test_fallback_repeating_the_preferred_tier_and_yaml_input() -> None:
    document = load_document(
        "deployment:\n  model: qwen2.5:0.5b\n  hardware: {preferred: gpu, fallback: [gpu, cpu]}\n", "x.yaml"
    )
    with pytest.raises(CliError) as caught:
        to_spec(document, CATALOG)
    assert caught.value.details == ["deployment.hardware.fallback repeats the preferred tier gpu: remove it"]
    with pytest.raises(CliError, match="not valid JSON or YAML"):
        load_document("{not json", "x.json")
