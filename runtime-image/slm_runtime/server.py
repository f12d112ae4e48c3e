"""The HTTP server's own guards: a deadline for a request's headers and a cap on open connections.

uvicorn closes idle keep-alive connections but never one that has not finished sending its first
request: a client that connects and sends nothing, or sends its headers a byte at a time, would
hold a connection (and a file descriptor) forever. The body has its deadline in the middleware,
where it can answer in the API's own error shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from slm_runtime.settings import ServeSettings

# Room above the requests that may run or wait, for probes, metrics and clients between requests.
CONNECTION_HEADROOM = 64


def connection_limit(settings: ServeSettings) -> int:
    """Open connections at most (uvicorn answers 503 past it)."""
    if settings.max_connections:
        return settings.max_connections
    return settings.parallel_requests + settings.max_queue + CONNECTION_HEADROOM


def header_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """An h11 protocol that closes a connection whose next request's headers are not all in within
    ``seconds`` of the connection opening, or of the previous response on a kept-alive connection."""

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _awaited_after: object = None  # the request cycle before the one whose headers are due

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self._header_timer is not None and self.cycle is not self._awaited_after:
                # The headers are in: from here the body deadline and keep-alive apply.
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._awaited_after = self.cycle
            self._header_timer = self.loop.call_later(seconds, self._headers_overdue)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_overdue(self) -> None:
            self._header_timer = None
            if self.cycle is self._awaited_after and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def server_config(app: Any, settings: ServeSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of `slm_runtime serve` (and of the tests' servers)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.drain_timeout_seconds) or None,
        "log_level": settings.log_level,
        "http": header_deadline_protocol(settings.header_timeout_seconds),
        "limit_concurrency": connection_limit(settings),
        **overrides,
    }
    return uvicorn.Config(app, **options)
