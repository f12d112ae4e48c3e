"""The per-app runtime state (no module globals): the model, admission, the drain; and the closing stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from slm_runtime.backends.base import Backend, ModelDetails
from slm_runtime.errors import ApiError
from slm_runtime.metrics import RuntimeMetrics
from slm_runtime.scheduler import QueueFullError, Scheduler, Ticket
from slm_runtime.settings import ServeSettings

log = logging.getLogger(__name__)

BackendFactory = Callable[[ServeSettings], Backend]


def load_backend(settings: ServeSettings) -> Backend:
    """The backend for the model's format (imports stay lazy: an image may ship only one)."""
    if settings.format == "onnx":
        from slm_runtime.backends.onnx_backend import OnnxBackend

        return OnnxBackend(settings)
    from slm_runtime.backends.llama_cpp import LlamaCppBackend

    return LlamaCppBackend(settings)


@dataclass
class Runtime:
    settings: ServeSettings
    metrics: RuntimeMetrics
    scheduler: Scheduler
    backend: Backend | None = None
    load_error: str | None = None
    load_seconds: float = 0.0
    loaded_at: datetime | None = None
    draining: bool = False
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def require_backend(self) -> Backend:
        if self.backend is None:
            raise ApiError(503, self.load_error or "model is loading, try again shortly")
        return self.backend

    def check_model(self, name: str | None, *, required: bool = True) -> None:
        """Requests name the model; this replica serves exactly one."""
        if not name:
            if required:
                raise ApiError(400, "model is required", param="model")
            return
        served = self.model_name
        aliases = {served, served.removesuffix(":latest")}
        if name not in aliases and f"{name}:latest" not in aliases:
            raise ApiError(404, f"model '{name}' not found", param="model", code="model_not_found")

    @property
    def details(self) -> ModelDetails:
        """What the loaded model is (503 while it loads)."""
        return self.require_backend().details

    def admit(self) -> Ticket:
        self.require_backend()
        # Draining still admits: requests routed here before the Service dropped this pod must
        # not fail (the server stops accepting connections after the drain delay).
        try:
            return self.scheduler.admit()
        except QueueFullError as exc:
            self.metrics.rejected.labels(self.model_name).inc()
            raise ApiError(503, str(exc)) from exc

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A slot for work outside the generation stream (embeddings), under the same queue limit and drain."""
        ticket = self.admit()
        self.enter()
        try:
            await ticket.wait()
            yield
        finally:
            ticket.release()
            self.leave()

    def enter(self) -> None:
        """Counts a request in flight; the drain on shutdown waits until none is."""
        self.in_flight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator however the response ends, so generation stops at once on disconnect.

    `ticket` is released here too: if the client is gone before the body starts, the generator
    never runs and its own cleanup never would.
    """

    def __init__(
        self, content: AsyncIterator[bytes], *, media_type: str, ticket: Ticket | None = None
    ) -> None:
        super().__init__(content, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self._ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
            if self._ticket is not None:
                self._ticket.release()


def runtime_of(request: Request) -> Runtime:
    """The app's Runtime (create_app puts it on app.state), for the routes."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
