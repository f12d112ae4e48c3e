"""The one exception the CLI prints: a single line on stderr, exit code 1."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure; the message says what went wrong and what to do."""

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Further lines (one per problem), e.g. every refused Modelfile line.
        self.details = list(details or [])
