"""Log probabilities as each API shapes them, and the request fields that ask for them."""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Sequence
from typing import Any

from slm_runtime.backends.base import PositionLogprobs, SamplingOptions, TokenLogprob
from slm_runtime.backends.logprobs import MAX_TOP_LOGPROBS
from slm_runtime.errors import ApiError

MAX_LEGACY_LOGPROBS = 5  # the legacy completions API's cap


def checked_request(logprobs: bool | None, top_logprobs: int | None, *, enabled_by: str) -> tuple[bool, int]:
    """(report logprobs, alternatives per position) from `logprobs`-style and `top_logprobs` fields.

    Alternatives without the log probabilities switched on are refused (as OpenAI does) rather than
    dropped; `enabled_by` says what switches them on in this API.
    """
    top = top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(
            400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", param="top_logprobs"
        )
    if top and not logprobs:
        raise ApiError(
            400, f"top_logprobs needs {enabled_by}: add it, or leave top_logprobs out", param="top_logprobs"
        )
    return bool(logprobs), top


def checked_legacy_request(logprobs: int | None, echo: bool) -> tuple[bool, int]:
    """The legacy completions `logprobs`: how many alternatives (0 to 5) besides the chosen token."""
    if logprobs is None:
        return False, 0
    if not 0 <= logprobs <= MAX_LEGACY_LOGPROBS:
        raise ApiError(
            400, f"logprobs must be between 0 and {MAX_LEGACY_LOGPROBS}, got {logprobs}", param="logprobs"
        )
    if echo:  # echo with logprobs scores the prompt's tokens too, which generation does not compute
        raise ApiError(
            400,
            "echo: echoing the prompt with logprobs is not supported (the prompt's tokens are not scored); "
            "leave out echo or logprobs",
            param="echo",
        )
    return True, logprobs


def with_logprobs(options: SamplingOptions, logprobs: bool, top: int) -> SamplingOptions:
    return dataclasses.replace(options, logprobs=logprobs, top_logprobs=top) if logprobs else options


def _openai_token(token: TokenLogprob, *, with_bytes: bool = True) -> dict[str, Any]:
    shaped: dict[str, Any] = {"token": token.token, "logprob": token.logprob}
    if with_bytes:
        shaped["bytes"] = list(token.bytes)
    return shaped


def openai_entries(entries: Sequence[PositionLogprobs], *, with_bytes: bool = True) -> list[dict[str, Any]]:
    """Chat completions' `logprobs.content` items, and the Responses API's (whose events carry no bytes)."""
    return [
        {
            **_openai_token(entry.chosen, with_bytes=with_bytes),
            "top_logprobs": [_openai_token(alt, with_bytes=with_bytes) for alt in entry.top],
        }
        for entry in entries
    ]


def chat_logprobs(entries: Sequence[PositionLogprobs]) -> dict[str, Any]:
    """A chat choice's `logprobs` object."""
    return {"content": openai_entries(entries), "refusal": None}


class LegacyLogprobs:
    """The legacy completions `logprobs` object, chunk after chunk of one answer.

    `text_offset` counts characters from the start of the prompt, as OpenAI's does, so each chunk
    continues where the last one ended. `top_logprobs` maps the alternatives' text to their
    log probability and always holds the chosen token too (up to logprobs + 1 entries).
    """

    def __init__(self, prompt: str) -> None:
        self._offset = len(prompt)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def render(self, entries: Sequence[PositionLogprobs]) -> dict[str, Any]:
        offsets: list[int] = []
        tops: list[dict[str, float]] = []
        for entry in entries:
            offsets.append(self._offset)
            self._offset += len(self._decoder.decode(bytes(entry.chosen.bytes)))
            top = {alt.token: alt.logprob for alt in entry.top}
            top.setdefault(entry.chosen.token, entry.chosen.logprob)
            tops.append(top)
        return {
            "tokens": [entry.chosen.token for entry in entries],
            "token_logprobs": [entry.chosen.logprob for entry in entries],
            "top_logprobs": tops,
            "text_offset": offsets,
        }


def _ollama_token(token: TokenLogprob) -> dict[str, Any]:
    shaped: dict[str, Any] = {"token": token.token, "logprob": token.logprob}
    if token.bytes:  # Ollama leaves out empty fields
        shaped["bytes"] = list(token.bytes)
    return shaped


def ollama_logprobs(entries: Sequence[PositionLogprobs]) -> dict[str, Any]:
    """Ollama's `logprobs` field of a response or chunk, absent when it has no entries (as Ollama has it)."""
    if not entries:
        return {}
    shaped = []
    for entry in entries:
        item = _ollama_token(entry.chosen)
        if entry.top:
            item["top_logprobs"] = [_ollama_token(alt) for alt in entry.top]
        shaped.append(item)
    return {"logprobs": shaped}
