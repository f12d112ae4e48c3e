"""Settings are the single list of SLM_* variables and flags; the CLI serves and drains on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from slm_operator.builders import RUNTIME_ENV_NAMES
from slm_runtime.__main__ import _parser
from slm_runtime.settings import FetchSettings, ServeSettings
from tests.runtime.conftest import free_port, wait_until

pytestmark = pytest.mark.runtime


def test_env_names_cover_the_contract() -> None:
    assert set(ServeSettings.env_names()) >= set(RUNTIME_ENV_NAMES)
    fetch_names = set(FetchSettings.env_names())
    assert {
        "SLM_SOURCE",
        "SLM_DEST",
        "SLM_SHA256",
        "SLM_QUANTIZE",
        "SLM_HF_TOKEN",
        "SLM_HF_ENDPOINT",
    } <= fetch_names
    assert "HF_TOKEN" in fetch_names


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "phi4-mini.gguf"
    monkeypatch.setenv("SLM_MODEL", str(model))
    monkeypatch.setenv("SLM_PARALLEL_REQUESTS", "8")
    monkeypatch.setenv("SLM_DEFAULT_PARAMETERS", '{"temperature": 0.2, "stop": ["<end>"]}')
    monkeypatch.setenv("SLM_OPENAI_API", "false")
    monkeypatch.setenv("SLM_EMBEDDINGS", "")
    settings = ServeSettings()  # model comes from SLM_MODEL
    assert settings.model == model
    assert settings.model_name == "phi4-mini:latest"
    assert settings.format == "gguf"
    assert settings.parallel_requests == 8
    assert settings.default_parameters == {"temperature": 0.2, "stop": ["<end>"]}
    assert settings.openai_api is False
    assert settings.embeddings is None


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLM_PORT", "9000")
    args = vars(
        _parser().parse_args(["serve", "--model", str(tmp_path), "--port", "9100", "--model-name", "x:1"])
    )
    args.pop("command")
    settings = ServeSettings(**args)
    assert settings.port == 9100
    assert settings.format == "onnx"  # a folder
    assert settings.model_name == "x:1"
    serve_help = subprocess.run(
        [sys.executable, "-m", "slm_runtime", "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    every_flag = {name.replace("-", "_") for name in re.findall(r"--([a-z0-9-]+) VALUE", serve_help)}
    assert set(ServeSettings.model_fields) <= every_flag


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SLM_PORT", "seventy"), ("SLM_DEFAULT_PARAMETERS", "[1, 2]"), ("SLM_KV_CACHE_TYPE", "q3")],
)
def test_invalid_settings_exit_2_with_the_variable_named(tmp_path: Path, variable: str, value: str) -> None:
    env = {**os.environ, "SLM_MODEL": str(tmp_path / "m.gguf"), variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "slm_runtime", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert variable in result.stderr


def test_sigterm_drains_in_flight_requests(tiny_gguf: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SLM_MODEL": str(tiny_gguf),
        "SLM_HOST": "127.0.0.1",
        "SLM_PORT": str(port),
        "SLM_CONTEXT_LENGTH": "4096",
        "SLM_PARALLEL_REQUESTS": "1",
        "SLM_THREADS": "1",
        "SLM_DRAIN_TIMEOUT_SECONDS": "60",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "slm_runtime", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=120)
        body = {"model": "tiny", "prompt": "drain", "options": {"num_predict": 1500, "temperature": 0}}
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=120) as response:
            lines = response.iter_lines()
            first = json.loads(next(lines))
            assert first["done"] is False
            process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            rest = [json.loads(line) for line in lines if line]
        assert rest[-1]["done"] is True
        assert rest[-1]["eval_count"] == 1500
        # uvicorn re-raises the captured SIGTERM once drained, so the exit status is the signal's.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.stderr.read() if process.stderr else ""
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(entry.get("path") == "/api/generate" and entry.get("status") == 200 for entry in logs)


def test_api_key_surrounding_whitespace_is_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLM_API_KEY", "  from-a-secret\n")
    settings = ServeSettings(model=tmp_path / "m.gguf")
    assert settings.api_key == "from-a-secret"
    assert ServeSettings(model=tmp_path / "m.gguf", api_key="\tk\r\n").api_key == "k"
    assert "whitespace" in (ServeSettings.model_fields["api_key"].description or "")
