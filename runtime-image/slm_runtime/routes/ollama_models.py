"""Ollama's model routes: version, tags, ps and show, and its model management refused with what to do instead."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from slm_runtime.errors import ApiError
from slm_runtime.runtime import Runtime, runtime_of

OLLAMA_COMPAT_VERSION = "0.12.0"
# An expiry far away, as Ollama reports models kept loaded forever (keep_alive < 0).
_NEVER = "2318-11-30T00:00:00Z"


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    name: str = ""  # older clients send name
    verbose: bool = False


def _model_digest(runtime: Runtime) -> str:
    """The fetch Job's recorded sha256 when there is one; otherwise a digest of the file's identity."""
    settings = runtime.settings
    record = settings.model.parent / ".slm-fetch.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text())
            if isinstance(data, dict) and data.get("sha256"):
                return str(data["sha256"])
        except (OSError, ValueError):
            pass
    stat = settings.model.stat()
    return hashlib.sha256(f"{settings.model}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


def _details(runtime: Runtime) -> dict[str, Any]:
    d = runtime.details
    return {
        "parent_model": "",
        "format": d.format,
        "family": d.family,
        "families": [d.family],
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


def _modified_at(runtime: Runtime) -> str:
    mtime = runtime.settings.model.stat().st_mtime
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


def add_model_routes(router: APIRouter) -> None:
    """The model routes on the Ollama API's router (served when the Ollama API is on)."""

    @router.api_route("/api/version", methods=["GET", "HEAD"])
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_COMPAT_VERSION}

    @router.api_route("/api/tags", methods=["GET", "HEAD"])
    async def tags(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        if runtime.backend is None:
            return {"models": []}
        return {
            "models": [
                {
                    "name": runtime.model_name,
                    "model": runtime.model_name,
                    "modified_at": _modified_at(runtime),
                    "size": runtime.backend.details.size_bytes,
                    "digest": _model_digest(runtime),
                    "details": _details(runtime),
                }
            ]
        }

    @router.get("/api/ps")
    async def ps(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        if runtime.backend is None:
            return {"models": []}
        details = runtime.backend.details
        return {
            "models": [
                {
                    "name": runtime.model_name,
                    "model": runtime.model_name,
                    "size": details.size_bytes,
                    "digest": _model_digest(runtime),
                    "details": _details(runtime),
                    "expires_at": _NEVER,
                    "size_vram": details.size_bytes if details.device != "cpu" else 0,
                    "context_length": details.context_length,
                }
            ]
        }

    @router.post("/api/show")
    async def show(request: Request, body: ShowRequest) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_model(body.model or body.name)
        details = runtime.details
        settings = runtime.settings
        parameters = "\n".join(
            f"{name} {json.dumps(v) if isinstance(v, str) else v}"
            for name, value in settings.default_parameters.items()
            for v in (value if isinstance(value, list) else [value])
        )
        modelfile = [f"# Modelfile served by slm-runtime for {runtime.model_name}", f"FROM {settings.model}"]
        if details.chat_template:
            modelfile.append(f'TEMPLATE """{details.chat_template}"""')
        if settings.system_prompt:
            modelfile.append(f'SYSTEM """{settings.system_prompt}"""')
        modelfile.extend(f"PARAMETER {line}" for line in parameters.splitlines())
        return {
            "modelfile": "\n".join(modelfile) + "\n",
            "parameters": parameters,
            "template": details.chat_template,
            "system": settings.system_prompt,
            "details": _details(runtime),
            "model_info": details.model_info,
            "capabilities": list(details.capabilities),
            "modified_at": _modified_at(runtime),
        }

    _model_management(router)


# Models come from the SLMDeployment; a client pulling or deleting one here would diverge from it.
MANAGED_BY_CLUSTER = (
    "models are managed by the cluster: change the SLMDeployment's spec.model (kubectl edit slm NAME) instead"
)
_MANAGEMENT_ROUTES = {
    "/api/pull": "POST",
    "/api/push": "POST",
    "/api/create": "POST",
    "/api/copy": "POST",
    "/api/delete": "DELETE",
    "/api/blobs/{digest}": "POST",
}


def _model_management(router: APIRouter) -> None:
    """Ollama's model-management routes answer 501 Not Implemented with the way to do it instead.

    501, not 405: the method is right and there is no other method to list in Allow; this server
    does not do model management at all. Not 403: no credential would make it work.
    """

    async def refuse() -> None:
        raise ApiError(501, MANAGED_BY_CLUSTER)

    for path, method in _MANAGEMENT_ROUTES.items():
        router.add_api_route(path, refuse, methods=[method, "HEAD"] if "blobs" in path else [method])


def root_route(router: APIRouter) -> None:
    @router.api_route("/", methods=["GET", "HEAD"])
    async def root() -> PlainTextResponse:
        return PlainTextResponse("Ollama is running")
