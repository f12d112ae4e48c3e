"""JSON-schema and JSON-mode grammars for llama.cpp: compiled once per schema, rejected quietly.

Converting a schema to GBNF and parsing it costs time per request, so results (good or bad) are kept
in a small LRU keyed by the schema. llama.cpp's parser prints a rejected grammar whole to fd 2 (a
large schema wrote hundreds of MiB of log), so the first parse of each grammar runs with fd 2
captured and only one short line is logged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from slm_runtime.backends.base import BackendError, SamplingOptions

log = logging.getLogger(__name__)

CACHE_SIZE = 32
_GBNF = "gbnf:"  # cache keys of ready GBNF grammars
_LOGGED_CHARS = 200  # of llama.cpp's parse error, enough to say what is wrong
# fd 2 is process-wide: one capture at a time, or two threads would restore each other's copy.
_fd2_lock = threading.Lock()


@dataclass(frozen=True)
class Grammar:
    """GBNF that llama.cpp has parsed once already."""

    text: str
    root: str


@contextmanager
def _captured_fd2() -> Iterator[list[str]]:
    """Sends fd 2 to a temporary file for the block; yields a list that then holds what was written.

    Anything another thread writes to stderr meanwhile is captured too; the block is one grammar parse.
    """
    captured: list[str] = []
    with _fd2_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read(64 * 1024).decode("utf-8", "replace"))


def _first_line(text: str) -> str:
    line = next((line for line in text.splitlines() if line.strip()), "")
    return line[:_LOGGED_CHARS]


class GrammarCache:
    """Grammars by schema, least recently used dropped first; thread-safe."""

    def __init__(self, vocab: Any, size: int = CACHE_SIZE) -> None:
        self._vocab = vocab
        self._size = size
        self._entries: OrderedDict[str, Grammar | str] = OrderedDict()  # a str is the rejection
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, options: SamplingOptions) -> Grammar | None:
        """The request's grammar, None without one; raises BackendError for a schema llama.cpp refuses."""
        if options.grammar is not None:
            key = _GBNF + options.grammar  # a schema's key starts with "{": no clash
        elif options.json_schema is not None:
            key = json.dumps(options.json_schema, sort_keys=True, separators=(",", ":"))
        elif options.json_mode:
            key = ""
        else:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            entry = self._compile(key)  # unlocked: a slow compile must not hold up cached schemas
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        if isinstance(entry, str):
            raise BackendError(entry)
        return entry

    def sampler(self, grammar: Grammar) -> Any:
        """A new grammar sampler (one per sequence: it tracks the sequence's parse state); caller owns it."""
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._vocab, grammar.text.encode(), grammar.root.encode()
        )
        if not sampler:
            raise BackendError("the JSON schema gives a grammar llama.cpp cannot parse")
        return sampler

    def _compile(self, key: str) -> Grammar | str:
        if key.startswith(_GBNF):
            return self._parse(Grammar(key[len(_GBNF) :], "root"), "the tool-call grammar")
        try:
            if key:
                converted = LlamaGrammar.from_json_schema(key, verbose=False)
            else:
                converted = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        except Exception as exc:  # the converter asserts on what it cannot express
            return f"cannot build a grammar from the JSON schema: {str(exc)[:_LOGGED_CHARS]}"
        return self._parse(Grammar(converted._grammar, converted._root), "the JSON schema")

    def _parse(self, grammar: Grammar, what: str) -> Grammar | str:
        """The grammar if llama.cpp parses it, else the rejection to report (its dump kept out of the log)."""
        with _captured_fd2() as captured:
            sampler = llama_cpp.llama_sampler_init_grammar(
                self._vocab, grammar.text.encode(), grammar.root.encode()
            )
        if not sampler:
            log.warning("llama.cpp rejected %s: %s", what, _first_line(captured[0]))
            return f"{what} gives a grammar llama.cpp cannot parse"
        llama_cpp.llama_sampler_free(sampler)
        if captured[0]:  # no dump on success: pass on what other threads wrote meanwhile
            sys.stderr.write(captured[0])
        return grammar
