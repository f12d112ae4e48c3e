"""Log probabilities from a position's logits, and holding them until their token's text is released.

Both backends report the model's own distribution: the log-softmax of the raw logits at the
position, before the grammar, penalties, temperature or truncation (top-k/top-p/min-p) of the
sampler, as OpenAI reports it. So the numbers do not depend on the sampling settings, and at
temperature 0 (no penalties) the chosen token is the most likely one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from slm_runtime.backends.base import PositionLogprobs, TokenLogprob

MAX_TOP_LOGPROBS = 20  # OpenAI's and Ollama's cap on alternatives per position

TokenBytes = Callable[[int], bytes]


def token_text(piece: bytes) -> str:
    """A token's text; a piece that is not whole UTF-8 (part of a character) reads as its bytes, as OpenAI writes it."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Natural-log probabilities of one position's logits (float64: float32 sums lose the small ones)."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = values - values.max()
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum())
    return result


def top_token_ids(logprobs: np.ndarray, count: int) -> list[int]:
    """The `count` most likely token ids, most likely first; ties go to the lower id (as greedy picks)."""
    count = min(count, logprobs.size)
    if count <= 0:
        return []
    cut = np.partition(logprobs, logprobs.size - count)[logprobs.size - count]
    candidates = np.flatnonzero(logprobs >= cut)  # all ties at the cut, so the lowest ids win them
    order = np.lexsort((candidates, -logprobs[candidates]))[:count]
    return [int(i) for i in candidates[order]]


def position_logprobs(logprobs: np.ndarray, chosen: int, top: int, piece: TokenBytes) -> PositionLogprobs:
    """The chosen token's entry and its `top` alternatives, from the position's log-softmax."""

    def entry(token: int) -> TokenLogprob:
        raw = piece(token)
        return TokenLogprob(token_text(raw), float(logprobs[token]), tuple(raw))

    return PositionLogprobs(entry(chosen), tuple(entry(t) for t in top_token_ids(logprobs, top)))


class LogprobQueue:
    """Entries waiting for their token's text, which a stop matcher or UTF-8 decoder may hold back.

    `add` each generated token's entry with the number of characters its text added; `release`
    with the characters just emitted gives the entries whose text is now wholly out. A token
    that added no characters (the first bytes of a multi-byte character) goes with the next one.
    """

    def __init__(self) -> None:
        self._waiting: deque[tuple[int, int, PositionLogprobs]] = deque()  # (start, end, entry)
        self._fed = 0  # characters added so far
        self._emitted = 0  # characters released so far

    def add(self, entry: PositionLogprobs, chars: int) -> None:
        start = self._fed
        self._fed += chars
        self._waiting.append((start, start + max(chars, 1), entry))

    def release(self, chars: int, *, stopped: bool = False) -> list[PositionLogprobs]:
        """Entries whose text is out after `chars` more characters. After a stop string (`stopped`)
        nothing more comes: entries whose text began before the cut go, the rest are dropped."""
        self._emitted += chars
        out: list[PositionLogprobs] = []
        while self._waiting and self._waiting[0][1] <= self._emitted:
            out.append(self._waiting.popleft()[2])
        if stopped:
            out += [entry for start, _, entry in self._waiting if start < self._emitted]
            self._waiting.clear()
        return out

    def flush(self) -> list[PositionLogprobs]:
        """Everything still waiting (the generation ended and its held-back text is out)."""
        out = [entry for _, _, entry in self._waiting]
        self._waiting.clear()
        return out
