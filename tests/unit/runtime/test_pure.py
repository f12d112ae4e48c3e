"""Pure pieces of the runtime: stop-string matching, the admission queue, option mapping, keep_alive
parsing. No model and no llama.cpp: they run with the unit tests (`make test-unit`)."""

from __future__ import annotations

import asyncio

import pytest

from slm_runtime.backends.base import SamplingOptions, StopMatcher
from slm_runtime.errors import ApiError
from slm_runtime.options import sampling_from_ollama, sampling_from_openai
from slm_runtime.routes.ollama import parse_keep_alive
from slm_runtime.scheduler import QueueFullError, Scheduler


def _stream(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["hel", "lo wor", "ld"], ["wor"], ("hello ", True)),
        (["a<", "/s", ">b"], ["</s>"], ("a", True)),
        (["a<", "x"], ["</s>"], ("a<x", False)),  # a held-back prefix that turns out harmless
        (["abc"], [], ("abc", False)),
        (["xxEND"], ["END", "xx"], ("", True)),  # the earliest stop wins
    ],
)
def test_stop_matcher(pieces: list[str], stops: list[str], expected: tuple[str, bool]) -> None:
    assert _stream(StopMatcher(stops), pieces) == expected


async def test_scheduler_slots_queue_and_release() -> None:
    changes: list[tuple[int, int]] = []
    scheduler = Scheduler(parallel=1, max_queue=1, on_change=lambda r, w: changes.append((r, w)))
    first = scheduler.admit()
    await first.wait()
    second = scheduler.admit()
    with pytest.raises(QueueFullError):
        scheduler.admit()
    waiting = asyncio.ensure_future(second.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    first.release()
    await waiting
    assert (scheduler.running, scheduler.waiting) == (1, 0)
    second.release()
    second.release()  # idempotent
    assert (scheduler.running, scheduler.waiting) == (0, 0)
    assert changes[-1] == (0, 0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    scheduler = Scheduler(parallel=1, max_queue=2)
    holder = scheduler.admit()
    queued = scheduler.admit()
    task = asyncio.ensure_future(queued.wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.waiting == 0
    holder.release()
    assert scheduler.running == 0


def test_option_mapping_and_defaults() -> None:
    options = sampling_from_ollama(
        {"temperature": 0, "num_predict": 5, "stop": "x", "num_ctx": 8192}, context_length=64
    )
    assert (options.temperature, options.max_tokens, options.stop) == (0.0, 5, ("x",))
    assert sampling_from_ollama({"seed": -1}, context_length=64).seed is None
    openai = sampling_from_openai(
        {"temperature": 0.1, "top_k": 5}, {"max_tokens": 3, "stop": ["a", "b"]}, context_length=64
    )
    assert (openai.temperature, openai.top_k, openai.max_tokens, openai.stop) == (0.1, 5, 3, ("a", "b"))
    schema = {"type": "object"}
    assert (
        sampling_from_openai(
            {},
            {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}},
            context_length=64,
        ).json_schema
        == schema
    )
    with pytest.raises(ApiError):
        sampling_from_ollama({"top_k": 1.5}, context_length=64)
    with pytest.raises(ApiError):
        sampling_from_ollama({"temperature": True}, context_length=64)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("5m", 300.0), ("-1", -1.0), (0, 0.0), ("1h", 3600.0), ("250ms", 0.25), (30, 30.0)],
)
def test_keep_alive(value: str | int | None, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


def test_bad_keep_alive() -> None:
    with pytest.raises(ApiError):
        parse_keep_alive("soon")


def test_numeric_options_are_bounded_by_the_context() -> None:
    def ollama(options: dict[str, object]) -> SamplingOptions:
        return sampling_from_ollama(options, context_length=1024)

    assert ollama({"repeat_last_n": 2**28}).repeat_last_n == 1024
    assert ollama({"repeat_last_n": -1}).repeat_last_n == 1024  # Ollama: -1 means the whole context
    assert ollama({"repeat_last_n": 0}).repeat_last_n == 0
    assert ollama({"num_predict": 2**40}).max_tokens == 1024
    assert ollama({"num_predict": -2}).max_tokens == -1
    assert ollama({"top_k": 2**40}).top_k == 2**31 - 1
    assert ollama({"top_k": -1}).top_k == 0
    assert ollama({"seed": 2**70 + 5}).seed == 5  # llama.cpp seeds are 32-bit
    bad_options: list[dict[str, object]] = [
        {"repeat_last_n": -2},
        {"temperature": float("inf")},
        {"min_p": float("nan")},
    ]
    for bad in bad_options:
        with pytest.raises(ApiError) as caught:
            ollama(bad)
        assert caught.value.param == next(iter(bad))


def test_stop_lists_are_capped() -> None:
    assert len(sampling_from_ollama({"stop": ["a"] * 16}, context_length=64).stop) == 16
    for stop in (["a"] * 17, ["b" * 257]):
        with pytest.raises(ApiError) as caught:
            sampling_from_openai({}, {"stop": stop}, context_length=64)
        assert caught.value.param == "stop"


def test_an_ollama_tool_result_keeps_the_id_of_the_call_it_answers() -> None:
    """LiteLLM's ollama_chat sends `tool_call_id`: the result is then named after its call."""
    from slm_runtime.routes.ollama import ChatRequest
    from slm_runtime.tool_calls import template_messages

    body = ChatRequest.model_validate(
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {}}}],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ]
        }
    )
    messages = template_messages([m.model_dump(exclude_none=True) for m in body.messages])
    assert messages[1]["name"] == "get_weather"
