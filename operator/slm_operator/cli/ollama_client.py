"""The Ollama API as the CLI's commands call it (`run`, `bench`): `POST /api/chat`, NDJSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from slm_operator.cli.errors import CliError

Chunk = dict[str, Any]
Message = dict[str, str]


class OllamaChat:
    """`POST /api/chat` with NDJSON streaming; a callable `chat(messages, options)`."""

    def __init__(
        self, base_url: str, model: str, key: str | None = None, client: httpx.Client | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(
            base_url=base_url, headers=headers, timeout=httpx.Timeout(10.0, read=600.0)
        )
        self.model = model

    def served_model(self) -> str:
        """The name the runtime serves (it checks the request's model against it)."""
        try:
            response = self.client.get("/api/tags")
            if response.status_code == 200:
                names = [str(m.get("name") or "") for m in response.json().get("models") or []]
                if names and names[0]:
                    return names[0]
            else:
                _raise_for(response.status_code, response.text)
        except (httpx.HTTPError, ValueError) as error:
            raise CliError(f"cannot reach the model's API at {self.client.base_url}: {error}") from error
        return self.model

    def __call__(self, messages: list[Message], options: dict[str, Any]) -> Iterator[Chunk]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        if options:
            body["options"] = options
        try:
            with self.client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code != 200:
                    _raise_for(response.status_code, response.read().decode("utf-8", "replace"))
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    chunk = json.loads(line)
                    if chunk.get("error"):
                        raise CliError(f"the model answered an error: {chunk['error']}")
                    yield chunk
        except httpx.HTTPError as error:
            raise CliError(f"cannot reach the model's API at {self.client.base_url}: {error}") from error

    def close(self) -> None:
        self.client.close()


def _raise_for(status: int, text: str) -> None:
    try:
        message = str(json.loads(text).get("error") or text)
    except (ValueError, AttributeError):
        message = text.strip()
    if status == 401:
        raise CliError(
            f"the model's API refused the key (HTTP 401: {message}): check --api-key or the Secret"
        )
    raise CliError(f"the model's API answered HTTP {status}: {message}")
