"""Tool-call syntax of chat models: which dialect a template speaks, and calls parsed out of the output.

Pure: no model, no I/O. Dialects:
- hermes (Qwen, Hermes, many small models): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, repeated.
- llama3: `<|python_tag|>` then JSON objects (`;`-separated), or the whole output one bare JSON object
  `{"name": ..., "parameters": {...}}`.
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
- phi4 (Phi-4-mini): `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`.
A call whose JSON does not parse stays in the content as text: a model's malformed output is its answer.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Dialect = Literal["hermes", "llama3", "mistral", "phi4"]
DIALECTS: tuple[Dialect, ...] = get_args(Dialect)
ToolCallFormat = Literal["auto", "hermes", "llama3", "mistral", "phi4", "none"]

# What opens a call in each dialect (llama3 also has the bare JSON object, found separately).
_OPEN: dict[Dialect, str] = {
    "hermes": "<tool_call>",
    "llama3": "<|python_tag|>",
    "mistral": "[TOOL_CALLS]",
    "phi4": "<|tool_call|>",
}
_CLOSE: dict[Dialect, str | None] = {
    "hermes": "</tool_call>",
    "llama3": None,
    "mistral": None,
    "phi4": "<|/tool_call|>",
}
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedOutput:
    """Output split around its calls.

    Without calls, content_before is the whole text unchanged. With calls, content_before is the text
    before the first call and content_after the rest outside calls (joined), both stripped.
    """

    content_before: str
    calls: list[ToolCall] = field(default_factory=list)
    content_after: str = ""

    @property
    def content(self) -> str:
        """The text outside the calls, as an API's message content."""
        if not self.calls:
            return self.content_before
        return "\n".join(part for part in (self.content_before, self.content_after) if part)


def detect_dialect(chat_template: str) -> Dialect | None:
    """The dialect a chat template teaches its model, from the markers it contains; None if none."""
    if (
        "<|tool_call|>" in chat_template
    ):  # before hermes: Phi-4's marker is not `<tool_call>`, but be explicit
        return "phi4"
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    if "<|python_tag|>" in chat_template or (
        "<|start_header_id|>" in chat_template and "tools" in chat_template
    ):
        return "llama3"
    return None


def resolve_dialect(setting: ToolCallFormat, chat_template: str) -> Dialect | None:
    """The dialect to parse: the forced one, else detected, else hermes (the most common among small
    models, and harmless on output that holds no markers); None when tool calls are switched off."""
    if setting == "none":
        return None
    if setting != "auto":
        return setting
    return detect_dialect(chat_template) or "hermes"


def _to_call(item: Any, *, bare: bool = False) -> ToolCall | None:
    """One call object → ToolCall; None when it is not one. Bare JSON needs its arguments key, so a
    plain JSON answer such as {"name": "Ada"} is not taken for a call."""
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):  # {"type": "function", "function": {...}}, OpenAI's shape
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None
    key = "arguments" if "arguments" in item else "parameters" if "parameters" in item else None
    if key is None:
        return None if bare else ToolCall(name, {})
    arguments = item[key]
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name, arguments)


def _decode_calls(text: str, pos: int, *, sequence: bool, bare: bool = False) -> tuple[list[ToolCall], int]:
    """Calls from one JSON value at pos (an object or a list of them), or several `;`-separated values
    when `sequence`; ([], pos) when anything there is not a call."""
    calls: list[ToolCall] = []
    while True:
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # \s* always matches
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser goes
            return [], pos
        items = value if isinstance(value, list) else [value]
        parsed = [_to_call(item, bare=bare) for item in items]
        if not items or any(call is None for call in parsed):
            return [], pos
        calls.extend(call for call in parsed if call is not None)
        pos = end
        after = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if not sequence or not text.startswith(";", after):
            return calls, pos
        pos = after + 1


def _split(text: str, spans: list[tuple[int, int, list[ToolCall]]]) -> ParsedOutput:
    if not spans:
        return ParsedOutput(text)
    before = text[: spans[0][0]].strip()
    rest = [text[end:start] for (_, end, _), (start, _, _) in itertools.pairwise(spans)]
    rest.append(text[spans[-1][1] :])
    after = "\n".join(part.strip() for part in rest if part.strip())
    return ParsedOutput(before, [call for _, _, calls in spans for call in calls], after)


def _marked(text: str, dialect: Dialect) -> list[tuple[int, int, list[ToolCall]]]:
    """Spans (start, end, calls) of marker-opened calls; a marker whose JSON is bad is skipped."""
    opener, closer = _OPEN[dialect], _CLOSE[dialect]
    spans: list[tuple[int, int, list[ToolCall]]] = []
    pos = 0
    while (start := text.find(opener, pos)) >= 0:
        pos = start + len(opener)
        calls, end = _decode_calls(text, pos, sequence=dialect == "llama3")
        if not calls:
            continue
        if closer is not None:
            after = _SPACE.match(text, end).end()  # type: ignore[union-attr]
            if text.startswith(closer, after):
                end = after + len(closer)
            elif text[after:].strip():  # neither closed nor the end of the output: not a call
                continue
            else:  # the model stopped before its closing tag; the call itself is whole
                end = len(text)
        spans.append((start, end, calls))
        pos = end
    return spans


def parse_tool_calls(text: str, dialect: Dialect | None) -> ParsedOutput:
    """A complete model output split into (content before, calls, content after)."""
    if dialect is None:
        return ParsedOutput(text)
    spans = _marked(text, dialect)
    if not spans and dialect == "llama3":
        start = len(text) - len(text.lstrip())
        if text.startswith("{", start):
            calls, end = _decode_calls(text, start, sequence=True, bare=True)
            if calls and not text[end:].strip():
                spans = [(start, end, calls)]
    return _split(text, spans)


class ToolCallStream:
    """Streams content while generating with tools, holding back what may be the start of a call.

    `feed` returns the text safe to show now; once a call marker (or, for llama3, an output opening
    with `{`) is seen, everything from there is kept until `finish`, which parses it.
    """

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._marker = _OPEN[dialect]
        self._pending = ""
        self._capturing = False
        self._emitted = False

    def _held(self, text: str) -> int:
        """Length of the tail that may begin a marker: a marker prefix with the whitespace before it."""
        hold = 0
        for length in range(min(len(self._marker) - 1, len(text)), 0, -1):
            if text.endswith(self._marker[:length]):
                hold = length
                break
        cut = len(text) - hold
        return len(text) - len(text[:cut].rstrip())

    def feed(self, text: str) -> str:
        if self._capturing:
            self._pending += text
            return ""
        pending = self._pending + text
        if self._dialect == "llama3" and not self._emitted:
            stripped = pending.lstrip()
            if not stripped or stripped.startswith("{"):
                self._pending, self._capturing = pending, bool(stripped)
                return ""
        index = pending.find(self._marker)
        if index >= 0:
            out = pending[:index].rstrip()
            self._pending, self._capturing = pending[index:], True
        else:
            cut = len(pending) - self._held(pending)
            out, self._pending = pending[:cut], pending[cut:]
        self._emitted = self._emitted or bool(out)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The content still to show, and the calls (empty when the kept text held none)."""
        pending, self._pending = self._pending, ""
        if not self._capturing:
            return pending, []
        parsed = parse_tool_calls(pending, self._dialect)
        if not parsed.calls:
            return pending, []
        return parsed.content, parsed.calls


def arguments_object(arguments: Any) -> Any:
    """A request's call arguments as templates want them: an object. The OpenAI client sends a JSON
    string; anything that is not a JSON object stays as sent."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages ready for a chat template: call arguments as objects, and each tool result named after
    the call it answers (several templates print the tool's name, which OpenAI's messages omit)."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            fixed = []
            for call in calls:
                call = dict(call) if isinstance(call, dict) else call
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    function = dict(function)
                    function["arguments"] = arguments_object(function.get("arguments", {}))
                    call["function"] = function
                    if isinstance(call.get("id"), str) and isinstance(function.get("name"), str):
                        names[call["id"]] = function["name"]
                fixed.append(call)
            message["tool_calls"] = fixed
        if message.get("role") == "tool" and not message.get("name"):
            name = message.get("tool_name") or names.get(str(message.get("tool_call_id")))
            if name:
                message["name"] = name
        out.append(message)
    return out
