#!/usr/bin/env python3
"""The local demo (`make demo`, `make demo-down`): the whole product on this machine.

1. builds (once) and starts the local control plane with fake GPU, NPU and CPU nodes;
2. installs the CRDs and RBAC from the Helm chart;
3. runs the operator as a local process, authenticated as the chart's ServiceAccount;
4. generates a tiny GGUF model and serves it from a local HTTP server;
5. applies an SLMDeployment that prefers an NPU, then a GPU, then a CPU, and plays the
   kubelet for its fetch Job (runs the Job's command here, the cache folder standing in
   for the PersistentVolumeClaim);
6. waits for Ready and prints `kubectl get slm -o wide` with the placement;
7. starts the runtime with exactly the command and environment of the Deployment's pod
   template and sends one Ollama chat and one OpenAI chat through the real clients.

The control plane, the operator and the model server keep running afterwards so you can
look around; `make demo-down` stops and removes everything.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import localcluster
from localcluster import ClusterError, LocalCluster

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE = REPO_ROOT / ".demo"
NAMESPACE = "demo"
RELEASE_NAMESPACE = "slm-system"
RELEASE = "slm-operator"
NAME = "assistant"
MODELS_MOUNT = "/models"  # where the pod template mounts the cache claim
STEPS = 7
T = TypeVar("T")


class DemoError(RuntimeError):
    """A step failed; the message says what and where to look."""


def say(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def step(number: int, title: str) -> Iterator[None]:
    started = time.monotonic()
    say(f"\n\033[1m[{number}/{STEPS}] {title}\033[0m")
    try:
        yield
    except (DemoError, ClusterError, subprocess.CalledProcessError, OSError) as error:
        say(f"\033[31m✗ {title}: {error}\033[0m")
        raise SystemExit(1) from error
    say(f"  ✓ done in {time.monotonic() - started:.1f}s")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_background(name: str, argv: list[str], state: Path, env: dict[str, str] | None = None) -> int:
    log = state / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    (state / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def stop_background(name: str, state: Path) -> None:
    pid_file = state / f"{name}.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    if localcluster.pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while localcluster.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if localcluster.pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    pid_file.unlink()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def helm(cluster: LocalCluster, *args: str) -> str:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DemoError(f"helm {' '.join(args[:2])} failed: {result.stderr.strip()}")
    return result.stdout


def slm_manifest(source: str, sha256: str) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"source": source, "format": "gguf", "sha256": sha256},
            "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
            "optimization": {"maxContext": 1024, "parallelRequests": 2},
            "prompt": {
                "system": "You are the slm-operator demo assistant. Answer briefly.",
                "parameters": {"temperature": 0.7, "num_predict": 24},
            },
        },
    }


def local_path(path: str, models_dir: Path) -> str:
    """A path inside the pod's cache mount, as it lies on this machine."""
    if path == MODELS_MOUNT or path.startswith(MODELS_MOUNT + "/"):
        return str(models_dir) + path[len(MODELS_MOUNT) :]
    return path


def run_fetch_job(cluster: LocalCluster, models_dir: Path) -> dict[str, Any]:
    """Play the kubelet for the fetch Job: run its container's command on this machine."""

    def job() -> dict[str, Any] | None:
        items = cluster.kubectl_json(
            "get", "jobs", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={NAME}"
        )["items"]
        return dict(items[0]) if items else None

    found = wait_until(job, 60, "the operator to create the fetch Job")
    container = found["spec"]["template"]["spec"]["containers"][0]
    command = [local_path(part, models_dir) for part in container["command"]]
    command[0] = sys.executable if command[0] == "python" else command[0]
    say(f"  fetch Job {found['metadata']['name']} runs: {' '.join(container['command'])}")
    say(f"  (here, with {MODELS_MOUNT} -> {models_dir})")
    result = subprocess.run(command, cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise DemoError(f"the fetch command failed with exit code {result.returncode}")
    return found


def runtime_invocation(
    cluster: LocalCluster, models_dir: Path, port: int
) -> tuple[list[str], dict[str, str]]:
    """The Deployment's container command and environment, with the cache mount mapped here."""
    deployment = cluster.kubectl_json("get", "deployment", NAME, "-n", NAMESPACE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = list(container.get("command", [])) + list(container.get("args", []))
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = local_path(str(item["value"]), models_dir)
    # Listen on loopback on a free port rather than 0.0.0.0:8080.
    env["SLM_HOST"] = "127.0.0.1"
    env["SLM_PORT"] = str(port)
    if command and command[0] == "python":
        command[0] = sys.executable
    return command, env


def chat_with_clients(base: str, model: str) -> None:
    import ollama
    import openai

    question = "In one sentence: why run small language models on Kubernetes?"
    say(f"  > {question}")
    reply = ollama.Client(host=base).chat(model=model, messages=[{"role": "user", "content": question}])
    say(f"  ollama client  /api/chat            -> {reply.message.content!r}")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed")
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=24
    )
    say(f"  openai client  /v1/chat/completions -> {completion.choices[0].message.content!r}")
    say("  (the demo model has random weights, so its words are noise; the APIs are real)")


def up(state: Path) -> None:
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    models_dir = state / "models"
    www_dir = state / "www"
    for folder in (models_dir, www_dir):
        folder.mkdir(exist_ok=True)

    with step(1, "Control plane: etcd, kube-apiserver, controller-manager, scheduler, kwok (fake nodes)"):
        say("  building the binaries from the Go module proxy on first use (about 12 minutes on 2 cores)...")
        cluster = localcluster.up(state / "cluster", localcluster.DEFAULT_NODES_FILE)
        nodes = cluster.kubectl(
            "get",
            "nodes",
            "-L",
            "nvidia.com/gpu.product,amd.com/gpu.vram,accelerator,intel.feature.node.kubernetes.io/npu",
        ).stdout
        say("  " + nodes.replace("\n", "\n  ").rstrip())

    with step(2, "CRDs and namespace-scoped RBAC from the Helm chart (the operator runs here: 0 replicas)"):
        # Namespace scope: the operator below serves only the demo namespace.
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        helm(cluster, "upgrade", "--install", RELEASE, str(REPO_ROOT / "charts" / "slm-operator"),
             "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--set", "replicas=0",
             "--set", "scope=namespace", "--set", f"watchNamespaces[0]={NAMESPACE}", "--wait")  # fmt: skip
        cluster.kubectl("wait", "--for=condition=Established", "crd/slmdeployments.slm.dev", "--timeout=60s")
        service_account = next(
            sa["metadata"]["name"]
            for sa in cluster.kubectl_json("get", "serviceaccounts", "-n", RELEASE_NAMESPACE)["items"]
            if sa["metadata"]["name"] != "default"
        )
        say(f"  release {RELEASE} in {RELEASE_NAMESPACE}; ServiceAccount {service_account}")

    with step(3, "The operator, as a local process with the chart's ServiceAccount token"):
        stop_background("operator", state)
        token = cluster.kubectl(
            "create", "token", service_account, "-n", RELEASE_NAMESPACE, "--duration=24h"
        ).stdout.strip()
        kubeconfig = localcluster.token_kubeconfig(cluster, state / "operator.kubeconfig", token, NAMESPACE)
        metrics_port = localcluster.free_port()
        start_background(
            "operator",
            [
                sys.executable,
                "-m",
                "slm_operator",
                "--namespace",
                NAMESPACE,
                "--log-format",
                "plain",
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                "0",
            ],
            state,
            {"KUBECONFIG": str(kubeconfig)},
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/metrics"), 60, "the operator to start")
        say(f"  operator log: {state / 'operator.log'}; metrics: http://127.0.0.1:{metrics_port}/metrics")

    with step(4, "A generated GGUF model, served by a local HTTP server"):
        from slm_runtime.testing.tiny_models import write_tiny_gguf

        model_file = www_dir / "tiny-llama-f16.gguf"  # the name says the quantization, as published GGUFs do
        if not model_file.exists():
            write_tiny_gguf(model_file)
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        stop_background("model-server", state)
        port = localcluster.free_port()
        start_background(
            "model-server",
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(www_dir),
            ],
            state,
        )
        source = f"http://127.0.0.1:{port}/{model_file.name}"
        wait_until(lambda: http_ok(source), 30, "the model server")
        say(f"  {source} ({model_file.stat().st_size} bytes, sha256 {digest[:16]}...)")

    with step(5, "SLMDeployment 'assistant': preferred npu, fallback [gpu, cpu]"):
        manifest = slm_manifest(source, digest)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        say("  " + json.dumps(manifest["spec"]["hardware"]))
        run_fetch_job(cluster, models_dir)

        def ready() -> dict[str, Any] | None:
            obj = cluster.kubectl_json("get", "slm", NAME, "-n", NAMESPACE)
            conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            stalled = conditions.get("Stalled", {})
            if stalled.get("status") == "True":
                raise DemoError(f"the deployment is stalled: {stalled.get('message')}")
            return dict(obj) if conditions.get("Ready", {}).get("status") == "True" else None

        obj = wait_until(ready, 120, "Ready=True")
        say("")
        say("  $ kubectl get slm -n demo -o wide")
        table = cluster.kubectl("get", "slm", "-n", NAMESPACE, "-o", "wide").stdout
        say("  " + table.replace("\n", "\n  ").rstrip())
        say(f"  placement: {obj['status']['placement']['reason']}")

    with step(6, "The runtime, with the command and environment of the Deployment's pod template"):
        runtime_port = localcluster.free_port()
        command, env = runtime_invocation(cluster, models_dir, runtime_port)
        say(f"  $ {' '.join(command)}")
        for name, value in sorted(env.items()):
            say(f"    {name}={value}")
        stop_background("runtime", state)
        start_background("runtime", command, state, env)
        base = f"http://127.0.0.1:{runtime_port}"
        wait_until(
            lambda: http_ok(f"{base}/readyz"),
            120,
            f"the runtime to load the model (log: {state / 'runtime.log'})",
        )

    with step(7, "One Ollama chat and one OpenAI chat through the real clients"):
        try:
            chat_with_clients(base, env.get("SLM_MODEL_NAME", NAME))
        except Exception as error:  # any client error ends the demo, with its message
            raise DemoError(
                f"{type(error).__name__}: {error} (runtime log: {state / 'runtime.log'})"
            ) from error
        finally:
            stop_background("runtime", state)

    say(
        f"\n\033[1mThe demo cluster keeps running.\033[0m Look around:\n"
        f"  export KUBECONFIG={cluster.kubeconfig}\n"
        f"  kubectl get slm,deploy,svc,pvc,jobs -n {NAMESPACE}\n"
        f"  kubectl describe slm {NAME} -n {NAMESPACE}\n"
        f"Remove everything with: make demo-down"
    )


def down(state: Path) -> None:
    state = state.resolve()
    for name in ("runtime", "operator", "model-server"):
        stop_background(name, state)
    if (state / "cluster").exists():
        localcluster.down(state / "cluster")
    if state.exists():
        subprocess.run(["rm", "-rf", str(state)], check=True)
    say("demo removed")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    args = parser.parse_args()
    if args.command == "up":
        up(args.state_dir)
    else:
        down(args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
