"""The per-app runtime state (no module globals) and the generation path shared by both APIs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from slm_runtime.backends.base import (
    Backend,
    BackendError,
    ContextLengthExceededError,
    DoneEvent,
    ErrorEvent,
    GenerationJob,
    GenerationStats,
    SamplingOptions,
)
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
    from slm_runtime.backends.llama_cpp_backend import LlamaCppBackend

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

    async def start(self, prompt_tokens: list[int], options: SamplingOptions) -> Ticket:
        """Checks a generation request and takes its slot or queue place, before any response starts."""
        backend = self.require_backend()
        try:
            # Off the event loop: checking compiles the request's JSON-schema grammar, which can be slow.
            await asyncio.to_thread(backend.validate, prompt_tokens, options)
        except ContextLengthExceededError as exc:
            raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc
        except BackendError as exc:
            raise ApiError(400, str(exc)) from exc
        return self.admit()

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


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def runtime_of(request: Request) -> Runtime:
    """The app's Runtime (create_app puts it on app.state), for the routes."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def generate(
    runtime: Runtime, request: Request, ticket: Ticket, prompt_tokens: list[int], options: SamplingOptions
) -> AsyncGenerator[str | GenerationStats, None]:
    """Text pieces, then the final GenerationStats. Stops the backend when the client goes away.

    The ticket was admitted before the response started (so a full queue is a clean 503); it is
    released here whatever happens.
    """
    backend = runtime.require_backend()
    metrics, model = runtime.metrics, runtime.model_name
    disconnect = asyncio.create_task(_wait_disconnect(request))
    job: GenerationJob | None = None
    finished = False
    runtime.enter()
    try:
        waiter = asyncio.ensure_future(ticket.wait())
        await asyncio.wait({waiter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            return
        waiter.result()
        metrics.queue_time.labels(model).observe(ticket.queue_seconds)
        job = GenerationJob(
            prompt_tokens, options, asyncio.get_running_loop(), arrived_at_ns=time.perf_counter_ns()
        )
        try:
            backend.submit(job)
        except ContextLengthExceededError as exc:
            raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc
        except BackendError as exc:
            raise ApiError(400, str(exc)) from exc
        last_token_at = 0.0
        while True:
            getter = asyncio.ensure_future(job.next_event())
            await asyncio.wait({getter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                log.info("client disconnected; generation stopped")
                return
            event = getter.result()
            if isinstance(event, ErrorEvent):
                finished = True
                raise ApiError(500, event.message)
            if isinstance(event, DoneEvent):
                finished = True
                stats = event.stats
                metrics.prompt_tokens.labels(model).inc(stats.prompt_tokens)
                metrics.generation_tokens.labels(model).inc(stats.completion_tokens)
                metrics.prefix_cache_queries.labels(model).inc(stats.prompt_tokens)
                metrics.prefix_cache_hits.labels(model).inc(stats.cached_tokens)
                metrics.e2e_latency.labels(model).observe(time.perf_counter() - ticket.arrived_at)
                metrics.request_success.labels(model, stats.done_reason).inc()
                stats.queued_ns += int(ticket.queue_seconds * 1e9)
                stats.total_ns += int(ticket.queue_seconds * 1e9)
                yield stats
                return
            now = time.perf_counter()
            if last_token_at:
                metrics.inter_token_latency.labels(model).observe(now - last_token_at)
            else:
                metrics.time_to_first_token.labels(model).observe(now - ticket.arrived_at)
            last_token_at = now
            yield event.text
    finally:
        if job is not None and not finished:
            job.cancelled.set()
        disconnect.cancel()
        ticket.release()
        runtime.leave()


async def collect(stream: AsyncIterator[str | GenerationStats]) -> tuple[str, GenerationStats]:
    """A whole (non-streamed) answer."""
    pieces: list[str] = []
    stats: GenerationStats | None = None
    async for item in stream:
        if isinstance(item, GenerationStats):
            stats = item
        else:
            pieces.append(item)
    if stats is None:  # client went away; nobody will read this
        raise ApiError(499, "client disconnected")
    return "".join(pieces), stats


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def chat_messages(
    runtime: Runtime, messages: list[dict[str, Any]], system_override: str | None = None
) -> list[dict[str, Any]]:
    """Messages with the configured system prompt in front unless the request brings its own."""
    system = system_override if system_override is not None else runtime.settings.system_prompt
    if system and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages
