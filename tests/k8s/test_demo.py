"""`make demo` end to end: the README's main job must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.runtime]

DEMO = Path(__file__).resolve().parents[2] / "hack" / "demo.py"


def test_demo_places_serves_and_answers_both_clients(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    try:
        result = subprocess.run(
            [sys.executable, str(DEMO), "up", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "[7/7]" in output and "✗" not in output
        table = output[output.index("$ kubectl get slm -n demo -o wide") :].splitlines()
        assert table[1].split()[:3] == ["NAME", "READY", "TIER"]
        assert table[2].split()[:3] == ["assistant", "True", "gpu"]  # no GGUF on NPUs: fell back to the GPUs
        assert "placement: npu: " in output and "; gpu: " in output
        assert "ollama client  /api/chat            -> '" in output
        assert "openai client  /v1/chat/completions -> '" in output
        assert '"verified": true' in output  # the fetch checked the sha256 the spec gave
        assert table[2].split()[3] == "f16"  # the quantization the model file declares
        # The operator ran as the chart's ServiceAccount and was never refused anything.
        assert "forbidden" not in (state / "operator.log").read_text().lower()
    finally:
        down = subprocess.run(
            [sys.executable, str(DEMO), "down", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
