"""ASGI middleware: body size limit, Bearer API key, JSON access log (no prompt text unless asked)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slm_runtime.apikey import ApiKey
from slm_runtime.errors import error_response

access_log = logging.getLogger("slm_runtime.access")

# Probes and metrics stay open so kubelet and Prometheus need no key (/api/* are aliases some use).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/health", "/api/metrics"})


class GuardMiddleware:
    """Rejects oversized bodies (413) and missing or wrong API keys (401), and logs each request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: ApiKey,
        max_request_bytes: int,
        log_prompts: bool,
        body_timeout_seconds: float = 30.0,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.log_prompts = log_prompts
        self.body_timeout_seconds = body_timeout_seconds
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status = {"code": 0}
        request_id = uuid.uuid4().hex[:16]

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = message.setdefault("headers", [])
                headers.append((b"x-request-id", request_id.encode()))
                if self.draining():
                    # Clients open their next connection elsewhere instead of reusing this one.
                    headers.append((b"connection", b"close"))
            await send(message)

        body = b""
        try:
            if (
                self.api_key.enabled
                and path not in OPEN_PATHS
                and path != "/"
                and not self._authorized(scope)
            ):
                await error_response(path, 401, "missing or invalid API key")(scope, receive, send_logged)
                return
            declared = _content_length(scope)
            if declared is not None and declared > self.max_request_bytes:
                await self._too_large(path, scope, receive, send_logged)
                return
            chunks: list[bytes] = []
            size = 0
            more = scope["method"] in ("POST", "PUT", "PATCH")
            # One deadline for the whole body: a client trickling bytes must not hold a connection.
            deadline = asyncio.get_running_loop().time() + self.body_timeout_seconds
            while more:
                try:
                    message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
                except TimeoutError:
                    message_text = f"request body not received within {self.body_timeout_seconds:g}s"
                    await error_response(path, 408, message_text)(scope, receive, send_logged)
                    return
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_request_bytes:
                    await self._too_large(path, scope, receive, send_logged)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            replayed = False
            if scope["method"] in ("POST", "PUT", "PATCH"):
                scope = _as_json(scope)

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_logged)
        finally:
            fields: dict[str, Any] = {
                "request_id": request_id,
                "method": scope["method"],
                "path": path,
                "status": status["code"],
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0],
                "request_bytes": len(body),
            }
            if self.log_prompts and body:
                fields["body"] = body.decode("utf-8", "replace")[:4096]
            access_log.info("request", extra={"fields": fields})

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                expected = self.api_key.current()
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)
        return False

    async def _too_large(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body too large: the limit is {self.max_request_bytes} bytes"
        await error_response(path, 413, message)(scope, receive, send)


def _as_json(scope: Scope) -> Scope:
    """Every body here is JSON, whatever the client declared (`curl -d` says form-urlencoded;
    Ollama reads the body as JSON regardless)."""
    headers = [(name, value) for name, value in scope.get("headers", []) if name != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; `extra={"fields": {...}}` is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
