"""The in-process port-forward: Service -> Ready Pod and port, the local byte pump over fake streams,
the mode choice and the kubectl fallback, and the whole forward against a fake API server
(fake_kube_api.py) whose pods/portforward websocket reaches a local fake Ollama.

Past 400 lines: each part of the forward (the pure choice, the pump, the modes, the whole) has its
cases here, against the same fakes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websocket import WebSocketBadStatusException

from slm_operator.cli import podforward, portforward
from slm_operator.cli.commands import Context
from slm_operator.cli.errors import CliError
from slm_operator.cli.localforward import THREAD_NAME, LocalForwarder
from slm_operator.cli.podforward import PodTarget
from tests.unit.cli.fake_kube_api import ApiState, fake_api
from tests.unit.cli.test_run import OBJ, fake_kubectl, fake_ollama

SELECTOR = {"app.kubernetes.io/instance": "assistant", "app.kubernetes.io/name": "slm-runtime"}


def service(target_port: Any = "http", port: int = 8080) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": "http", "port": port, "protocol": "TCP"}
    if target_port is not None:
        entry["targetPort"] = target_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "assistant", "namespace": "ai"},
        "spec": {"selector": dict(SELECTOR), "ports": [entry]},
    }


def pod(
    name: str, ready_since: str | None = "2026-01-01T00:00:00Z", deleting: bool = False, port: int = 11434
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready_since else "False"}]
    if ready_since:
        conditions[0]["lastTransitionTime"] = ready_since
    meta: dict[str, Any] = {"name": name, "namespace": "ai", "labels": dict(SELECTOR)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [
                {"name": "metrics", "ports": [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]},
                {"name": "runtime", "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]},
            ]
        },
        "status": {"phase": "Running", "conditions": conditions},
    }


# ---------------------------------------------------------------------------------------------
# Service -> Pod and port


def test_target_port_is_a_number_a_name_or_the_service_port() -> None:
    assert podforward.service_target_port(service("http"), 8080, "assistant") == "http"
    assert podforward.service_target_port(service(11434), 8080, "assistant") == 11434
    assert podforward.service_target_port(service("11434"), 8080, "assistant") == 11434
    assert podforward.service_target_port(service(None), 8080, "assistant") == 8080
    with pytest.raises(
        CliError, match=r"Service ai/assistant has no port 9000 \(it has: 8080\).*slm why assistant"
    ):
        podforward.service_target_port(service(), 9000, "assistant")


def test_a_named_target_port_is_looked_up_in_the_pods_containers() -> None:
    ready = pod("a", port=11434)
    assert podforward.container_port(ready, "http") == 11434
    assert podforward.container_port(ready, "metrics") == 9090
    assert podforward.container_port(ready, 8000) == 8000
    assert podforward.container_port(ready, "grpc") is None


def test_the_selector_string_and_a_service_without_one() -> None:
    assert (
        podforward.service_selector(service(), "assistant")
        == "app.kubernetes.io/instance=assistant,app.kubernetes.io/name=slm-runtime"
    )
    bare = service()
    del bare["spec"]["selector"]
    with pytest.raises(CliError, match=r"selects no Pods.*slm why assistant"):
        podforward.service_selector(bare, "assistant")


def test_the_pod_ready_longest_is_chosen_never_one_not_ready_or_deleted() -> None:
    pods = [
        pod("young", ready_since="2026-03-01T00:00:00Z"),
        pod("unready", ready_since=None),
        pod("leaving", ready_since="2025-01-01T00:00:00Z", deleting=True),
        pod("old", ready_since="2026-02-01T00:00:00Z"),
        {**pod("pending"), "status": {"phase": "Pending", "conditions": []}},
    ]
    assert [p["metadata"]["name"] for p in podforward.ready_pods(pods)] == ["old", "young"]
    assert podforward.choose_target(service(), pods, 8080, "assistant") == PodTarget("ai", "old", 11434)
    assert podforward.choose_target(service(8000), pods, 8080, "assistant") == PodTarget("ai", "old", 8000)


def test_no_ready_pod_or_no_such_named_port_is_one_line_naming_the_deployment() -> None:
    with pytest.raises(CliError) as caught:
        podforward.choose_target(service(), [pod("a", ready_since=None)], 8080, "assistant")
    assert caught.value.message == (
        "SLMDeployment assistant has no Ready Pod behind Service ai/assistant to forward to "
        "(1 Pods match it): see `slm ps` and `slm why assistant`"
    )
    with pytest.raises(CliError, match=r"targetPort 'grpc' names no container port of its Ready Pods \(a\)"):
        podforward.choose_target(service("grpc"), [pod("a")], 8080, "assistant")


def test_a_refused_upgrade_becomes_rbac_pod_gone_or_unavailable() -> None:
    target = PodTarget("ai", "p", 11434)
    forbidden = {"kind": "Status", "message": 'pods "p" is forbidden: cannot create pods/portforward'}

    def handshake(status: int, body: bytes | None) -> WebSocketBadStatusException:
        return WebSocketBadStatusException(f"Handshake status {status}", status, "Reason", {}, body)

    error = podforward.stream_error(handshake(403, json.dumps(forbidden).encode()), target)
    assert type(error) is CliError
    assert error.message == (
        'cannot port-forward to Pod ai/p port 11434: forbidden (pods "p" is forbidden: cannot create '
        "pods/portforward); the port-forward needs RBAC `get services`, `list pods` and `create "
        "pods/portforward` in namespace ai"
    )
    assert isinstance(podforward.stream_error(handshake(404, None), target), podforward.PodGoneError)
    unavailable = podforward.stream_error(handshake(400, b"Upgrade request\nrequired"), target)
    assert isinstance(unavailable, podforward.ForwardUnavailableError)
    assert unavailable.message == (
        "the API server did not open a port-forward to Pod ai/p port 11434 (HTTP 400: Upgrade request required)"
    )
    assert podforward.refused(handshake(502, None)) == (502, "Reason")
    assert podforward.refused(ConnectionRefusedError(111, "Connection refused")) == (
        None,
        "[Errno 111] Connection refused",
    )


# ---------------------------------------------------------------------------------------------
# the local side over fake streams


class EchoStream:
    """A stream whose far end (a thread) answers every byte upper-cased; or, with `problem`, reads
    once and ends without answering, as a Pod's refused port does."""

    def __init__(self, problem: str | None = None) -> None:
        self.sock, far = socket.socketpair()
        self.problem = problem
        self.closed = threading.Event()
        threading.Thread(target=self._far_end, args=(far,), daemon=True).start()

    def _far_end(self, far: socket.socket) -> None:
        with far, contextlib.suppress(OSError):
            if self.problem:
                far.recv(1)
                return
            while data := far.recv(65536):
                far.sendall(data.upper())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except OSError:
            return b""

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def error(self) -> str | None:
        return self.problem

    def close(self) -> None:
        self.sock.close()
        self.closed.set()

    def __str__(self) -> str:
        return "echo"


@dataclass
class Opener:
    """Hands out EchoStreams; the calls numbered in `fail` raise instead."""

    fail: set[int] = field(default_factory=set)
    problem: str | None = None
    streams: list[EchoStream] = field(default_factory=list)
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> EchoStream:
        with self.lock:
            self.calls += 1
            if self.calls in self.fail:
                raise CliError("no Ready Pod")
            stream = EchoStream(self.problem)
            self.streams.append(stream)
            return stream


def exchange(port: int, payload: bytes, start: threading.Barrier | None = None) -> bytes | None:
    """Send `payload` while reading as many bytes back; None when the connection ended first."""
    if start is not None:
        start.wait()
    with socket.create_connection(("127.0.0.1", port)) as conn:

        def send() -> None:
            with contextlib.suppress(OSError):
                conn.sendall(payload)

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        try:
            while len(received) < len(payload) and (data := conn.recv(65536)):
                received += data
        except ConnectionResetError:
            pass
        finally:
            sender.join()
        return received if len(received) == len(payload) else None


def our_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME) and t not in before]


def test_many_concurrent_connections_each_with_its_stream_one_failing_alone() -> None:
    before = set(threading.enumerate())
    opener, reports = Opener(fail={3}), list[str]()
    payloads = [bytes([97 + n]) * (300_000 + n) + os.urandom(1000) for n in range(8)]
    start = threading.Barrier(8)
    with LocalForwarder(opener, reports.append) as forwarder, ThreadPoolExecutor(8) as pool:
        assert forwarder.url == f"http://127.0.0.1:{forwarder.local_port}"
        answers = list(pool.map(lambda p: exchange(forwarder.local_port, p, start), payloads))
    failed = [n for n, answer in enumerate(answers) if answer is None]
    assert len(failed) == 1
    assert all(answers[n] == payloads[n].upper() for n in range(8) if n not in failed)
    assert opener.calls == 8 and len(opener.streams) == 7
    assert all(stream.closed.is_set() for stream in opener.streams)
    assert reports == ["port-forward: no stream for a connection: no Ready Pod"]
    assert our_threads(before) == []


def test_a_stream_whose_far_end_fails_closes_its_connection_and_is_reported_once() -> None:
    opener, reports = Opener(problem="connection refused"), list[str]()
    with LocalForwarder(opener, reports.append) as forwarder:
        assert exchange(forwarder.local_port, b"GET / HTTP/1.1\r\n\r\n") is None
        assert exchange(forwarder.local_port, b"GET / HTTP/1.1\r\n\r\n") is None
    assert reports == ["port-forward: echo: connection refused"]
    assert all(stream.closed.is_set() for stream in opener.streams)


def test_leaving_the_block_closes_every_connection_and_the_listener() -> None:
    before = set(threading.enumerate())
    opener = Opener()
    with LocalForwarder(opener, lambda _: None) as forwarder:
        clients = [socket.create_connection(("127.0.0.1", forwarder.local_port)) for _ in range(3)]
        for client in clients:  # each has its stream now, and an idle connection
            client.sendall(b"ping")
            assert client.recv(4) == b"PING"
        port = forwarder.local_port
    for client in clients:
        with client:
            assert client.recv(4) == b""
    assert all(stream.closed.is_set() for stream in opener.streams)
    assert our_threads(before) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port))


# ---------------------------------------------------------------------------------------------
# the whole forward, through the fake API server


def cli_context(kubeconfig: Path, kubectl: str | None = None) -> tuple[Context, io.StringIO]:
    args = argparse.Namespace(kubeconfig=str(kubeconfig), context=None, namespace="ai", kubectl=kubectl)
    err = io.StringIO()
    return Context(args=args, err=err), err


def get(url: str, path: str, key: str = "s3cret") -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def chat(url: str) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        body = json.dumps({"model": "phi4:mini", "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/api/chat", body=body, headers={"Authorization": "Bearer s3cret"})
        return [json.loads(line) for line in conn.getresponse().read().splitlines()]
    finally:
        conn.close()


def start(ctx: Context) -> None:
    with portforward.forward(ctx, OBJ):
        pass


@pytest.fixture
def ollama() -> Iterator[int]:
    with fake_ollama() as port:
        yield port


@pytest.fixture(autouse=True)
def _no_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(portforward.MODE_VARIABLE, raising=False)
    monkeypatch.delenv("SLM_KUBECTL", raising=False)


def test_native_forward_carries_concurrent_requests_to_the_pod(ollama: int, tmp_path: Path) -> None:
    state = ApiState(service(), [pod("runtime-a")], {"runtime-a": ollama})
    with fake_api(state, tmp_path) as kubeconfig:
        ctx, err = cli_context(kubeconfig)
        start_together = threading.Barrier(8)

        def request(kind: str) -> Any:
            start_together.wait()
            return get(url, "/api/tags") if kind == "tags" else chat(url)

        with portforward.forward(ctx, OBJ) as url, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(request, ["tags"] * 6 + ["chat"] * 2))
    tags, chats = answers[:6], answers[6:]
    assert tags == [(200, {"models": [{"name": "phi4:mini", "model": "phi4:mini"}]})] * 6
    assert all(
        "".join(c["message"]["content"] for c in lines) == "Quantum computing uses qubits." for lines in chats
    )
    assert err.getvalue() == ""
    # One probe stream when it starts, then one stream per connection, all with the user's token.
    assert state.upgrades == [("runtime-a", "11434", "Bearer t0ken")] * 9
    assert state.pod_lists == ["app.kubernetes.io/instance=assistant,app.kubernetes.io/name=slm-runtime"]


def test_a_replaced_pod_is_chosen_again_for_new_connections(ollama: int, tmp_path: Path) -> None:
    state = ApiState(service(), [pod("runtime-a")], {"runtime-a": ollama})
    with fake_api(state, tmp_path) as kubeconfig:
        ctx, err = cli_context(kubeconfig)
        with portforward.forward(ctx, OBJ) as url:
            assert get(url, "/api/tags")[0] == 200
            # Pod a is gone (its upgrade answers 404): the same connection goes to b instead.
            state.pods, state.backends = [pod("runtime-b")], {"runtime-b": ollama}
            assert get(url, "/api/tags")[0] == 200
            # Pod b is leaving and its port refuses: that connection fails, the next one goes to c.
            with socket.socket() as closed:
                closed.bind(("127.0.0.1", 0))
                state.backends["runtime-b"] = closed.getsockname()[1]
            state.pods = [pod("runtime-b", deleting=True), pod("runtime-c")]
            state.backends["runtime-c"] = ollama
            with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
                get(url, "/api/tags")
            assert get(url, "/api/tags")[0] == 200
    assert [name for name, _, _ in state.upgrades] == [
        "runtime-a", "runtime-a", "runtime-a", "runtime-b", "runtime-b", "runtime-c",
    ]  # fmt: skip
    assert err.getvalue().startswith("port-forward: Pod ai/runtime-b port 11434: error forwarding port 11434")
    assert err.getvalue().count("\n") == 1


def test_rbac_and_a_missing_service_or_ready_pod_fail_at_the_start_in_one_line(
    ollama: int, tmp_path: Path
) -> None:
    state = ApiState(service(), [pod("runtime-a")], {"runtime-a": ollama}, refuse={"portforward": 403})
    with fake_api(state, tmp_path) as kubeconfig:
        for refuse, expected in (
            ({"portforward": 403}, r"^cannot port-forward to Pod ai/runtime-a port 11434: forbidden \(pods "),
            ({"pods": 403}, r"^cannot list the Pods of Service ai/assistant: forbidden \(cannot list pods\)"),
            ({"service": 403}, r"^cannot read Service ai/assistant: forbidden"),
            ({"service": 404}, r"^SLMDeployment assistant has no Service ai/assistant yet: see `slm why"),
        ):
            state.refuse = refuse
            ctx, err = cli_context(kubeconfig)
            with pytest.raises(CliError) as caught, portforward.forward(ctx, OBJ):
                pass
            assert re.search(expected, caught.value.message), caught.value.message
            assert "\n" not in caught.value.message and err.getvalue() == ""
            if refuse != {"service": 404}:
                assert caught.value.message.endswith(
                    "the port-forward needs RBAC `get services`, `list pods` and `create pods/portforward` "
                    "in namespace ai"
                )
        state.refuse, state.pods = {}, [pod("runtime-a", ready_since=None)]
        with pytest.raises(CliError, match=r"no Ready Pod.*`slm ps` and `slm why assistant`"):
            start(cli_context(kubeconfig)[0])


def test_a_refused_upgrade_falls_back_on_kubectl_in_auto_mode_only(
    ollama: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl, log = fake_kubectl(tmp_path, ollama)
    state = ApiState(service(), [pod("runtime-a")], {"runtime-a": ollama}, refuse={"portforward": 500})
    with fake_api(state, tmp_path) as kubeconfig:
        monkeypatch.setenv("SLM_KUBECTL", str(kubectl))
        ctx, err = cli_context(kubeconfig)
        with portforward.forward(ctx, OBJ) as url:
            assert get(url, "/api/tags")[0] == 200
        assert err.getvalue() == (
            "in-process port-forward unavailable (the API server did not open a port-forward to Pod "
            "ai/runtime-a port 11434 (HTTP 500: error upgrading connection: unable to upgrade connection: "
            "container not found)); using kubectl port-forward\n"
        )
        assert log.read_text().split() == [
            "--kubeconfig",
            str(kubeconfig),
            "port-forward",
            "-n",
            "ai",
            "svc/assistant",
            ":8080",
        ]

        monkeypatch.setenv(portforward.MODE_VARIABLE, "native")
        with pytest.raises(CliError, match=r"\(HTTP 500: .*\); unset SLM_PORT_FORWARD=native to fall back"):
            start(cli_context(kubeconfig)[0])

        monkeypatch.setenv(portforward.MODE_VARIABLE, "auto")
        monkeypatch.delenv("SLM_KUBECTL")
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(
            CliError, match=r"\(HTTP 500: .*\), and kubectl, the fallback, is missing: no kubectl"
        ):
            start(cli_context(kubeconfig)[0])


def test_the_mode_comes_from_the_environment_and_an_explicit_kubectl(
    ollama: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl, log = fake_kubectl(tmp_path, ollama)
    ctx, _ = cli_context(tmp_path / "unused", kubectl=str(kubectl))
    assert portforward.forward_mode(ctx) == "kubectl"
    assert portforward.forward_mode(cli_context(tmp_path)[0]) == "auto"
    for value, mode in (("native", "native"), (" Kubectl ", "kubectl"), ("", "auto")):
        monkeypatch.setenv(portforward.MODE_VARIABLE, value)
        assert portforward.forward_mode(cli_context(tmp_path)[0]) == mode
    monkeypatch.setenv(portforward.MODE_VARIABLE, "native")
    assert portforward.forward_mode(ctx) == "native"  # the variable, said explicitly, wins
    monkeypatch.setenv(portforward.MODE_VARIABLE, "spdy")
    with pytest.raises(CliError, match=r"^SLM_PORT_FORWARD=spdy is not one of auto, native, kubectl: fix it"):
        portforward.forward_mode(ctx)

    # --kubectl: no cluster call at all (the kubeconfig does not exist), kubectl forwards.
    monkeypatch.delenv(portforward.MODE_VARIABLE)
    with portforward.forward(ctx, OBJ) as url:
        assert get(url, "/api/tags")[0] == 200
    assert log.read_text().split() == [
        "--kubeconfig", str(tmp_path / "unused"), "port-forward", "-n", "ai", "svc/assistant", ":8080",
    ]  # fmt: skip


def test_without_websocket_support_auto_falls_back_and_native_says_so(
    ollama: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl, _ = fake_kubectl(tmp_path, ollama)
    monkeypatch.setenv("SLM_KUBECTL", str(kubectl))
    monkeypatch.setitem(sys.modules, "websocket", None)  # as when websocket-client is missing
    state = ApiState(service(), [pod("runtime-a")], {"runtime-a": ollama})
    with fake_api(state, tmp_path) as kubeconfig:
        ctx, err = cli_context(kubeconfig)
        with portforward.forward(ctx, OBJ) as url:
            assert get(url, "/api/tags")[0] == 200
        assert err.getvalue().startswith(
            "in-process port-forward unavailable (the kubernetes client cannot open "
        )
        assert err.getvalue().endswith("pip install websocket-client); using kubectl port-forward\n")
        monkeypatch.setenv(portforward.MODE_VARIABLE, "native")
        with pytest.raises(CliError, match=r"pip install websocket-client; unset SLM_PORT_FORWARD=native"):
            start(cli_context(kubeconfig)[0])
    assert (state.pod_lists, state.upgrades) == ([], [])  # it gave up before asking the cluster anything
