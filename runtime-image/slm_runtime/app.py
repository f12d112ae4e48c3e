"""The app factory: routes, middleware, and a lifespan that loads the model in the background.

Serving starts at once so /healthz answers during a long load; /readyz turns 200 when the model is in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_runtime import __version__
from slm_runtime.apikey import ApiKey
from slm_runtime.errors import ApiError, handle_api_error, handle_http_error, handle_validation_error
from slm_runtime.metrics import RuntimeMetrics
from slm_runtime.middleware import GuardMiddleware
from slm_runtime.routes import ollama, ollama_models, openai_api, responses
from slm_runtime.runtime import BackendFactory, Runtime, load_backend
from slm_runtime.scheduler import Scheduler
from slm_runtime.settings import ServeSettings

log = logging.getLogger(__name__)


async def _load(runtime: Runtime, factory: BackendFactory) -> None:
    settings = runtime.settings
    started = time.perf_counter()
    log.info("loading model %s from %s (%s)", settings.model_name, settings.model, settings.format)
    try:
        backend = await asyncio.to_thread(factory, settings)
    except Exception as exc:  # keep serving probes; /readyz and /healthz say what broke
        runtime.load_error = f"model failed to load: {exc}"
        log.exception("model failed to load")
        return
    runtime.load_seconds = time.perf_counter() - started
    runtime.loaded_at = datetime.now(UTC)
    runtime.backend = backend
    metrics, name = runtime.metrics, runtime.model_name
    metrics.model_load_time.labels(name).set(runtime.load_seconds)
    metrics.model_loaded.labels(name).set(1)
    details = backend.details
    metrics.provider_fallback.labels(name, details.backend, details.execution_provider).set(
        1 if details.warnings else 0
    )
    log.info(
        "model loaded",
        extra={
            "fields": {
                "model": name,
                "backend": details.backend,
                "device": details.device,
                "execution_provider": details.execution_provider,
                "load_seconds": round(runtime.load_seconds, 3),
            }
        },
    )


def _health_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    @router.get("/api/health")  # the path the seed's container health check uses
    async def healthz(request: Request) -> JSONResponse:
        runtime: Runtime = request.app.state.runtime
        if runtime.load_error:
            return JSONResponse({"status": "error", "error": runtime.load_error}, 503)
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        runtime: Runtime = request.app.state.runtime
        body: dict[str, Any] = {"model": runtime.model_name, "format": runtime.settings.format}
        if runtime.backend is None:
            body |= {"status": "error" if runtime.load_error else "loading", "error": runtime.load_error}
            return JSONResponse(body, 503)
        details = runtime.backend.details
        body |= {
            "status": "draining" if runtime.draining else "ready",
            "backend": details.backend,
            "device": details.device,
            "execution_provider": details.execution_provider,
            "warnings": list(details.warnings),
            "load_seconds": round(runtime.load_seconds, 3),
            "parallel_requests": runtime.scheduler.parallel,
            "running": runtime.scheduler.running,
            "waiting": runtime.scheduler.waiting,
        }
        return JSONResponse(body, 503 if runtime.draining else 200)

    @router.get("/metrics")
    @router.get("/api/metrics")  # the path the seed's Prometheus job scrapes
    async def metrics(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def create_app(settings: ServeSettings, backend_factory: BackendFactory = load_backend) -> FastAPI:
    metrics = RuntimeMetrics(settings.model_name)
    runtime = Runtime(
        settings=settings,
        metrics=metrics,
        scheduler=Scheduler(settings.parallel_requests, settings.max_queue, metrics.set_queue),
    )
    runtime.idle.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load(runtime, backend_factory))
        try:
            yield
        finally:
            # Drain: wait for in-flight requests (uvicorn also waits for their connections).
            runtime.draining = True
            try:
                await asyncio.wait_for(runtime.idle.wait(), timeout=settings.drain_timeout_seconds)
            except TimeoutError:
                log.warning("drain timeout: %d requests still running", runtime.in_flight)
            loader.cancel()
            if runtime.backend is not None:
                await asyncio.to_thread(runtime.backend.close)
                runtime.backend = None

    app = FastAPI(
        title="slm-runtime",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.include_router(_health_router())
    root = APIRouter()
    ollama_models.root_route(root)
    app.include_router(root)
    if settings.ollama_api:
        app.include_router(ollama.build_router())
    if settings.openai_api:
        app.include_router(openai_api.build_router())
        app.include_router(responses.build_router())
    app.add_middleware(
        GuardMiddleware,
        api_key=ApiKey(settings.api_key, settings.api_key_file),
        max_request_bytes=settings.max_request_bytes,
        log_prompts=settings.log_prompts,
        body_timeout_seconds=settings.body_timeout_seconds,
        draining=lambda: runtime.draining,
    )
    return app
