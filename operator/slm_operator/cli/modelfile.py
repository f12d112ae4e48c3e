"""Ollama Modelfiles: parse them, map them onto an SLMDeployment spec, and write them back.

Syntax (as Ollama reads it): one instruction per line, the instruction case-insensitive, `#`
comments, arguments either the rest of the line, a "quoted" string, or a \"\"\"triple-quoted\"\"\"
block that may span lines. Whatever the operator cannot honour is refused with its line number,
the reason and what to do instead; nothing is silently dropped.

Past 400 lines: the parser, the table of Ollama's PARAMETERs with their types and targets, and the
writer that turns a spec back into a Modelfile (`slm show --modelfile`) belong together, since each
PARAMETER is declared once for both directions.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from slm_operator.api.v1alpha1 import OptimizationSpec
from slm_operator.catalog import Catalog
from slm_operator.cli.errors import CliError

LICENSE_ANNOTATION = "slm.dev/license"
INSTRUCTIONS = (
    "FROM",
    "PARAMETER",
    "SYSTEM",
    "TEMPLATE",
    "MESSAGE",
    "LICENSE",
    "ADAPTER",
    "FILE",
    "REQUIRES",
)
REMOTE_SCHEMES = ("http://", "https://", "hf://", "pvc://", "s3://", "file://")

# Sampling options the runtime applies per request (slm_runtime.options); they go to
# spec.prompt.parameters with Ollama's types.
SAMPLING_PARAMETERS: dict[str, type] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "typical_p": float,
    "repeat_penalty": float,
    "repeat_last_n": int,
    "presence_penalty": float,
    "frequency_penalty": float,
    "seed": int,
    "num_predict": int,
}
# Load-time options: fixed per replica, so they are engine settings (spec.optimization).
ENGINE_PARAMETERS: dict[str, tuple[str, str]] = {
    "num_ctx": ("max_context", "maxContext"),
    # Not an Ollama PARAMETER name but the seed's Modelfile (and OLLAMA_CONTEXT_LENGTH) use it.
    "context_length": ("max_context", "maxContext"),
    "num_batch": ("batch_size", "batchSize"),
    # Ollama's num_gpu is the number of layers offloaded to the GPU(s), not a device count.
    "num_gpu": ("gpu_layers", "gpuLayers"),
    "num_thread": ("threads", "threads"),
}
REFUSED_PARAMETERS: dict[str, str] = {
    "main_gpu": "the operator picks the devices of each replica; to pin an accelerator kind set "
    "spec.hardware.accelerator (e.g. kubectl patch), to use several set spec.hardware.count",
    "use_mmap": "the runtime always memory-maps the cached model; remove the line",
    "use_mlock": "the runtime does not lock model memory; remove the line (set resources instead)",
    "num_keep": "the runtime has no num_keep (tokens kept on context shift); remove the line",
    "numa": "the runtime has no NUMA setting; remove the line",
    "low_vram": "the runtime has no low-VRAM mode; lower PARAMETER num_gpu (layers on the GPU) instead",
    "f16_kv": "set the KV cache type with spec.optimization.kvCacheType (f16, q8_0, q4_0) instead",
    "vocab_only": "a vocabulary-only model cannot be served; remove the line",
    "mirostat": "the runtime does not implement Mirostat sampling; use temperature, top_k, top_p, min_p",
    "mirostat_eta": "the runtime does not implement Mirostat sampling; use temperature, top_k, top_p, min_p",
    "mirostat_tau": "the runtime does not implement Mirostat sampling; use temperature, top_k, top_p, min_p",
    "tfs_z": "tail-free sampling was removed from llama.cpp; use min_p or top_p instead",
    "penalize_newline": "the runtime does not implement penalize_newline (removed from Ollama); remove the line",
}
KNOWN_PARAMETERS = sorted([*SAMPLING_PARAMETERS, "stop", *ENGINE_PARAMETERS])


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str  # upper-case
    args: str


@dataclass
class Problems:
    lines: list[str]
    notes: list[str] = dataclasses.field(default_factory=list)  # honoured, but worth a word to the user

    def add(self, line: int, message: str) -> None:
        self.lines.append(f"line {line}: {message}")

    def note(self, line: int, message: str) -> None:
        self.notes.append(f"line {line}: {message}")


_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)(?:\s+|$)(.*)$")


def tokenize(text: str) -> list[Instruction]:
    """Split a Modelfile into instructions; a bad line is a CliError naming it."""
    lines = text.splitlines()
    result: list[Instruction] = []
    index = 0
    problems = Problems([])
    while index < len(lines):
        number = index + 1
        raw = lines[index]
        index += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _INSTRUCTION.match(raw)
        if match is None:
            problems.add(
                number,
                f"cannot read {stripped[:40]!r}: a line starts with an instruction "
                f"({', '.join(INSTRUCTIONS)})",
            )
            continue
        name, rest = match.group(1).upper(), match.group(2)
        if name not in INSTRUCTIONS:
            close = difflib.get_close_matches(name, INSTRUCTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.add(
                number,
                f"unknown instruction {match.group(1)}{hint}: Modelfile instructions are "
                f"{', '.join(INSTRUCTIONS)}",
            )
            continue
        if name in ("PARAMETER", "MESSAGE"):
            head, _, tail = rest.strip().partition(" ")
            tail = tail.strip()
            if tail.startswith('"""'):
                body, index, ok = _block(tail, lines, index)
                if not ok:
                    problems.add(number, f'{name} opens a """ block that is never closed: end it with """')
                    continue
                result.append(
                    Instruction(number, name, f"{head} {body}" if name == "MESSAGE" else f"{head}\0{body}")
                )
                continue
            result.append(
                Instruction(number, name, f"{head} {tail}" if name == "MESSAGE" else f"{head}\0{tail}")
            )
            continue
        value = rest.strip()
        if value.startswith('"""'):
            body, index, ok = _block(value, lines, index)
            if not ok:
                problems.add(number, f'{name} opens a """ block that is never closed: end it with """')
                continue
            value = body
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        result.append(Instruction(number, name, value))
    if problems.lines:
        raise CliError(f"the Modelfile has {len(problems.lines)} problem(s)", details=problems.lines)
    return result


def _block(first: str, lines: list[str], index: int) -> tuple[str, int, bool]:
    """A \"\"\"block\"\"\" starting on `first` (which begins with the quotes); returns text, next index."""
    text = first[3:]
    if '"""' in text:
        return text[: text.index('"""')], index, True
    collected = [text]
    while index < len(lines):
        line = lines[index]
        index += 1
        if '"""' in line:
            collected.append(line[: line.index('"""')])
            return "\n".join(collected), index, True
        collected.append(line)
    return "", index, False


def _strip_block(text: str) -> str:
    # A block written as SYSTEM """\n...\n""" means the text between the newlines.
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    return text


def _looks_local(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~", "."))
        or value.lower().endswith((".gguf", ".bin", ".safetensors", ".onnx"))
        or "\\" in value
    )


def suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], n=3, cutoff=0.6)
    lookup = {c.lower(): c for c in candidates}
    return ", ".join(lookup[c] for c in close)


@dataclass
class ModelfileResult:
    spec: dict[str, Any]
    annotations: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)


def _number(kind: type, value: str) -> int | float | None:
    try:
        if kind is int:
            return int(value)
        number = float(value)
    except ValueError:
        return None
    return number


def to_spec(text: str, catalog: Catalog, *, check_catalog: bool = True) -> ModelfileResult:
    """Map a Modelfile onto SLMDeployment spec fields (camelCase dict), or refuse line by line."""
    instructions = tokenize(text)
    problems = Problems([])
    model: dict[str, Any] = {}
    optimization: dict[str, Any] = {}
    hardware: dict[str, Any] = {}
    prompt: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    seen: dict[str, int] = {}
    licenses: list[str] = []
    from_line = 0
    for ins in instructions:
        handler = _HANDLERS.get(ins.name)
        if ins.name == "FROM":
            if from_line:
                problems.add(ins.line, f"a second FROM (the first is on line {from_line}): keep one")
                continue
            from_line = ins.line
            _from(ins, catalog, check_catalog, model, problems)
        elif ins.name == "PARAMETER":
            _parameter(ins, parameters, optimization, hardware, seen, problems)
        elif ins.name in ("SYSTEM", "TEMPLATE"):
            key = ins.name.lower()
            if key in prompt:
                problems.add(
                    ins.line, f"a second {ins.name} (the first is on line {seen[ins.name]}): keep one"
                )
                continue
            seen[ins.name] = ins.line
            value = _strip_block(ins.args)
            if ins.name == "TEMPLATE" and _is_go_template(value):
                problems.add(
                    ins.line,
                    "TEMPLATE is a Go template (Ollama's {{ .System }} / {{ .Prompt }} syntax), but the "
                    "runtime takes a Jinja chat template over `messages` (Hugging Face style): rewrite it in "
                    "Jinja, or remove TEMPLATE to use the chat template in the model's metadata",
                )
                continue
            prompt[key] = value
        elif ins.name == "LICENSE":
            licenses.append(_strip_block(ins.args))
        elif handler is not None:
            problems.add(ins.line, handler(ins))
    if not from_line:
        problems.add(
            1, "no FROM line: start the Modelfile with FROM <catalog name, https:// or hf:// source>"
        )
    if problems.lines:
        raise CliError(f"the Modelfile has {len(problems.lines)} problem(s)", details=problems.lines)
    if parameters:
        prompt["parameters"] = parameters
    spec: dict[str, Any] = {"model": model}
    if hardware:
        spec["hardware"] = hardware
    if optimization:
        spec["optimization"] = optimization
    if prompt:
        spec["prompt"] = prompt
    annotations = {LICENSE_ANNOTATION: "\n\n".join(licenses)} if licenses else {}
    return ModelfileResult(spec=spec, annotations=annotations, notes=problems.notes)


_GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.|if\b|range\b|end\b|else\b|with\b|template\b|\$)")


def _is_go_template(text: str) -> bool:
    return bool(_GO_TEMPLATE.search(text)) and "{%" not in text


def _from(ins: Instruction, catalog: Catalog, check: bool, model: dict[str, Any], problems: Problems) -> None:
    value = ins.args.strip()
    if not value:
        problems.add(ins.line, "FROM needs a model: a catalog name (e.g. phi4:mini) or a source URL")
        return
    lowered = value.lower()
    if lowered.startswith(REMOTE_SCHEMES):
        model["source"] = value
        return
    if "://" in value:
        problems.add(
            ins.line,
            f"FROM {value}: unsupported scheme; use https://, http://, hf://org/repo/file.gguf, "
            "pvc://claim/path or s3://bucket/key",
        )
        return
    if _looks_local(value):
        problems.add(
            ins.line,
            f"FROM {value} is a file on this machine, which the cluster cannot read: upload it and FROM "
            "its https:// URL or hf://org/repo/file.gguf, or copy it onto a PersistentVolumeClaim and "
            "FROM pvc://claim/path",
        )
        return
    if check and catalog.lookup(value) is None:
        close = suggest(value, catalog.names())
        hint = f" (did you mean {close}?)" if close else ""
        problems.add(
            ins.line,
            f"FROM {value}: not a model of the catalog{hint}; run `slm models list` for the names, or "
            "FROM an https:// or hf:// source",
        )
        return
    model["name"] = value


def _parameter(
    ins: Instruction,
    parameters: dict[str, Any],
    optimization: dict[str, Any],
    hardware: dict[str, Any],
    seen: dict[str, int],
    problems: Problems,
) -> None:
    raw_name, _, raw_value = ins.args.partition("\0")
    name = raw_name.strip().lower()
    value = raw_value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not name:
        problems.add(ins.line, "PARAMETER needs a name and a value, e.g. PARAMETER temperature 0.7")
        return
    if not value:
        problems.add(ins.line, f"PARAMETER {name} has no value: write PARAMETER {name} <value>")
        return
    if name in REFUSED_PARAMETERS:
        problems.add(ins.line, f"PARAMETER {name} cannot be honoured: {REFUSED_PARAMETERS[name]}")
        return
    if name == "stop":
        parameters.setdefault("stop", []).append(value)
        return
    if name not in SAMPLING_PARAMETERS and name not in ENGINE_PARAMETERS:
        close = suggest(name, KNOWN_PARAMETERS)
        hint = f" (did you mean {close}?)" if close else ""
        problems.add(
            ins.line,
            f"unknown PARAMETER {raw_name.strip()}{hint}: the parameters are {', '.join(KNOWN_PARAMETERS)}",
        )
        return
    canonical = ENGINE_PARAMETERS[name][1] if name in ENGINE_PARAMETERS else name
    if canonical in seen:
        problems.add(ins.line, f"PARAMETER {name} is set twice (also on line {seen[canonical]}): keep one")
        return
    seen[canonical] = ins.line
    kind: type = SAMPLING_PARAMETERS.get(name, int)
    number = _number(kind, value)
    if number is None:
        what = "an integer" if kind is int else "a number"
        problems.add(ins.line, f"PARAMETER {name} takes {what}, got {value!r}")
        return
    if name in SAMPLING_PARAMETERS:
        parameters[name] = number
        return
    field, alias = ENGINE_PARAMETERS[name]
    if name == "num_gpu" and number == 0:
        # No layer on a GPU: Ollama runs on the CPU; here that is the cpu tier.
        hardware.update({"preferred": "cpu", "fallback": []})
        return
    if name == "num_gpu" and number < 0:
        number = -1  # Ollama: negative = as many layers as fit; the spec: -1 = all
    elif name == "num_gpu":
        # Ollama's meaning, kept so that tuned Modelfiles behave the same; but a small value is
        # often meant as a device count (the seed writes `num_gpu 1`), so say what it does.
        problems.note(
            ins.line,
            f"PARAMETER num_gpu {number} puts {number} layer(s) on the GPU, as in Ollama "
            "(spec.optimization.gpuLayers); for a number of GPUs per replica set spec.hardware.count "
            "instead, and for every layer on the GPU remove the line",
        )
    info = OptimizationSpec.model_fields[field].metadata
    low = next((m.ge for m in info if hasattr(m, "ge")), None)
    high = next((m.le for m in info if hasattr(m, "le")), None)
    if (low is not None and number < low) or (high is not None and number > high):
        problems.add(
            ins.line, f"PARAMETER {name} {value} is out of range: it must be between {low} and {high}"
        )
        return
    optimization[alias] = int(number)


def _adapter(ins: Instruction) -> str:
    return (
        f"ADAPTER {ins.args.strip()} cannot be honoured: the runtime serves no LoRA adapters; merge the "
        "adapter into the weights (llama.cpp's llama-export-lora) and FROM the merged .gguf at an "
        "https:// or hf:// location"
    )


def _file(ins: Instruction) -> str:
    return (
        f"FILE {ins.args.strip()} cannot be honoured: a served model cannot take documents as knowledge; "
        "put them in a retrieval service (RAG) in front of the API, or fine-tune and FROM the result, "
        "then remove the FILE lines"
    )


def _requires(ins: Instruction) -> str:
    return (
        f"REQUIRES {ins.args.strip()} cannot be honoured: it names an Ollama version, and the runtime is "
        "versioned with the operator; remove the line"
    )


def _message(ins: Instruction) -> str:
    role = ins.args.strip().partition(" ")[0] or "?"
    return (
        f"MESSAGE {role} cannot be honoured: an SLMDeployment has no stored conversation; send "
        "example messages with each request (or fold them into SYSTEM)"
    )


_HANDLERS: dict[str, Callable[[Instruction], str]] = {
    "ADAPTER": _adapter,
    "FILE": _file,
    "REQUIRES": _requires,
    "MESSAGE": _message,
}


# ---------------------------------------------------------------------------------------------
# Back to a Modelfile (slm show --modelfile)


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def render(spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None, origin: str = "") -> str:
    """A Modelfile for a spec (camelCase, as on the wire); `slm create -f` reads it back to the same."""
    lines: list[str] = []
    if origin:
        lines.append(f"# Modelfile generated by `slm show --modelfile` from {origin}")
    model = spec.get("model") or {}
    lines.append(f"FROM {model.get('name') or model.get('source', '')}")
    optimization = spec.get("optimization") or {}
    hardware = spec.get("hardware") or {}
    defaults = OptimizationSpec()
    for name, (field, alias) in ENGINE_PARAMETERS.items():
        if name == "context_length":
            continue
        if alias in optimization and optimization[alias] != getattr(defaults, field):
            lines.append(f"PARAMETER {name} {optimization[alias]}")
    if hardware.get("preferred") == "cpu" and hardware.get("fallback") == []:
        lines.append("PARAMETER num_gpu 0")
    parameters = (spec.get("prompt") or {}).get("parameters") or {}
    for name, value in parameters.items():
        if name == "stop":
            for stop in value if isinstance(value, list) else [value]:
                text = str(stop)
                lines.append(
                    f'PARAMETER stop "{text}"'
                    if text != text.strip() or " " in text
                    else f"PARAMETER stop {text}"
                )
        else:
            lines.append(f"PARAMETER {name} {_format_value(value)}")
    prompt = spec.get("prompt") or {}
    for key in ("template", "system"):
        if prompt.get(key):
            lines.append(f'{key.upper()} """{prompt[key]}"""')
    license_text = (annotations or {}).get(LICENSE_ANNOTATION, "")
    if license_text:
        lines.append(f'LICENSE """{license_text}"""')
    return "\n".join(lines) + "\n"
