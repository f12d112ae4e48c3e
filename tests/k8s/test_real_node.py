"""End to end on the real node: our images in real containers, SmolLM2 answering real clients.

The operator runs as a pod from our image, installed by the chart and scoped to one
namespace; it fetches `smollm2:135m` (Q4_1 GGUF) from an in-cluster seed claim into
the cache claim with a real fetch Job, and serves it with a real runtime pod. Clients
reach the runtime through the Service's ClusterIP (kube-proxy's rules on this host).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slm_dev import realnode, realpods
from slm_dev.cluster import LocalCluster
from slm_operator.naming import cache_claim_name
from tests.k8s.conftest import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.realnode, pytest.mark.slow]

RELEASE = "slm-e2e"
READY_TIMEOUT = 420  # cold: the fetch Job copies 98 MB and the runtime loads it on two shared cores
ENGLISH = re.compile(r"[A-Za-z]{3,}")


class E2E:
    """One namespace with the operator pod serving it and the model seed claim."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        self.cluster.apply([realpods.slm_manifest(name, self.namespace, spec)])

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.cluster.kubectl_json("get", "slm", name, "-n", self.namespace))

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            obj = self.get(name)
            conds = realpods.conditions(obj)
            ready_cond = conds.get("Ready", {})
            observed = ready_cond.get("observedGeneration") == obj["metadata"]["generation"]
            return obj if ready_cond.get("status") == "True" and observed else None

        return wait_for(ready, timeout=timeout, interval=1, what=f"SLMDeployment {name} Ready")

    def runtime_pods(self, name: str) -> list[dict[str, Any]]:
        return realpods.pods(
            self.cluster,
            self.namespace,
            f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server",
        )

    def fetch_pods(self, name: str) -> list[dict[str, Any]]:
        return realpods.pods(
            self.cluster,
            self.namespace,
            f"app.kubernetes.io/instance={name},app.kubernetes.io/component=fetch",
        )

    def base_url(self, name: str) -> str:
        return realpods.service_base_url(self.cluster, self.namespace, name)

    def operator_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in realpods.pods(self.cluster, self.namespace, "app.kubernetes.io/name=slm-operator")
            if not p["metadata"].get("deletionTimestamp")
        ]

    def describe(self) -> str:
        out = self.cluster.kubectl(
            "get", "slm,deploy,job,pod,pvc", "-n", self.namespace, "-o", "wide", check=False
        )
        events = self.cluster.kubectl(
            "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
        )
        logs = self.cluster.kubectl(
            "logs",
            "-n",
            self.namespace,
            "-l",
            "app.kubernetes.io/name=slm-operator",
            "--tail=60",
            check=False,
        )
        return f"{out.stdout}\n{events.stdout[-4000:]}\n--- operator log ---\n{logs.stdout[-6000:]}"


@contextlib.contextmanager
def operator_namespace(
    cluster: LocalCluster, prefix: str, release: str, *, extra_settings: dict[str, Any] | None = None
) -> Iterator[E2E]:
    """A namespace served by the operator pod (the chart, our image) with the model seed claim.

    Without a real node this skips, except in CI, where it fails: the tests it serves would
    prove nothing on kwok. Everything it made is removed afterwards.
    """
    if cluster.real_node is None:
        message = "this local cluster has no real node (SLM_REAL_NODE=0, or one cannot run here)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_default_service_account(namespace)
    cluster.ensure_volume_pool()
    cluster.apply(realpods.seed_claim_manifests(namespace, realpods.smollm2_dir()))
    values = realpods.operator_values(namespace, install_crds=False, extra_settings=extra_settings)
    realpods.install_operator(cluster, release, namespace, values)
    try:
        yield E2E(cluster, namespace)
    finally:
        realpods.helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", f"seed-{namespace}"[:63], "--wait=false", check=False)


@pytest.fixture(scope="module")
def e2e(cluster: LocalCluster, crds: list[str]) -> Iterator[E2E]:
    with operator_namespace(cluster, "e2e", RELEASE) as env:
        yield env


@pytest.fixture(scope="module")
def served(e2e: E2E) -> str:
    """`chat`: smollm2:135m Ready on the real node (shared by the read-only tests)."""
    e2e.apply("chat", realpods.real_node_spec())
    try:
        e2e.wait_ready("chat")
    except BaseException:
        print(e2e.describe())
        raise
    return "chat"


def _chat_both_clients(base: str, content: str) -> tuple[str, str]:
    import ollama
    import openai

    reply = ollama.Client(host=base, timeout=120).chat(
        model=realpods.MODEL_NAME, messages=[{"role": "user", "content": content}]
    )
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", timeout=120)
    completion = client.chat.completions.create(
        model=realpods.MODEL_NAME, messages=[{"role": "user", "content": content}], max_tokens=24
    )
    return str(reply.message.content), str(completion.choices[0].message.content)


def test_fetch_ready_and_chat_through_the_service(e2e: E2E, served: str) -> None:
    obj = e2e.get(served)
    status = obj["status"]
    assert status["placement"]["tier"] == "cpu"
    assert status["placement"]["quantization"] == "q4_1"
    assert (
        status["model"]["sha256"]
        == hashlib.sha256((realpods.smollm2_dir() / realpods.MODEL_FILE).read_bytes()).hexdigest()
    )
    # Real containers on the real node, not kwok's pretend ones.
    fetchers = e2e.fetch_pods(served)
    assert len(fetchers) == 1
    assert fetchers[0]["spec"]["nodeName"] == realnode.NODE_NAME
    assert fetchers[0]["status"]["phase"] == "Succeeded"
    servers = e2e.runtime_pods(served)
    assert [p["spec"]["nodeName"] for p in servers] == [realnode.NODE_NAME]
    container = servers[0]["status"]["containerStatuses"][0]
    assert container["containerID"].startswith("containerd://")
    assert container["ready"] is True
    assert all(p["spec"]["nodeName"] == realnode.NODE_NAME for p in e2e.operator_pods())

    ollama_text, openai_text = _chat_both_clients(
        e2e.base_url(served), "What is the capital of France? Answer in one sentence."
    )
    assert ENGLISH.search(ollama_text), ollama_text
    assert ENGLISH.search(openai_text), openai_text


async def test_the_operator_reads_fetch_progress_from_a_real_fetch_pod_log(e2e: E2E, served: str) -> None:
    """The operator's pods/log read (status.cache progress while a fetch runs), on a real Pod."""
    from kubernetes_asyncio import client, config

    from slm_operator.builders.fetch_job import FETCH_CONTAINER
    from slm_operator.k8s.client import ApiError, Kubernetes
    from slm_operator.observe import parse_fetch_progress

    [fetcher] = e2e.fetch_pods(served)
    size = (realpods.smollm2_dir() / realpods.MODEL_FILE).stat().st_size
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(e2e.cluster.kubeconfig), client_configuration=configuration)
    api = Kubernetes(client.ApiClient(configuration))
    try:
        text = await api.pod_log(e2e.namespace, fetcher["metadata"]["name"], FETCH_CONTAINER, tail_lines=5)
        with pytest.raises(ApiError) as missing:
            await api.pod_log(e2e.namespace, "no-such-pod", FETCH_CONTAINER, tail_lines=5)
        assert missing.value.not_found, missing.value.message
    finally:
        await api.close()
    assert len(text.splitlines()) <= 5, text
    progress = parse_fetch_progress(text)
    assert progress is not None, text
    assert progress[:2] == (size, size)


def test_runtime_logs_json_access_lines_without_prompt_text(e2e: E2E, served: str) -> None:
    secret = f"zebra-{uuid.uuid4().hex[:8]}"
    import openai

    client = openai.OpenAI(base_url=f"{e2e.base_url(served)}/v1", api_key="not-needed", timeout=120)
    client.chat.completions.create(
        model=realpods.MODEL_NAME, messages=[{"role": "user", "content": f"Say {secret}"}], max_tokens=4
    )
    pod = e2e.runtime_pods(served)[0]["metadata"]["name"]
    logs = e2e.cluster.kubectl("logs", pod, "-n", e2e.namespace).stdout
    assert secret not in logs
    access = []
    for line in logs.splitlines():
        record = json.loads(line)  # every line is JSON
        if record.get("logger") == "slm_runtime.access":
            access.append(record)
    chat_lines = [r for r in access if "/v1/chat/completions" in json.dumps(r)]
    assert chat_lines, access[-5:]
    assert all("status" in json.dumps(r) for r in chat_lines)


def test_runtime_pod_replaced_without_a_second_download(e2e: E2E, served: str) -> None:
    before = e2e.runtime_pods(served)
    assert len(before) == 1
    old = before[0]["metadata"]["name"]
    fetch_jobs_before = e2e.cluster.kubectl_json("get", "jobs", "-n", e2e.namespace, "-l",
                                                 f"app.kubernetes.io/instance={served}")["items"]  # fmt: skip
    e2e.cluster.kubectl("delete", "pod", old, "-n", e2e.namespace, "--wait=false")

    def replaced() -> dict[str, Any] | None:
        for pod in e2e.runtime_pods(served):
            statuses = pod.get("status", {}).get("containerStatuses", [])
            if pod["metadata"]["name"] != old and statuses and statuses[0].get("ready"):
                return pod
        return None

    wait_for(replaced, timeout=240, interval=1, what="a replacement runtime pod Ready")
    e2e.wait_ready(served)
    fetch_jobs_after = e2e.cluster.kubectl_json("get", "jobs", "-n", e2e.namespace, "-l",
                                                f"app.kubernetes.io/instance={served}")["items"]  # fmt: skip
    assert [j["metadata"]["uid"] for j in fetch_jobs_after] == [
        j["metadata"]["uid"] for j in fetch_jobs_before
    ]
    assert len(e2e.fetch_pods(served)) == 1  # the one fetch, never a second
    text, _ = _chat_both_clients(e2e.base_url(served), "Name a colour.")
    assert ENGLISH.search(text), text


class StreamingClient(threading.Thread):
    """Streams chats through the Service in a loop and counts every failure."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        import openai

        client = openai.OpenAI(base_url=f"{self.base}/v1", api_key="not-needed", timeout=60, max_retries=0)
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                stream = client.chat.completions.create(
                    model=realpods.MODEL_NAME,
                    messages=[{"role": "user", "content": "Count to five."}],
                    max_tokens=12,
                    stream=True,
                )
                text = "".join((chunk.choices[0].delta.content or "") for chunk in stream if chunk.choices)
                if not text:
                    self.failures.append("empty stream")
                else:
                    self.ok += 1
            except Exception as error:  # every kind of failure counts
                self.failures.append(f"{type(error).__name__}: {error}")


def test_spec_change_rolls_out_with_zero_failed_requests(e2e: E2E) -> None:
    name = "roll"
    spec = realpods.real_node_spec(replicas=2, cache={"accessMode": "ReadWriteMany"})
    e2e.apply(name, spec)
    e2e.wait_ready(name)
    old_pods = {p["metadata"]["name"] for p in e2e.runtime_pods(name)}
    client = StreamingClient(e2e.base_url(name))
    client.start()
    try:
        wait_for(lambda: client.ok >= 2, timeout=120, what="the streaming client to get answers")
        spec["prompt"] = {**spec["prompt"], "system": "You are terse."}
        e2e.apply(name, spec)

        def rolled() -> bool:
            current = e2e.runtime_pods(name)
            names = {p["metadata"]["name"] for p in current}
            ready = [
                p for p in current if all(c.get("ready") for c in p["status"].get("containerStatuses", [{}]))
            ]
            return not (names & old_pods) and len(ready) == 2

        wait_for(rolled, timeout=420, interval=1, what="the rollout to replace both pods")
        served_after = client.ok
        wait_for(lambda: client.ok >= served_after + 2, timeout=120, what="answers from the new pods")
    finally:
        client.stop.set()
        client.join(timeout=90)
    assert client.failures == [], client.failures[:5]
    assert client.ok >= 4


def test_operator_pod_deleted_during_a_reconcile_converges_without_duplicates(e2e: E2E) -> None:
    name = "restart"
    e2e.apply(name, realpods.real_node_spec())
    # Wait until the operator is in the middle of it: the fetch Job exists, nothing is Ready yet.
    wait_for(lambda: e2e.fetch_pods(name), timeout=120, interval=0.5, what="the fetch Job's pod")
    old = [p["metadata"]["name"] for p in e2e.operator_pods()]
    assert len(old) == 1
    e2e.cluster.kubectl("delete", "pod", old[0], "-n", e2e.namespace, "--wait=false")
    e2e.wait_ready(name)
    new = [p["metadata"]["name"] for p in e2e.operator_pods()]
    assert new and old[0] not in new
    selector = f"app.kubernetes.io/instance={name}"
    for kind in ("deployments", "services", "jobs"):
        items = e2e.cluster.kubectl_json("get", kind, "-n", e2e.namespace, "-l", selector)["items"]
        assert len(items) == 1, (kind, [i["metadata"]["name"] for i in items])
    claims = [
        c
        for c in e2e.cluster.kubectl_json("get", "pvc", "-n", e2e.namespace)["items"]
        if c["metadata"]["name"].startswith(name)
    ]
    assert len(claims) == 1
    assert len(e2e.runtime_pods(name)) == 1


def test_unwritable_cache_claim_names_the_cause_and_the_fix(e2e: E2E, tmp_path: Path) -> None:
    name = "readonly"
    folder = e2e.cluster.state_dir / "volumes" / f"root-owned-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    folder.chmod(0o755)  # root:root 0755, as kubelet makes a hostPath folder; fsGroup does not apply
    pv = f"root-owned-{e2e.namespace}"[:63]
    claim = cache_claim_name(name)  # the claim the operator would make: it adopts this one
    e2e.cluster.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"],
                  "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                  "claimRef": {"namespace": e2e.namespace, "name": claim},
                  "hostPath": {"path": str(folder), "type": "Directory"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": e2e.namespace},
         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ])  # fmt: skip
    try:
        e2e.apply(name, realpods.real_node_spec())

        def refused() -> dict[str, Any] | None:
            cached = realpods.conditions(e2e.get(name)).get("ModelCached", {})
            return cached if cached.get("reason") == "CacheNotWritable" else None

        condition = wait_for(refused, timeout=240, interval=1, what="ModelCached=False CacheNotWritable")
        assert condition["status"] == "False"
        message = condition["message"]
        assert "65532" in message and "chown" in message, message
        assert "Errno 13" not in message
        assert realpods.conditions(e2e.get(name))["Stalled"]["status"] == "True"
    finally:
        e2e.cluster.kubectl("delete", "slm", name, "-n", e2e.namespace, "--wait=true", check=False)
        e2e.cluster.kubectl("delete", "pvc", claim, "-n", e2e.namespace, "--wait=false", check=False)
        e2e.cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def test_corrupted_model_on_the_claim_is_detected_and_fetched_again(e2e: E2E) -> None:
    name = "corrupt"
    e2e.apply(name, realpods.real_node_spec())
    obj = e2e.wait_ready(name)
    good = obj["status"]["model"]["sha256"]
    folder = realpods.host_path_of_claim(e2e.cluster, e2e.namespace, obj["status"]["cache"]["claimName"])
    files = [p for p in folder.rglob("*.gguf") if p.is_file()]
    assert len(files) == 1, files
    with open(files[0], "r+b") as handle:  # flip bytes in the middle of the weights
        handle.seek(files[0].stat().st_size // 2)
        handle.write(b"\xde\xad\xbe\xef" * 1024)
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() != good
    old = e2e.runtime_pods(name)[0]["metadata"]["name"]
    e2e.cluster.kubectl("delete", "pod", old, "-n", e2e.namespace, "--wait=false")

    def detected() -> dict[str, Any] | None:
        for event in e2e.cluster.kubectl_json("get", "events", "-n", e2e.namespace)["items"]:
            if event.get("reason") == "ModelCorrupted" and event["involvedObject"].get("name") == name:
                return dict(event)
        return None

    wait_for(detected, timeout=240, interval=1, what="a ModelCorrupted event")
    e2e.wait_ready(name)

    def repaired() -> bool:
        return hashlib.sha256(files[0].read_bytes()).hexdigest() == good

    wait_for(repaired, timeout=60, what="the cached file to be fetched again")
    text, _ = _chat_both_clients(e2e.base_url(name), "Say hello.")
    assert ENGLISH.search(text), text


def test_a_rotated_api_key_secret_reaches_the_running_pod_without_a_restart(e2e: E2E) -> None:
    import httpx

    name = "keyed"
    secret = f"{name}-key"

    def put_secret(value: str) -> None:
        e2e.cluster.apply([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret, "namespace": e2e.namespace},
             "stringData": {"token": f"{value}\n"}},  # a trailing newline, as --from-file makes
        ])  # fmt: skip

    put_secret("first-key")
    e2e.apply(name, realpods.real_node_spec(api={"apiKeySecretRef": {"name": secret, "key": "token"}}))
    e2e.wait_ready(name)
    base = e2e.base_url(name)

    def status(key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{base}/v1/models", headers=headers, timeout=10).status_code

    assert (status(None), status("first-key"), status("second-key")) == (401, 200, 401)
    pod = e2e.runtime_pods(name)[0]
    put_secret("second-key")
    wait_for(lambda: status("second-key") == 200, timeout=180, interval=2, what="the rotated key in force")
    assert status("first-key") == 401
    after = e2e.runtime_pods(name)
    assert [p["metadata"]["name"] for p in after] == [pod["metadata"]["name"]]  # the same pod ...
    assert after[0]["status"]["containerStatuses"][0]["restartCount"] == 0  # ... never restarted


def test_slm_run_answers_through_the_real_pod(e2e: E2E, served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`slm run NAME PROMPT` as a user types it: kubectl port-forward to the real pod, SmolLM2 answers."""
    import io
    import sys

    from slm_operator.cli.__main__ import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a pipe with nothing in it, not a terminal
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["run", served, "What is the capital of France?", "--verbose", "--kubectl", str(e2e.cluster.bin_dir / "kubectl"),
         "--kubeconfig", str(e2e.cluster.kubeconfig), "-n", e2e.namespace],
        out=out, err=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    assert ENGLISH.search(out.getvalue()), out.getvalue()
    assert "eval rate:" in err.getvalue()  # Ollama's --verbose statistics, from the runtime's real counts
