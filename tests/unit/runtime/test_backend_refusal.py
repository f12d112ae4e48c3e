"""The one mapping of a backend's refusal to the client's 400: which request field it names."""

from __future__ import annotations

from slm_runtime.backends.base import BackendError, ContextLengthExceededError
from slm_runtime.errors import backend_refusal


def test_a_prompt_too_long_names_the_prompt_field_and_the_code() -> None:
    error = backend_refusal(ContextLengthExceededError("prompt is 9 tokens"), "input", of_prompt=False)
    assert (error.status, error.param, error.code) == (400, "input", "context_length_exceeded")
    assert error.message == "prompt is 9 tokens"


def test_a_refused_template_or_tokenization_names_the_prompt_field() -> None:
    error = backend_refusal(BackendError("chat template failed: x"), "messages", of_prompt=True)
    assert (error.status, error.param, error.code) == (400, "messages", None)


def test_a_refused_check_names_only_what_the_backend_names() -> None:
    grammar = backend_refusal(BackendError("schema too deep"), "messages", of_prompt=False)
    assert grammar.param is None  # a schema's grammar is not the prompt's fault
    named = backend_refusal(BackendError("no tokenizer", param="logprobs"), "messages", of_prompt=False)
    assert named.param == "logprobs"
