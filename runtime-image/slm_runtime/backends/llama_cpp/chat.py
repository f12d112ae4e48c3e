"""Chat rendering with the model's own Jinja template (or ChatML when it carries none), sandboxed."""

from __future__ import annotations

from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from slm_runtime.backends.base import BackendError

# Used when the model carries no chat template (ChatML, which most small instruct models know).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise_template_error(message: str) -> None:
    raise BackendError(f"chat template: {message}")


class ChatTemplate:
    """`source` is the template text ("" for the fallback); bos/eos are the model's special tokens' text."""

    def __init__(self, source: str, *, bos_text: str, eos_text: str) -> None:
        self.source = source
        self._bos_text = bos_text
        self._eos_text = eos_text
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise_template_error
        self._template = environment.from_string(source or FALLBACK_TEMPLATE)

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        try:
            rendered: str = self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self._bos_text,
                eos_token=self._eos_text,
            )
        except BackendError:
            raise
        except Exception as exc:  # a broken template is the model's or the operator's fault, say which
            raise BackendError(f"chat template failed: {exc}") from exc
        return rendered
