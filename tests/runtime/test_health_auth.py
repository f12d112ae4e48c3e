"""Probes, readiness before and after loading, the API key, and the access log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from slm_runtime.app import create_app
from slm_runtime.backends.base import Backend
from slm_runtime.runtime import load_backend
from slm_runtime.settings import ServeSettings
from tests.runtime.conftest import RunningServer, free_port, serving, start_server, wait_until

pytestmark = pytest.mark.runtime

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def auth_server(tiny_gguf: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_gguf, model_name="guarded", api_key=KEY, parallel_requests=1, context_length=512, threads=1
    )
    yield server
    server.stop()


def test_readyz_names_model_backend_device(gguf_server: RunningServer) -> None:
    body = httpx.get(gguf_server.url + "/readyz").json()
    assert body["status"] == "ready"
    assert body["model"] == "tiny:latest"
    assert body["backend"] == "llama-cpp"
    assert body["device"] == "cpu"
    assert body["warnings"] == []
    assert httpx.get(gguf_server.url + "/healthz").json() == {"status": "ok"}


def test_auth_required_on_apis(auth_server: RunningServer) -> None:
    url = auth_server.url
    assert httpx.get(url + "/api/tags").status_code == 401
    wrong = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/api/tags", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    # Probes and metrics stay open for kubelet and Prometheus.
    assert httpx.get(url + "/healthz").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200


def test_auth_with_real_clients(auth_server: RunningServer) -> None:
    client = ollama.Client(host=auth_server.url, headers={"Authorization": f"Bearer {KEY}"})
    assert [m.model for m in client.list().models] == ["guarded:latest"]
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=auth_server.url).list()
    assert caught.value.status_code == 401
    good = openai.OpenAI(base_url=auth_server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in good.models.list().data] == ["guarded:latest"]
    bad = openai.OpenAI(base_url=auth_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_access_log_is_json_without_prompt(
    gguf_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    def logged() -> list[dict[str, Any]]:
        fields = [getattr(r, "fields", {}) for r in caplog.records if r.name == "slm_runtime.access"]
        return [f for f in fields if f.get("path") == "/api/generate"]

    with caplog.at_level(logging.INFO, logger="slm_runtime.access"):
        httpx.post(
            gguf_server.url + "/api/generate",
            json={"model": "tiny", "prompt": "very-secret-prompt", "options": {"num_predict": 1}},
        )
        # The line is written once the response has gone out, so it may trail the client a little.
        wait_until(lambda: bool(logged()))
    fields = logged()[-1]
    assert fields["path"] == "/api/generate"
    assert fields["status"] == 200
    assert "very-secret-prompt" not in str(fields)


def test_readyz_is_503_while_loading(tiny_gguf: Path) -> None:
    release = threading.Event()

    def slow_loader(settings: ServeSettings) -> Backend:
        release.wait(timeout=60)
        return load_backend(settings)

    port = free_port()
    settings = ServeSettings(model=tiny_gguf, port=port, parallel_requests=1, context_length=256, threads=1)
    try:
        with serving(create_app(settings, slow_loader), port) as url:
            response = httpx.get(url + "/readyz")
            assert response.status_code == 503
            assert response.json()["status"] == "loading"
            assert httpx.get(url + "/healthz").status_code == 200
            generate = httpx.post(url + "/api/generate", json={"model": "tiny", "prompt": "x"})
            assert generate.status_code == 503
            assert "loading" in generate.json()["error"]
            release.set()
            wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)
            assert httpx.get(url + "/readyz").json()["status"] == "ready"
    finally:
        release.set()


def test_broken_model_reports_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    port = free_port()
    with serving(create_app(ServeSettings(model=broken, port=port)), port) as url:
        wait_until(lambda: httpx.get(url + "/readyz").json()["status"] == "error")
        body = httpx.get(url + "/readyz").json()
        assert "failed to load" in str(body["error"])
        assert httpx.get(url + "/healthz").status_code == 503
        assert httpx.post(url + "/api/generate", json={"model": "broken", "prompt": "x"}).status_code == 503


def test_gpu_request_on_cpu_build_falls_back_visibly(tiny_gguf: Path) -> None:
    server = start_server(model=tiny_gguf, device="gpu", parallel_requests=1, context_length=256, threads=1)
    try:
        body = httpx.get(server.url + "/readyz").json()
        assert body["device"] == "cpu"
        assert any("no GPU support" in warning for warning in body["warnings"])
        assert (
            server.metric("slm_execution_provider_fallback", backend="llama-cpp", execution_provider="") == 1
        )
    finally:
        server.stop()


def test_sigterm_fails_readiness_keeps_serving_for_the_drain_delay_then_exits(tiny_gguf: Path) -> None:
    """A pod being replaced must not refuse requests the Service still routes to it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    port = free_port()
    env = {
        **os.environ,
        "SLM_MODEL": str(tiny_gguf),
        "SLM_HOST": "127.0.0.1",
        "SLM_PORT": str(port),
        "SLM_CONTEXT_LENGTH": "256",
        "SLM_THREADS": "1",
        "SLM_PARALLEL_REQUESTS": "1",
        "SLM_DRAIN_DELAY_SECONDS": "3",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "slm_runtime", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(url + "/readyz", timeout=5).status_code == 503
        answer = httpx.post(
            url + "/api/generate",
            json={"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 2}},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["connection"] == "close"
        assert process.poll() is None  # still serving within the 3 s drain delay
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=2)


def test_ollama_style_health_and_metrics_paths(auth_server: RunningServer) -> None:
    """The seed's container health check and Prometheus job use these; like /healthz and /metrics, no key."""
    health = httpx.get(auth_server.url + "/api/health")
    assert health.status_code == 200
    assert health.json() == httpx.get(auth_server.url + "/healthz").json()
    metrics = httpx.get(auth_server.url + "/api/metrics")
    assert metrics.status_code == 200
    assert "slm_model_loaded" in metrics.text


def test_api_key_from_a_secret_file_with_a_newline(tiny_gguf: Path) -> None:
    server = start_server(
        model=tiny_gguf,
        model_name="nl",
        api_key=f"{KEY}\n",
        parallel_requests=1,
        context_length=256,
        threads=1,
    )
    try:
        ok = httpx.get(server.url + "/api/tags", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    finally:
        server.stop()


def test_a_rotated_key_file_applies_without_a_restart(tiny_gguf: Path, tmp_path: Path) -> None:
    # As kubelet lays out a Secret volume: the file is a symlink into a folder swapped atomically.
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "..v1").mkdir()
    (secret / "..v1" / "api-key").write_text("first-key\n")
    (secret / "..data").symlink_to("..v1")
    (secret / "api-key").symlink_to("..data/api-key")
    server = start_server(
        model=tiny_gguf,
        model_name="rotating",
        api_key_file=str(secret / "api-key"),
        parallel_requests=1,
        context_length=256,
        threads=1,
    )

    def status(key: str) -> int:
        return httpx.get(server.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code

    try:
        assert (status("first-key"), status("second-key")) == (200, 401)
        (secret / "..v2").mkdir()
        (secret / "..v2" / "api-key").write_text("second-key\n")
        (secret / "..data_tmp").symlink_to("..v2")
        (secret / "..data_tmp").replace(secret / "..data")
        assert (status("first-key"), status("second-key")) == (401, 200)
        (secret / "..data").unlink()  # the Secret's key is gone: closed, not open
        assert (status("first-key"), status("second-key")) == (401, 401)
        assert httpx.get(server.url + "/healthz").status_code == 200  # probes stay open
    finally:
        server.stop()
