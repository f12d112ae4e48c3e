"""Fixtures for tests against the real local control plane.

The control plane starts once per test run (``cluster``), or is reused when
``KUBECONFIG`` points at one that ``make cluster-up`` started (its context is
``slm-local``). Every test gets a fresh namespace (``namespace``) and can add,
remove and relabel fake nodes (``fake_nodes``); nodes a test added are removed
after it.

With ``CI=true`` a control plane that cannot be had fails the run; elsewhere the
cluster tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from slm_dev import cluster as localcluster
from slm_dev.auth import CONTEXT_NAME
from slm_dev.cluster import ClusterError, LocalCluster
from slm_dev.operator_process import OperatorProcess
from slm_dev.processes import pid_alive

T = TypeVar("T")


def _reusable_cluster(kubeconfig: str) -> LocalCluster | None:
    """A cluster from KUBECONFIG, only if it is our local one (never a real cluster)."""
    if not kubeconfig:
        return None
    path = Path(kubeconfig)
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return None
    if config.get("current-context") != CONTEXT_NAME:
        return None
    state_dir = path.parent
    return localcluster.load(state_dir)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    reused = _reusable_cluster(os.environ.get("KUBECONFIG", ""))
    if reused is not None and all(pid_alive(p) for p in reused.pids.values()):
        yield reused
        return
    state_dir = Path(tempfile.mkdtemp(prefix="slm-test-cluster-"))
    try:
        started = localcluster.up(state_dir, localcluster.DEFAULT_NODES_FILE)
    except (ClusterError, OSError) as error:
        message = f"the local control plane could not be started: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield started
    finally:
        localcluster.down(state_dir)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    cluster.ensure_volume_pool()
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].rstrip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_default_service_account(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class FakeNodes:
    """Adds, removes and relabels kwok nodes during a test; cleans up what it added."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.added: list[str] = []
        self.original_labels: dict[str, dict[str, str]] = {}

    def add(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        allocatable: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", **(allocatable or {})}
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": {"taints": list(taints or [])},
            "status": {"capacity": dict(resources), "allocatable": dict(resources)},
        }
        self.cluster.add_nodes([node])
        self.added.append(name)
        if wait:
            self.cluster.wait_nodes_ready([name])
        return node

    def remove(self, name: str) -> None:
        self.cluster.kubectl("delete", "node", name, "--wait=true")
        if name in self.added:
            self.added.remove(name)

    def relabel(self, name: str, labels: dict[str, str | None]) -> None:
        """Set labels; a value of None removes the label."""
        if name not in self.added and name not in self.original_labels:
            node = self.cluster.kubectl_json("get", "node", name)
            self.original_labels[name] = dict(node["metadata"].get("labels", {}))
        args = [f"{key}-" if value is None else f"{key}={value}" for key, value in labels.items()]
        self.cluster.kubectl("label", "node", name, "--overwrite", *args)

    def cleanup(self) -> None:
        for name in list(self.added):
            self.cluster.kubectl("delete", "node", name, "--wait=false", check=False)
        for name, labels in self.original_labels.items():
            current = self.cluster.kubectl_json("get", "node", name)["metadata"].get("labels", {})
            patch = {
                key: labels.get(key)
                for key in set(current) | set(labels)
                if current.get(key) != labels.get(key)
            }
            args = [f"{key}-" if value is None else f"{key}={value}" for key, value in patch.items()]
            if args:
                self.cluster.kubectl("label", "node", name, "--overwrite", *args, check=False)


@pytest.fixture
def fake_nodes(cluster: LocalCluster) -> Iterator[FakeNodes]:
    nodes = FakeNodes(cluster)
    try:
        yield nodes
    finally:
        nodes.cleanup()


# --- the operator under test ---------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((REPO_ROOT / "crds").glob("*.yaml"))


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> list[str]:
    """The generated CRDs, applied once per run and Established."""
    names: list[str] = []
    for path in CRD_FILES:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names.append(yaml.safe_load(path.read_text())["metadata"]["name"])
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return names


@pytest.fixture
def operator_env() -> dict[str, str]:
    """Extra environment (operator settings) for the operator under test; tests may override."""
    return {}


@pytest.fixture
def slm_operator(
    cluster: LocalCluster,
    crds: list[str],
    namespace: str,
    operator_env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        cluster.kubeconfig, tmp_path / "operator.log", ["--namespace", namespace], env=operator_env
    )
    process.start()
    yield process
    process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- operator log ({process.log_path}) ---\n{process.log()[-8000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a cluster of their own (OWN_CLUSTER = True in their module) run first,
    before the shared one starts: there is one real node per machine."""
    first = [item for item in items if getattr(getattr(item, "module", None), "OWN_CLUSTER", False)]
    items[:] = first + [item for item in items if item not in first]
