"""The CLI's in-process port-forward against the real API server, kubelet and SmolLM2 runtime pod.

The CLI finds no kubectl: PATH holds none, and a fallback to kubectl fails the test. The API server
upgrades pods/portforward to a websocket, the real node's kubelet and containerd connect it to the
runtime container's port, and several HTTP requests share the forward at once.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from slm_operator.cli import portforward
from slm_operator.cli.__main__ import main
from slm_operator.cli.commands import Context
from slm_operator.cli.errors import CliError
from tests.k8s import test_real_node as real_node
from tests.k8s.conftest import wait_for
from tests.k8s.test_real_node import E2E, ENGLISH

pytestmark = [pytest.mark.k8s, pytest.mark.realnode, pytest.mark.slow]

# test_real_node's fixtures: the operator installed by its chart, and SmolLM2 Ready on the real node.
e2e = real_node.e2e
served = real_node.served


@pytest.fixture
def no_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubectl on PATH, none named by $SLM_KUBECTL, and a fallback to one fails the test."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("SLM_KUBECTL", raising=False)
    monkeypatch.delenv(portforward.MODE_VARIABLE, raising=False)

    def refuse(*_: Any) -> list[str]:
        raise CliError("the test forbids kubectl: the in-process port-forward should have been used")

    monkeypatch.setattr(portforward, "forward_command", refuse)
    assert shutil.which("kubectl") is None


def context(e2e: E2E) -> tuple[Context, io.StringIO]:
    args = argparse.Namespace(
        kubeconfig=str(e2e.cluster.kubeconfig), context=None, namespace=e2e.namespace, kubectl=None
    )
    err = io.StringIO()
    return Context(args=args, err=err), err


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at once, each on a connection of its own; their results in order."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def tags(url: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=120, trust_env=False) as client:
        response = client.get("/api/tags")
        response.raise_for_status()
        return list(response.json()["models"])


def chat(url: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": False,
        "options": {"num_predict": 8},
    }
    with httpx.Client(base_url=url, timeout=180, trust_env=False) as client:
        response = client.post("/api/chat", json=body)
        response.raise_for_status()
        return dict(response.json())


def test_native_forward_carries_concurrent_requests_to_the_runtime_pod(
    e2e: E2E,
    served: str,
    no_kubectl: None,
) -> None:
    obj = e2e.get(served)
    ctx, err = context(e2e)
    with portforward.forward(ctx, obj) as url:
        assert url.startswith("http://127.0.0.1:")
        [model] = tags(url)
        name = str(model["name"])
        results = concurrently([lambda: tags(url)] * 6 + [lambda: chat(url, name)] * 2)
    assert results[:6] == [[model]] * 6
    for reply in results[6:]:
        assert reply["done"] is True
        assert ENGLISH.search(reply["message"]["content"]), reply
    assert err.getvalue() == ""


def test_slm_run_answers_with_no_kubectl_anywhere(
    e2e: E2E,
    served: str,
    no_kubectl: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a pipe with nothing in it, not a terminal
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["run", served, "What is the capital of France?", "--verbose",
         "--kubeconfig", str(e2e.cluster.kubeconfig), "-n", e2e.namespace],
        out=out, err=err,
    )  # fmt: skip
    assert code == 0, err.getvalue()
    assert ENGLISH.search(out.getvalue()), out.getvalue()
    assert "eval rate:" in err.getvalue()
    assert "port-forward" not in err.getvalue()  # no fallback notice, no failed connection


def test_new_connections_reach_the_pod_that_replaced_the_forwarded_one(
    e2e: E2E,
    served: str,
    no_kubectl: None,
) -> None:
    obj = e2e.get(served)
    [before] = e2e.runtime_pods(served)
    ctx, _ = context(e2e)
    with portforward.forward(ctx, obj) as url:
        [model] = tags(url)
        e2e.cluster.kubectl("delete", "pod", before["metadata"]["name"], "-n", e2e.namespace, "--wait=true")

        def replaced() -> bool:
            pods = [p for p in e2e.runtime_pods(served) if not p["metadata"].get("deletionTimestamp")]
            return any(p["metadata"]["name"] != before["metadata"]["name"] for p in pods) and all(
                c.get("ready") for p in pods for c in p["status"].get("containerStatuses") or [{}]
            )

        wait_for(replaced, timeout=300, interval=2, what="a Ready runtime Pod replacing the deleted one")
        # The same forward, a new connection: it finds the new Pod (the old one is gone).
        assert tags(url) == [model]
        assert ENGLISH.search(chat(url, str(model["name"]))["message"]["content"])
