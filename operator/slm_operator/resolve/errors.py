"""The error that stops resolving; `resolve` turns it into a ResolveFailure."""

from __future__ import annotations

from slm_operator.plan import FailureReason


class ResolveError(Exception):
    """Raised where resolving cannot go on; `reason` is the ResolveFailure's condition reason."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.message = message
