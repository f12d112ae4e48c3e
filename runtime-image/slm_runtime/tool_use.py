"""A chat request's tools and tool_choice → what the template sees, how output is parsed, any forcing grammar."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from slm_runtime.backends.base import ModelDetails, SamplingOptions
from slm_runtime.errors import ApiError
from slm_runtime.options import check_schema_size
from slm_runtime.tool_calls import Dialect, ToolCall, ToolCallFormat, resolve_dialect
from slm_runtime.tool_grammar import tool_call_grammar


@dataclass(frozen=True)
class ToolPlan:
    tools: list[dict[str, Any]] | None  # given to the chat template
    dialect: Dialect | None  # the output is parsed for calls in this dialect; None: plain text
    options: SamplingOptions  # with the forcing grammar, and special tokens shown when parsing
    parallel: bool  # more than one call may be returned


def _function(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ApiError(
            400, 'each tool must be {"type": "function", "function": {"name": ...}}', param="tools"
        )
    return function


def _forced_names(tool_choice: Any, names: list[str]) -> list[str] | None:
    """The tools the model must call from (None: not forced)."""
    if tool_choice in (None, "auto", "none"):
        return None
    if tool_choice == "required":
        return names
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name not in names:
            raise ApiError(
                400, f"tool_choice names function {name!r}, which is not in tools", param="tool_choice"
            )
        return [str(name)]
    raise ApiError(
        400,
        'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def plan_tools(
    tools: list[dict[str, Any]] | None,
    tool_choice: Any,
    parallel_tool_calls: bool | None,
    *,
    setting: ToolCallFormat,
    details: ModelDetails,
    options: SamplingOptions,
) -> ToolPlan:
    parallel = parallel_tool_calls is not False
    if not tools:
        if tool_choice not in (None, "auto", "none"):  # as OpenAI answers it
            raise ApiError(400, "tool_choice is only allowed when tools are given", param="tool_choice")
        return ToolPlan(None, None, options, parallel)
    functions = [_function(tool) for tool in tools]
    forced = _forced_names(tool_choice, [f["name"] for f in functions])
    if tool_choice == "none":  # the model is not told about tools, so it cannot call one
        return ToolPlan(None, None, options, parallel)
    dialect = resolve_dialect(setting, details.chat_template)
    if dialect is None:
        if forced is not None:
            raise ApiError(
                400, "tool calls are switched off on this server (tool_call_format none)", param="tool_choice"
            )
        return ToolPlan(tools, None, options, parallel)
    options = dataclasses.replace(options, special_tokens=True)  # call markers are often special tokens
    if forced is not None:
        if details.backend != "llama-cpp":
            raise ApiError(400, "forcing a tool call needs a GGUF model (grammars)", param="tool_choice")
        if options.json_mode or options.json_schema is not None:
            raise ApiError(
                400, "a forced tool_choice cannot be combined with a response format", param="tool_choice"
            )
        allowed: list[tuple[str, dict[str, Any] | None]] = []
        for function in functions:
            if function["name"] in forced:
                parameters = function.get("parameters")
                parameters = parameters if isinstance(parameters, dict) else None
                if parameters is not None:  # compiled into the grammar: the same cap as a response format
                    check_schema_size(parameters, "tools")
                allowed.append((function["name"], parameters))
        try:
            # A named function is called once (what a client forcing it expects); "required" may call several.
            grammar = tool_call_grammar(dialect, allowed, parallel=parallel and tool_choice == "required")
        except ValueError as exc:
            raise ApiError(400, str(exc), param="tools") from exc
        options = dataclasses.replace(options, grammar=grammar)
    return ToolPlan(tools, dialect, options, parallel)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def limit_calls(calls: list[ToolCall], plan: ToolPlan) -> list[ToolCall]:
    """parallel_tool_calls false: the first call only."""
    return calls if plan.parallel else calls[:1]
