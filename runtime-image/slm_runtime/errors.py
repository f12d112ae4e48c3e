"""Errors rendered in the shape of the API they happen in: Ollama `{"error": "..."}`, OpenAI `{"error": {...}}`."""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_runtime.backends.base import BackendError, ContextLengthExceededError

ApiKind = Literal["ollama", "openai"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def backend_refusal(exc: BackendError, prompt_field: str | None, *, of_prompt: bool) -> ApiError:
    """A backend's refusal as the client's 400: the one place this mapping is made.

    A prompt too long for the context, and (`of_prompt`) one the chat template or tokenizer refuses,
    name the request field the prompt came from; other refusals (a schema llama.cpp cannot compile)
    name the field the backend names, if any: blaming the prompt for them would mislead.
    """
    if isinstance(exc, ContextLengthExceededError):
        return ApiError(400, str(exc), param=prompt_field, code="context_length_exceeded")
    return ApiError(400, str(exc), param=exc.param or (prompt_field if of_prompt else None))


def api_kind(path: str) -> ApiKind:
    return "openai" if path.startswith("/v1") else "ollama"


def error_body(
    kind: ApiKind, status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    if kind == "ollama":
        return {"error": message}
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    path: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(api_kind(path), status, message, param, code), status, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request.url.path, exc.status, exc.message, exc.param, exc.code)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    param = None
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ()) if p != "body"]
        param = param or (".".join(location) or None)
        where = ".".join(location)
        problems.append(
            f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
        )
    message = "invalid request: " + "; ".join(problems)
    return error_response(request.url.path, 400, message, param=param)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"{request.url.path} not found"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(request.url.path, exc.status_code, message)
