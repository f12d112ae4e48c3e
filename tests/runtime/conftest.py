"""Fixtures: generated tiny models and real servers on loopback ports (session-scoped, started once)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from slm_runtime.app import create_app
from slm_runtime.runtime import Runtime
from slm_runtime.server import server_config
from slm_runtime.settings import ServeSettings
from slm_runtime.testing.tiny_models import (
    HERMES_TOOLS_TEMPLATE,
    write_tiny_gguf,
    write_tiny_onnx,
    write_tiny_onnx_embedding,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    url: str
    runtime: Runtime
    server: uvicorn.Server
    thread: threading.Thread

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value from /metrics (0 when absent)."""
        value = self.runtime.metrics.registry.get_sample_value(
            name, {"model_name": self.runtime.model_name, **labels}
        )
        return value or 0.0

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@contextlib.contextmanager
def serving(app: FastAPI, port: int) -> Iterator[str]:
    """Runs an app on 127.0.0.1:port in a thread; yields its URL once it accepts connections."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def start_server(**overrides: Any) -> RunningServer:
    port = free_port()
    settings = ServeSettings(host="127.0.0.1", port=port, **overrides)
    app = create_app(settings)
    config = server_config(app, settings)  # the guards `slm_runtime serve` runs with
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return RunningServer(url, app.state.runtime, server, thread)
            if response.json().get("status") == "error":
                raise RuntimeError(f"server failed to load: {response.text}")
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.should_exit = True
    raise RuntimeError("server did not become ready")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_gguf(models_dir: Path) -> Path:
    return write_tiny_gguf(models_dir / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_onnx(models_dir: Path) -> Path:
    return write_tiny_onnx(models_dir / "tiny-onnx")


@pytest.fixture(scope="session")
def tiny_onnx_embedding(models_dir: Path) -> Path:
    return write_tiny_onnx_embedding(models_dir / "tiny-embed")


@pytest.fixture(scope="session")
def gguf_server(tiny_gguf: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_gguf,
        model_name="tiny:latest",
        context_length=1024,
        parallel_requests=2,
        max_queue=4,
        threads=2,
        default_parameters='{"temperature": 0, "num_predict": 16}',
        system_prompt="You are tiny.",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_tools_gguf(models_dir: Path) -> Path:
    """The tiny model with a Hermes/Qwen-style tool-use template (dialect detected as hermes)."""
    return write_tiny_gguf(models_dir / "tiny-tools.gguf", chat_template=HERMES_TOOLS_TEMPLATE)


@pytest.fixture(scope="session")
def tools_server(tiny_tools_gguf: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_tools_gguf,
        model_name="tiny-tools:latest",
        context_length=2048,
        parallel_requests=2,
        max_queue=4,
        threads=2,
        default_parameters='{"temperature": 0, "num_predict": 16}',
    )
    yield server
    server.stop()
