"""Choosing each sequence's next token: plain greedy for all of them at once, llama.cpp's chain otherwise.

Plain greedy (temperature 0, no grammar, no penalties) is an argmax over the logits row, so one
numpy argmax over the whole step's logits picks every such sequence's token in a single call.
Anything with state or randomness (grammars, penalties, seeds) runs llama.cpp's sampler chain
for that sequence, exactly as before, so seeded outputs do not change.
"""

from __future__ import annotations

from typing import Any

import llama_cpp
import numpy as np

from slm_runtime.backends.base import SamplingOptions
from slm_runtime.backends.grammars import GrammarCache
from slm_runtime.backends.llama_cpp.native import internals


class Sampler:
    """One sequence's way of picking tokens: `chain` is None for plain greedy."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain

    @property
    def greedy(self) -> bool:
        return self.chain is None

    def sample(self, ctx: Any, batch_index: int) -> int:
        """The chain's token for the logits at `batch_index` (the chain also accepts it)."""
        return int(llama_cpp.llama_sampler_sample(self.chain.sampler, ctx.ctx, batch_index))

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()
            self.chain = None


def plain_greedy(options: SamplingOptions, has_grammar: bool) -> bool:
    return (
        options.temperature <= 0
        and not has_grammar
        and options.repeat_penalty == 1.0
        and options.frequency_penalty == 0.0
        and options.presence_penalty == 0.0
    )


def build_sampler(
    options: SamplingOptions, grammars: GrammarCache, *, n_vocab: int, context_length: int
) -> Sampler:
    grammar = grammars.get(options)  # compiled (and cached) when the request was checked
    if plain_greedy(options, grammar is not None):
        return Sampler(None)
    chain = internals.LlamaSampler()
    if grammar is not None:  # the chain owns the grammar sampler from here on
        llama_cpp.llama_sampler_chain_add(chain.sampler, grammars.sampler(grammar))
    if options.repeat_penalty != 1.0 or options.frequency_penalty != 0.0 or options.presence_penalty != 0.0:
        chain.add_penalties(
            n_vocab,
            # A ring buffer of this many tokens; the request edge clamps it already, this guards other callers.
            max(0, min(options.repeat_last_n, context_length)),
            options.repeat_penalty,
            options.frequency_penalty,
            options.presence_penalty,
        )
    if options.temperature <= 0:
        chain.add_greedy()
        return Sampler(chain)
    if options.top_k > 0:
        chain.add_top_k(options.top_k)
    if options.typical_p < 1.0:
        chain.add_typical(options.typical_p, 1)
    if options.top_p < 1.0:
        chain.add_top_p(options.top_p, 1)
    if options.min_p > 0.0:
        chain.add_min_p(options.min_p, 1)
    chain.add_temp(options.temperature)
    seed = options.seed if options.seed is not None and options.seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED
    chain.add_dist(seed)
    return Sampler(chain)


def greedy_tokens(logits: np.ndarray) -> list[int]:
    """Each row's most likely token; ties go to the lowest id, as llama.cpp's greedy sampler picks."""
    if logits.shape[0] == 0:
        return []
    picked: list[int] = np.argmax(logits, axis=1).tolist()
    return picked
