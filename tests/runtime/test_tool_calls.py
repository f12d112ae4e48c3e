"""Pure tool-call pieces: dialect detection, parsing, streaming hold-back, template messages, planning."""

from __future__ import annotations

import json
from typing import Any

import pytest
from llama_cpp.llama_grammar import LlamaGrammar

from slm_runtime.backends.base import ModelDetails, SamplingOptions
from slm_runtime.errors import ApiError
from slm_runtime.tool_calls import (
    DIALECTS,
    Dialect,
    ParsedOutput,
    ToolCall,
    ToolCallStream,
    arguments_object,
    detect_dialect,
    parse_tool_calls,
    resolve_dialect,
    template_messages,
)
from slm_runtime.tool_grammar import gbnf_literal, tool_call_grammar
from slm_runtime.tool_use import plan_tools

pytestmark = pytest.mark.runtime

WEATHER = ToolCall("get_weather", {"city": "Paris", "days": 2})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}<tool_call>", "hermes"),
        ("{{- '<|python_tag|>' + tool_call.name }}", "llama3"),
        ("<|start_header_id|>system<|end_header_id|>{% if tools %}{{ tools }}{% endif %}", "llama3"),
        ("{{ '[TOOL_CALLS][' }}{% for t in tool_calls %}{% endfor %}", "mistral"),
        ("<|system|>{{ tools }}<|tool|><|/tool|><|tool_call|>", "phi4"),
        ("<|im_start|>{{ m.role }}<|im_end|>", None),
        ("", None),
        ("<|start_header_id|>user<|end_header_id|>", None),  # Llama 3 without tool use
    ],
)
def test_detect_dialect(template: str, expected: Dialect | None) -> None:
    assert detect_dialect(template) == expected


def test_resolve_dialect() -> None:
    assert resolve_dialect("auto", "<tool_call>") == "hermes"
    assert resolve_dialect("auto", "[TOOL_CALLS]") == "mistral"
    assert resolve_dialect("auto", "no markers") == "hermes"
    assert resolve_dialect("mistral", "<tool_call>") == "mistral"
    assert resolve_dialect("none", "<tool_call>") is None


@pytest.mark.parametrize(
    ("dialect", "text", "expected"),
    [
        # Hermes / Qwen
        (
            "hermes",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
            ParsedOutput("", [WEATHER], ""),
        ),
        (
            "hermes",
            'Let me look.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
            '</tool_call>\n<tool_call>{"name": "now", "arguments": {}}</tool_call>\nDone.',
            ParsedOutput("Let me look.", [WEATHER, ToolCall("now", {})], "Done."),
        ),
        (  # arguments as a JSON string, no arguments at all, and a missing closing tag at the end
            "hermes",
            '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>'
            '<tool_call>{"name": "b"}</tool_call><tool_call>{"name": "c", "arguments": {}}',
            ParsedOutput("", [ToolCall("a", {"x": 1}), ToolCall("b", {}), ToolCall("c", {})], ""),
        ),
        (  # malformed JSON stays as content; the good call next to it is still a call
            "hermes",
            '<tool_call>{"name": "a", "arguments": {</tool_call> <tool_call>{"name": "b", "arguments": {}}</tool_call>',
            ParsedOutput('<tool_call>{"name": "a", "arguments": {</tool_call>', [ToolCall("b", {})], ""),
        ),
        (
            "hermes",
            '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',
            ParsedOutput('<tool_call>{"name": "a", "arguments": [1]}</tool_call>'),
        ),
        (
            "hermes",
            '<tool_call>{"arguments": {}}</tool_call>',
            ParsedOutput('<tool_call>{"arguments": {}}</tool_call>'),
        ),
        (  # text after the JSON inside the block: not a call
            "hermes",
            '<tool_call>{"name": "a", "arguments": {}} oops</tool_call>',
            ParsedOutput('<tool_call>{"name": "a", "arguments": {}} oops</tool_call>'),
        ),
        ("hermes", "  plain answer\n", ParsedOutput("  plain answer\n")),
        ("hermes", '{"name": "a", "arguments": {}}', ParsedOutput('{"name": "a", "arguments": {}}')),
        # Llama 3.x
        (
            "llama3",
            '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
            ParsedOutput("", [WEATHER], ""),
        ),
        (
            "llama3",
            '  {"name": "a", "parameters": {}}; {"name": "b", "arguments": {"k": "v"}}\n',
            ParsedOutput("", [ToolCall("a", {}), ToolCall("b", {"k": "v"})], ""),
        ),
        (
            "llama3",
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
            ParsedOutput("", [WEATHER], ""),
        ),
        (
            "llama3",
            'Checking.<|python_tag|>{"name": "a", "parameters": {}} then more',
            ParsedOutput("Checking.", [ToolCall("a", {})], "then more"),
        ),
        # a bare JSON answer that is not a call: no parameters key, text after it, or not an object
        ("llama3", '{"name": "Ada", "age": 3}', ParsedOutput('{"name": "Ada", "age": 3}')),
        (
            "llama3",
            '{"name": "a", "parameters": {}} and text',
            ParsedOutput('{"name": "a", "parameters": {}} and text'),
        ),
        ("llama3", "The answer is {1}", ParsedOutput("The answer is {1}")),
        ("llama3", '{"name": "a", "parameters": {', ParsedOutput('{"name": "a", "parameters": {')),
        (
            "llama3",
            '<|python_tag|>{"name": "a", "parameters": "not json"}',
            ParsedOutput('<|python_tag|>{"name": "a", "parameters": "not json"}'),
        ),
        # Mistral
        (
            "mistral",
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]',
            ParsedOutput("", [WEATHER], ""),
        ),
        (
            "mistral",
            'Sure [TOOL_CALLS] [{"name": "a", "arguments": {}, "id": "abc123def"}, '
            '{"name": "b", "arguments": {"n": 1}}] ok',
            ParsedOutput("Sure", [ToolCall("a", {}), ToolCall("b", {"n": 1})], "ok"),
        ),
        (
            "mistral",
            '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"oops": 1}]',
            ParsedOutput('[TOOL_CALLS][{"name": "a", "arguments": {}}, {"oops": 1}]'),
        ),
        ("mistral", "[TOOL_CALLS][]", ParsedOutput("[TOOL_CALLS][]")),
        ("mistral", '[TOOL_CALLS][{"name": "a"', ParsedOutput('[TOOL_CALLS][{"name": "a"')),
        # Phi-4-mini
        (
            "phi4",
            '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]<|/tool_call|>',
            ParsedOutput("", [WEATHER], ""),
        ),
        (
            "phi4",
            'Hm. <|tool_call|>{"name": "a", "parameters": {"q": "x"}}<|/tool_call|>',
            ParsedOutput("Hm.", [ToolCall("a", {"q": "x"})], ""),
        ),
        (
            "phi4",
            '<|tool_call|>[{"type": "function", "function": {"name": "a", "arguments": "{}"}}]',
            ParsedOutput("", [ToolCall("a", {})], ""),
        ),
        (
            "phi4",
            "<|tool_call|>[{name: a}]<|/tool_call|>",
            ParsedOutput("<|tool_call|>[{name: a}]<|/tool_call|>"),
        ),
    ],
)
def test_parse_tool_calls(dialect: Dialect, text: str, expected: ParsedOutput) -> None:
    assert parse_tool_calls(text, dialect) == expected


def test_other_dialects_markers_are_plain_text() -> None:
    text = '[TOOL_CALLS][{"name": "a", "arguments": {}}]'
    for dialect in ("hermes", "llama3", "phi4"):
        assert parse_tool_calls(text, dialect) == ParsedOutput(text)
    assert parse_tool_calls(text, None) == ParsedOutput(text)


def test_deeply_nested_json_is_text_not_a_crash() -> None:
    deep = "<tool_call>" + "[" * 100_000
    assert parse_tool_calls(deep, "hermes") == ParsedOutput(deep)
    nested_string = '<tool_call>{"name": "a", "arguments": "' + "[" * 100_000 + '"}</tool_call>'
    assert parse_tool_calls(nested_string, "hermes") == ParsedOutput(nested_string)
    assert arguments_object("[" * 100_000) == "[" * 100_000


def test_parsed_content() -> None:
    assert ParsedOutput("  raw  ").content == "  raw  "
    assert ParsedOutput("", [WEATHER], "").content == ""
    assert ParsedOutput("a", [WEATHER], "b").content == "a\nb"
    assert ParsedOutput("", [WEATHER], "b").content == "b"


def _stream(dialect: Dialect, pieces: list[str]) -> tuple[list[str], str, list[ToolCall]]:
    stream = ToolCallStream(dialect)
    shown = [stream.feed(piece) for piece in pieces]
    rest, calls = stream.finish()
    return shown, rest, calls


def test_stream_plain_text_passes_through() -> None:
    shown, rest, calls = _stream("hermes", ["Hello", " world", "!"])
    assert shown == ["Hello", " world", "!"]
    assert (rest, calls) == ("", [])


def test_stream_holds_back_a_marker_prefix_and_the_space_before_it() -> None:
    shown, rest, calls = _stream(
        "hermes", ["Let me look.", "\n<tool", '_call>{"name": "a", ', '"arguments": {}}</tool_call>', " bye"]
    )
    assert shown == ["Let me look.", "", "", "", ""]
    assert rest == "bye"
    assert calls == [ToolCall("a", {})]


def test_stream_releases_a_false_alarm() -> None:
    shown, rest, calls = _stream("hermes", ["a <", "b> c ", "<tool", "s"])
    assert shown == ["a", " <b> c", "", " <tools"]
    assert (rest, calls) == ("", [])


def test_stream_malformed_call_comes_back_as_text() -> None:
    shown, rest, calls = _stream("mistral", ["ok ", "[TOOL_CALLS]", "[{bad"])
    assert shown == ["ok", "", ""]
    assert (rest, calls) == ("[TOOL_CALLS][{bad", [])


def test_stream_llama3_bare_json_is_held_to_the_end() -> None:
    shown, rest, calls = _stream("llama3", ["  ", '{"name": "a", ', '"parameters": {"x": 1}}'])
    assert shown == ["", "", ""]
    assert (rest, calls) == ("", [ToolCall("a", {"x": 1})])
    shown, rest, calls = _stream("llama3", ['{"answer"', ": 42}"])
    assert shown == ["", ""]
    assert (rest, calls) == ('{"answer": 42}', [])
    shown, rest, calls = _stream("llama3", ["Hi {", "x}"])
    assert shown == ["Hi {", "x}"]
    assert (rest, calls) == ("", [])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_stream_matches_the_whole_parse_for_every_dialect(dialect: Dialect) -> None:
    calls_text = {
        "hermes": 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
        "llama3": 'Sure.\n<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
        "mistral": 'Sure.\n[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]',
        "phi4": 'Sure.\n<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]<|/tool_call|>',
    }[dialect]
    for size in (1, 2, 3, 7, len(calls_text)):
        pieces = [calls_text[i : i + size] for i in range(0, len(calls_text), size)]
        shown, rest, calls = _stream(dialect, pieces)
        assert "".join(shown) == "Sure."
        assert (rest, calls) == ("", [WEATHER])


def test_arguments_object() -> None:
    assert arguments_object('{"a": 1}') == {"a": 1}
    assert arguments_object({"a": 1}) == {"a": 1}
    assert arguments_object("[1]") == "[1]"
    assert arguments_object("not json") == "not json"


def test_template_messages_parse_arguments_and_name_tool_results() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "P"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "tool", "content": "x", "tool_name": "ollama_named"},
    ]
    out = template_messages(messages)
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"city": "P"}
    assert out[2]["name"] == "get_weather"
    assert out[3]["name"] == "ollama_named"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "P"}'  # input left alone


PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("parallel", [True, False])
def test_tool_call_grammar_parses(dialect: Dialect, parallel: bool) -> None:
    grammar = tool_call_grammar(dialect, [("get_weather", PARAMETERS), ("now", None)], parallel=parallel)
    assert "root ::= " in grammar
    assert gbnf_literal(json.dumps("get_weather")) in grammar
    assert ("tc-call)*" in grammar) is parallel
    LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp's parser accepts it


def test_gbnf_literal_escapes() -> None:
    assert gbnf_literal('a"b\\c\n') == '"a\\"b\\\\c\\n"'


def _details(template: str = "<tool_call>", backend: str = "llama-cpp") -> ModelDetails:
    return ModelDetails(
        format="gguf",
        family="llama",
        parameter_size="1M",
        quantization_level="F16",
        size_bytes=1,
        context_length=512,
        capabilities=("completion",),
        model_info={},
        chat_template=template,
        backend=backend,
        device="cpu",
        execution_provider="",
    )


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}]


def _plan(tools: Any = TOOLS, choice: Any = None, parallel: bool | None = None, **kwargs: Any) -> Any:
    options = kwargs.pop("options", SamplingOptions())
    return plan_tools(
        tools,
        choice,
        parallel,
        setting=kwargs.pop("setting", "auto"),
        details=_details(**kwargs),
        options=options,
    )


def test_plan_auto_and_none() -> None:
    auto = _plan()
    assert (auto.tools, auto.dialect, auto.options.grammar, auto.options.special_tokens) == (
        TOOLS,
        "hermes",
        None,
        True,
    )
    none = _plan(choice="none")
    assert (none.tools, none.dialect, none.options) == (None, None, SamplingOptions())
    off = _plan(setting="none")
    assert (off.tools, off.dialect, off.options) == (TOOLS, None, SamplingOptions())
    no_tools = _plan(tools=None)
    assert (no_tools.tools, no_tools.dialect) == (None, None)


def test_plan_forced_gets_a_grammar() -> None:
    named = _plan(choice={"type": "function", "function": {"name": "get_weather"}}, parallel=False)
    assert named.options.grammar is not None
    assert named.parallel is False
    assert '"\\"get_weather\\""' in named.options.grammar
    required = _plan(choice="required", template="[TOOL_CALLS]")
    assert required.dialect == "mistral"
    assert required.options.grammar is not None
    assert "[TOOL_CALLS]" in required.options.grammar


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": None, "choice": "required"}, "tool_choice"),
        ({"choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"choice": "sometimes"}, "tool_choice"),
        ({"choice": "required", "setting": "none"}, "tool_choice"),
        ({"choice": "required", "backend": "onnxruntime-genai"}, "tool_choice"),
        ({"choice": "required", "options": SamplingOptions(json_mode=True)}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}],
                "choice": "required",
            },
            "tools",
        ),
    ],
)
def test_plan_refusals(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        _plan(**kwargs)
    assert caught.value.status == 400
    assert caught.value.param == param
