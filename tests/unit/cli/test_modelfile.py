"""Modelfile → SLMDeployment spec: the seed's Modelfiles, Ollama's syntax, and every refusal."""

from __future__ import annotations

import pytest

from slm_operator.catalog import load_builtin_catalog
from slm_operator.cli.errors import CliError
from slm_operator.cli.modelfile import LICENSE_ANNOTATION, render, to_spec, tokenize

CATALOG = load_builtin_catalog()

# The seed's enterprise Modelfile (shared/seed, "Configurazione Avanzata"), verbatim.
SEED_MODELFILE = '''FROM qwen2.5:3b

PARAMETER temperature 0.7
PARAMETER top_p 0.9
PARAMETER context_length 4096
PARAMETER num_gpu 1
PARAMETER num_thread 8

SYSTEM """
You are an enterprise assistant for Contoso Corporation.
Always maintain a professional tone and prioritize security best practices.
Never share confidential information without proper authentication.
"""

# Custom model knowledge (optional)
FILE ./contoso_guidelines.txt
FILE ./security_protocols.pdf
'''

# The seed's second snippet (SYSTEM and an Ollama Go TEMPLATE), with a FROM added.
SEED_TEMPLATE_MODELFILE = '''FROM phi4:mini
SYSTEM """
You are a specialized enterprise assistant focused on technical documentation and code analysis.
Provide concise, accurate responses with practical examples.
"""

TEMPLATE """{{ .System }}
User: {{ .Prompt }}
Assistant: """
'''

FILE_REASON = (
    "cannot be honoured: a served model cannot take documents as knowledge; put them in a retrieval "
    "service (RAG) in front of the API, or fine-tune and FROM the result, then remove the FILE lines"
)


def problems(text: str) -> list[str]:
    with pytest.raises(CliError) as caught:
        to_spec(text, CATALOG)
    return caught.value.details


def test_seed_modelfile_file_lines_are_refused_with_line_numbers() -> None:
    assert problems(SEED_MODELFILE) == [
        f"line 16: FILE ./contoso_guidelines.txt {FILE_REASON}",
        f"line 17: FILE ./security_protocols.pdf {FILE_REASON}",
    ]


def test_seed_modelfile_without_file_lines_maps_onto_the_spec() -> None:
    text = SEED_MODELFILE.split("# Custom model knowledge")[0]
    result = to_spec(text, CATALOG)
    assert result.spec == {
        "model": {"name": "qwen2.5:3b"},
        "optimization": {"maxContext": 4096, "gpuLayers": 1, "threads": 8},
        "prompt": {
            "system": "You are an enterprise assistant for Contoso Corporation.\n"
            "Always maintain a professional tone and prioritize security best practices.\n"
            "Never share confidential information without proper authentication.",
            "parameters": {"temperature": 0.7, "top_p": 0.9},
        },
    }
    assert result.annotations == {}


def test_seed_go_template_is_refused_naming_jinja() -> None:
    assert problems(SEED_TEMPLATE_MODELFILE) == [
        "line 7: TEMPLATE is a Go template (Ollama's {{ .System }} / {{ .Prompt }} syntax), but the runtime "
        "takes a Jinja chat template over `messages` (Hugging Face style): rewrite it in Jinja, or remove "
        "TEMPLATE to use the chat template in the model's metadata"
    ]


def test_ollama_syntax_case_comments_quotes_and_blocks() -> None:
    text = '''# a comment
from hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf
  parameter Temperature 0.2
Parameter stop "<|im_end|>"
PARAMETER stop <|endoftext|>
PARAMETER top_k 40
PARAMETER min_p 0.05
PARAMETER repeat_penalty 1.1
PARAMETER repeat_last_n 64
PARAMETER seed 42
PARAMETER num_predict 256
PARAMETER num_ctx 8192
PARAMETER num_batch 256
system """Be brief."""
template """{% for m in messages %}{{ m['content'] }}{% endfor %}"""
license """Apache-2.0
full text"""
'''
    result = to_spec(text, CATALOG)
    assert result.spec == {
        "model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"},
        "optimization": {"maxContext": 8192, "batchSize": 256},
        "prompt": {
            "system": "Be brief.",
            "template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            "parameters": {
                "temperature": 0.2,
                "stop": ["<|im_end|>", "<|endoftext|>"],
                "top_k": 40,
                "min_p": 0.05,
                "repeat_penalty": 1.1,
                "repeat_last_n": 64,
                "seed": 42,
                "num_predict": 256,
            },
        },
    }
    assert result.annotations == {LICENSE_ANNOTATION: "Apache-2.0\nfull text"}


def test_everything_that_cannot_be_honoured_is_refused_line_by_line() -> None:
    text = """FROM ./models/my-model.gguf
ADAPTER ./lora.gguf
REQUIRES 0.6.0
MESSAGE user Is it blue?
PARAMETER temprature 0.5
PARAMETER mirostat 2
PARAMETER top_k many
PARAMETER main_gpu 1
SYTEM hello
"""
    assert problems(text) == [
        "line 9: unknown instruction SYTEM (did you mean SYSTEM?): Modelfile instructions are FROM, "
        "PARAMETER, SYSTEM, TEMPLATE, MESSAGE, LICENSE, ADAPTER, FILE, REQUIRES"
    ]
    text = text.replace("SYTEM hello\n", "")
    found = problems(text)
    assert found[0] == (
        "line 1: FROM ./models/my-model.gguf is a file on this machine, which the cluster cannot read: "
        "upload it and FROM its https:// URL or hf://org/repo/file.gguf, or copy it onto a "
        "PersistentVolumeClaim and FROM pvc://claim/path"
    )
    assert found[1].startswith("line 2: ADAPTER ./lora.gguf cannot be honoured: the runtime serves no LoRA")
    assert found[2].startswith("line 3: REQUIRES 0.6.0 cannot be honoured: it names an Ollama version")
    assert found[3].startswith("line 4: MESSAGE user cannot be honoured: an SLMDeployment has no stored")
    assert found[4].startswith("line 5: unknown PARAMETER temprature (did you mean temperature?): ")
    assert found[5] == (
        "line 6: PARAMETER mirostat cannot be honoured: the runtime does not implement Mirostat sampling; "
        "use temperature, top_k, top_p, min_p"
    )
    assert found[6] == "line 7: PARAMETER top_k takes an integer, got 'many'"
    assert found[7].startswith(
        "line 8: PARAMETER main_gpu cannot be honoured: the operator picks the devices"
    )
    assert len(found) == 8


def test_unknown_catalog_name_suggests_close_ones() -> None:
    assert problems("FROM phi4:mni\n") == [
        "line 1: FROM phi4:mni: not a model of the catalog (did you mean phi4:mini, phi4-mini, phi4:mini-f16?); run "
        "`slm models list` for the names, or FROM an https:// or hf:// source"
    ]
    assert to_spec("FROM my-own:model\n", CATALOG, check_catalog=False).spec == {
        "model": {"name": "my-own:model"}
    }


def test_missing_from_duplicates_unclosed_blocks_and_ranges() -> None:
    assert problems("PARAMETER temperature 1\n") == [
        "line 1: no FROM line: start the Modelfile with FROM <catalog name, https:// or hf:// source>"
    ]
    assert problems("FROM phi4:mini\nPARAMETER num_ctx 64\n") == [
        "line 2: PARAMETER num_ctx 64 is out of range: it must be between 128 and 1048576"
    ]
    assert problems("FROM phi4:mini\nPARAMETER num_ctx 2048\nPARAMETER context_length 4096\n") == [
        "line 3: PARAMETER context_length is set twice (also on line 2): keep one"
    ]
    assert problems('FROM phi4:mini\nSYSTEM """never closed\n') == [
        'line 2: SYSTEM opens a """ block that is never closed: end it with """'
    ]
    assert problems("FROM ftp://host/x.gguf\n")[0].startswith(
        "line 1: FROM ftp://host/x.gguf: unsupported scheme"
    )


def test_num_gpu_zero_means_the_cpu_tier() -> None:
    spec = to_spec("FROM phi4:mini\nPARAMETER num_gpu 0\n", CATALOG).spec
    assert spec == {"model": {"name": "phi4:mini"}, "hardware": {"preferred": "cpu", "fallback": []}}


def test_tokenize_keeps_line_numbers_of_multi_line_blocks() -> None:
    instructions = tokenize('FROM a\nSYSTEM """\nx\ny\n"""\nPARAMETER seed 1\n')
    assert [(i.line, i.name) for i in instructions] == [(1, "FROM"), (2, "SYSTEM"), (6, "PARAMETER")]


def test_render_round_trips() -> None:
    text = '''FROM qwen2.5:0.5b
PARAMETER num_ctx 8192
PARAMETER num_thread 4
PARAMETER temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop "User: "
SYSTEM """Line one.
Line two."""
LICENSE """MIT"""
'''
    first = to_spec(text, CATALOG)
    regenerated = render(first.spec, first.annotations, origin="SLMDeployment ns/x")
    assert regenerated == (
        "# Modelfile generated by `slm show --modelfile` from SLMDeployment ns/x\n"
        "FROM qwen2.5:0.5b\n"
        "PARAMETER num_ctx 8192\n"
        "PARAMETER num_thread 4\n"
        "PARAMETER temperature 0.3\n"
        "PARAMETER stop <|im_end|>\n"
        'PARAMETER stop "User: "\n'
        'SYSTEM """Line one.\nLine two."""\n'
        'LICENSE """MIT"""\n'
    )
    again = to_spec(regenerated, CATALOG)
    assert again.spec == first.spec
    assert again.annotations == first.annotations


def test_num_gpu_keeps_ollamas_meaning_and_says_so() -> None:
    result = to_spec("FROM phi4:mini\nPARAMETER num_gpu 1\n", CATALOG)
    assert result.spec == {"model": {"name": "phi4:mini"}, "optimization": {"gpuLayers": 1}}
    assert result.notes == [
        "line 2: PARAMETER num_gpu 1 puts 1 layer(s) on the GPU, as in Ollama (spec.optimization.gpuLayers); "
        "for a number of GPUs per replica set spec.hardware.count instead, and for every layer on the GPU "
        "remove the line"
    ]
    assert to_spec("FROM phi4:mini\nPARAMETER num_gpu -1\n", CATALOG).notes == []
