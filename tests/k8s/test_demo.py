"""`make demo` end to end: the README's main job must keep working, on real pods."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from slm_dev import cluster as localcluster

pytestmark = [pytest.mark.k8s, pytest.mark.runtime, pytest.mark.realnode, pytest.mark.slow]
OWN_CLUSTER = True  # the demo starts its own cluster and real node: run before the shared one

# As `make demo` runs it.
DEMO = [sys.executable, "-m", "slm_dev.demo"]


def test_demo_serves_smollm2_on_a_real_pod_and_answers_both_clients(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    try:
        result = subprocess.run(
            [*DEMO, "up", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "[7/7]" in output and "✗" not in output
        table = output[output.index("$ kubectl get slm -n demo -o wide") :].splitlines()
        assert table[1].split()[:4] == ["NAME", "READY", "TIER", "QUANT"]
        assert table[2].split()[:4] == ["assistant", "True", "cpu", "q4_1"]
        # The hardware story on the fake nodes: no GGUF on NPUs, so the GPUs.
        assert re.search(r"assistant-accel: tier gpu", output), output[-3000:]
        assert "why: npu: " in output and "; gpu: " in output
        pods = output[output.index("which pod really serves:") :]
        assert re.search(r"assistant-[a-z0-9]+-[a-z0-9]+ +real-cpu-0 +Running +containerd \(real\)", pods)
        assert re.search(r"assistant-accel-[a-z0-9-]+ +gpu-\S+ +Running +kwok \(simulated\)", pods)
        # SmolLM2 answers in English through both clients.
        # (the demo prints repr(answer): double quotes when the answer holds an apostrophe)
        assert re.search(r"ollama client  /api/chat            -> ['\"].*[A-Za-z]{3,}", output)
        assert re.search(r"openai client  /v1/chat/completions -> ['\"].*[A-Za-z]{3,}", output)
        assert "fetch pods for assistant: 1 " in output
        assert re.search(
            r"cold \(apply -> fetched -> Ready\) \d+s; warm \(pod replaced -> Ready\) \d+s", output
        )
        # The operator pod ran as the chart's ServiceAccount and was never refused anything.
        cluster = localcluster.load(state / "cluster")
        assert cluster is not None
        logs = cluster.kubectl(
            "logs", "-n", "slm-system", "-l", "app.kubernetes.io/name=slm-operator", "--tail=-1"
        ).stdout
        assert logs and "forbidden" not in logs.lower()
    finally:
        down = subprocess.run(
            [*DEMO, "down", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
