"""GBNF grammars that force a model to call a tool, in its dialect's exact syntax (tool_choice).

Each allowed tool becomes `{"name": "<its name>", "<arguments key>": <its parameters>}`, the parameters
through llama.cpp's JSON-schema converter (what it cannot express it rejects; a tool without
parameters takes any object). The dialect's markers wrap the call, once or repeated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from slm_runtime.tool_calls import Dialect

# How each dialect lays out its calls: text before, between and after them (GBNF expressions).
_LAYOUT: dict[Dialect, tuple[str, str, str]] = {
    "hermes": (r'"<tool_call>\n"', r'"\n</tool_call>\n<tool_call>\n"', r'"\n</tool_call>"'),
    "llama3": ("", r'"; "', ""),
    "mistral": (r'"[TOOL_CALLS]["', r'", "', r'"]"'),
    "phi4": (r'"<|tool_call|>["', r'", "', r'"]<|/tool_call|>"'),
}


def gbnf_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def tool_call_grammar(
    dialect: Dialect, tools: Sequence[tuple[str, dict[str, Any] | None]], *, parallel: bool
) -> str:
    """GBNF (root rule `root`) for one call, or one or more when `parallel`, to one of `tools`
    ((name, parameters schema) pairs). Raises ValueError for parameters the converter cannot express."""
    if not tools:
        raise ValueError("no tools to call")
    # Imported here: the ONNX image ships no llama_cpp, and only GGUF models take grammars.
    from llama_cpp import llama_grammar

    schema_converter: Any = llama_grammar.SchemaConverter  # untyped
    converter: Any = schema_converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    key = gbnf_literal(json.dumps("parameters" if dialect == "llama3" else "arguments"))
    rules: list[str] = []
    alternatives: list[str] = []
    for index, (name, parameters) in enumerate(tools):
        # A copy: resolving references rewrites the schema in place.
        schema = json.loads(json.dumps(parameters)) if parameters else {"type": "object"}
        try:
            resolved = converter.resolve_refs(schema, f"tool{index}")
            arguments = converter.visit(resolved, f"tool{index}-arguments")
        except Exception as exc:  # the converter asserts and raises on what it does not support
            raise ValueError(f"tool {name!r}: cannot constrain its parameters ({exc})") from exc
        call = f"tc-call{index}"
        rules.append(
            f'{call} ::= "{{" space "\\"name\\"" space ":" space {gbnf_literal(json.dumps(name))} space "," '
            f'space {key} space ":" space {arguments} "}}"'
        )
        alternatives.append(call)
    opening, between, closing = _LAYOUT[dialect]
    repeat = f"({between} tc-call)*" if parallel else ""
    root = " ".join(part for part in (opening, "tc-call", repeat, closing) if part)
    rules.append(f"tc-call ::= {' | '.join(alternatives)}")
    rules.append(f"root ::= {root}")
    return str(converter.format_grammar()) + "\n" + "\n".join(rules) + "\n"
