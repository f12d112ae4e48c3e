"""Benchmark: the operator at scale against the real local control plane (not a test).

For each size N it applies N SLMDeployments (``qwen2.5:0.5b`` on CPU) in a fresh namespace,
watched by a fresh ``python -m slm_operator`` process, and measures:

- wall time until every object is Placed=True and Ready=True for its generation, with its
  Deployment (Available) and Service present (kwok makes pods Ready and Jobs complete);
- API requests the reconciler sent, per reconcile, by verb (from the operator's /metrics;
  Kopf's own watch streams are not in that counter);
- reconciles per second and the p50/p95 reconcile duration (histogram interpolation);
- steady state: after everything is Ready and the reconcile counter has settled, the write
  requests (PATCH/POST/PUT/DELETE) the operator makes in a quiet window (goal: zero), and
  how many SLMDeployments and children changed resourceVersion in that window;
- the operator's peak RSS (VmHWM from /proc).

It prints figures and a table; there are no thresholds.

    .venv/bin/python benchmarks/operator_scale.py --sizes 100,1000 --json /tmp/operator-scale.json

It starts its own control plane in --state-dir (stopped and removed at the end), or reuses
the one a ``slm-local`` --kubeconfig points at (``make cluster-up``). Either way it adds its
own roomy fake CPU nodes and 20Gi ReadWriteOnce PersistentVolumes and removes them, the
namespaces and the operator afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from slm_dev import cluster as localcluster
from slm_dev.auth import CONTEXT_NAME, client_ssl_context
from slm_dev.cluster import LocalCluster
from slm_dev.cluster_objects import persistent_volume
from slm_dev.operator_process import OperatorProcess
from slm_dev.paths import REPO_ROOT
from slm_dev.processes import pid_alive

BENCH_LABEL = "slm.dev/bench"
BENCH_VALUE = "operator-scale"
WRITE_VERBS = ("PATCH", "POST", "PUT", "DELETE")
CHILD_KINDS = (
    ("/apis/apps/v1", "deployments"),
    ("/api/v1", "services"),
    ("/apis/batch/v1", "jobs"),
    ("/api/v1", "persistentvolumeclaims"),
)


def log(message: str) -> None:
    print(f"[operator-scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(cluster: LocalCluster, operator_pid: int) -> dict[str, float]:
    return {"operator": cpu_seconds(operator_pid)} | {
        name: cpu_seconds(pid) for name, pid in cluster.pids.items()
    }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --- the API, directly (lighter than kubectl for big lists) ---------------------------------
class Api:
    def __init__(self, cluster: LocalCluster) -> None:
        self.server = cluster.server
        self.context = client_ssl_context(cluster.state_dir / "pki")

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.server + path, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=120, context=self.context) as response:
            return json.loads(response.read())

    def items(self, path: str) -> list[dict[str, Any]]:
        return list(self.get(path).get("items") or [])


# --- the operator process -------------------------------------------------------------------
def start_operator(cluster: LocalCluster, namespace: str, log_path: Path) -> OperatorProcess:
    """``python -m slm_operator`` for one namespace, in a session of its own (Ctrl-C reaches only the
    benchmark, which stops it during clean-up); returns once it serves /metrics and has seen the
    node inventory."""
    operator = OperatorProcess(
        cluster.kubeconfig, log_path, ["--namespace", namespace], log_format="json", new_session=True
    )
    operator.start()
    try:
        deadline = time.monotonic() + 120
        while operator.alive() and time.monotonic() < deadline:
            text = operator.metrics(timeout=10)
            if text and parse_metrics(text).nodes > 0:
                return operator
            time.sleep(0.5)
        why = "exited" if not operator.alive() else "was not ready after 120s"
        raise RuntimeError(f"the operator {why}; log:\n{operator.log_tail()}")
    except BaseException:  # Ctrl-C included: the caller's clean-up does not know it yet
        operator.stop()
        raise


# --- metrics --------------------------------------------------------------------------------
@dataclass
class Snapshot:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verb, kind)
    reconciles: Counter[str] = field(default_factory=Counter)  # result
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    duration_sum: float = 0.0
    duration_count: float = 0.0
    nodes: float = 0.0

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            requests=Counter({k: v - other.requests.get(k, 0) for k, v in self.requests.items()}),
            reconciles=Counter({k: v - other.reconciles.get(k, 0) for k, v in self.reconciles.items()}),
            buckets={le: c - other.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            duration_sum=self.duration_sum - other.duration_sum,
            duration_count=self.duration_count - other.duration_count,
            nodes=self.nodes,
        )

    @property
    def total_reconciles(self) -> float:
        return float(sum(self.reconciles.values()))

    def by_verb(self) -> dict[str, float]:
        verbs: Counter[str] = Counter()
        for (verb, _kind), value in self.requests.items():
            verbs[verb] += value
        return {verb: value for verb, value in sorted(verbs.items()) if value}

    def by_verb_kind(self) -> dict[str, float]:
        return {f"{verb} {kind}": v for (verb, kind), v in sorted(self.requests.items()) if v}

    def writes(self) -> float:
        return float(sum(v for (verb, _kind), v in self.requests.items() if verb in WRITE_VERBS))

    def quantile(self, q: float) -> float | None:
        """histogram_quantile: linear interpolation inside the bucket holding rank q."""
        points = sorted(self.buckets.items())
        if not points or points[-1][1] <= 0:
            return None
        rank = q * points[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for le, count in points:
            if count >= rank:
                if le == float("inf"):
                    return lower_bound
                if count == lower_count:
                    return le
                return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
            lower_bound, lower_count = le, count
        return None


def parse_metrics(text: str) -> Snapshot:
    snapshot = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "slm_operator_api_requests_total":
                snapshot.requests[(sample.labels["verb"], sample.labels["kind"])] += sample.value
            elif sample.name == "slm_operator_reconciles_total":
                snapshot.reconciles[sample.labels["result"]] += sample.value
            elif sample.name == "slm_operator_reconcile_duration_seconds_bucket":
                snapshot.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "slm_operator_reconcile_duration_seconds_sum":
                snapshot.duration_sum = sample.value
            elif sample.name == "slm_operator_reconcile_duration_seconds_count":
                snapshot.duration_count = sample.value
            elif sample.name == "slm_operator_nodes":
                snapshot.nodes = sample.value
    return snapshot


# --- cluster set-up ---------------------------------------------------------------------------
def free_service_ips(cluster: LocalCluster, api: Api) -> int | None:
    """Cluster IPs still free (from the ServiceCIDRs); None when the API does not say."""
    try:
        cidrs = api.items("/apis/networking.k8s.io/v1/servicecidrs")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    total = 0
    for item in cidrs:
        for cidr in (item.get("spec") or {}).get("cidrs") or []:
            if ":" not in cidr:
                total += 2 ** (32 - int(cidr.split("/")[1])) - 2
    if not total:
        return None
    used = sum(
        1
        for s in api.items("/api/v1/services")
        if (s.get("spec") or {}).get("clusterIP") not in (None, "", "None")
    )
    return total - used


def bench_nodes(count: int) -> list[dict[str, Any]]:
    """Roomy CPU nodes, so that every runtime pod schedules (kwok runs them for free)."""
    resources = {"cpu": "2000", "memory": "16Ti", "ephemeral-storage": "100Ti", "pods": "2500"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"bench-cpu-{i}", "labels": {BENCH_LABEL: BENCH_VALUE}},
            "status": {"capacity": dict(resources), "allocatable": dict(resources)},
        }
        for i in range(count)
    ]


def create_in_chunks(cluster: LocalCluster, objects: list[dict[str, Any]], chunk: int, *args: str) -> None:
    for start in range(0, len(objects), chunk):
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects[start : start + chunk]})
        cluster.kubectl(*args, "-f", "-", input=text, timeout=600)


def add_volumes(cluster: LocalCluster, count: int) -> None:
    """``count`` fresh 20Gi ReadWriteOnce PVs (the only kind small models claim), labelled ours."""
    volumes = []
    for _ in range(count):
        pv = persistent_volume("ReadWriteOnce", "20Gi", cluster.state_dir)
        pv["metadata"]["name"] = f"bench-rwo-20gi-{uuid.uuid4().hex[:10]}"
        pv["metadata"]["labels"] = {BENCH_LABEL: BENCH_VALUE}
        volumes.append(pv)
    create_in_chunks(cluster, volumes, 250, "create")


def slm_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "labels": {BENCH_LABEL: BENCH_VALUE}},
        "spec": {"model": {"name": "qwen2.5:0.5b"}, "hardware": {"preferred": "cpu"}},
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return {}


def is_true(obj: dict[str, Any], type_: str) -> bool:
    current = condition(obj, type_)
    return current.get("status") == "True" and current.get("observedGeneration") == obj["metadata"].get(
        "generation"
    )


def deployment_available(deployment: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Available" and c.get("status") == "True"
        for c in (deployment.get("status") or {}).get("conditions") or []
    )


def resource_versions(api: Api, namespace: str) -> dict[str, str]:
    versions = {
        f"SLMDeployment/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in api.items(f"/apis/slm.dev/v1alpha1/namespaces/{namespace}/slmdeployments")
    }
    for prefix, plural in CHILD_KINDS:
        for obj in api.items(f"{prefix}/namespaces/{namespace}/{plural}"):
            versions[f"{plural}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return versions


# --- one size ---------------------------------------------------------------------------------
@dataclass
class Options:
    steady_seconds: float
    settle_seconds: float
    poll_seconds: float
    timeout: float
    chunk: int
    workdir: Path


def run_size(
    cluster: LocalCluster, api: Api, size: int, opts: Options, cleanup: list[Any], wait_deletion: bool
) -> dict[str, Any]:
    free = free_service_ips(cluster, api)
    if free is not None and free < size:
        raise RuntimeError(
            f"N={size}: only {free} Service cluster IPs are free in this control plane (each "
            "SLMDeployment gets a Service); let the benchmark start its own control plane"
        )
    namespace = f"slm-bench-{size}-{uuid.uuid4().hex[:6]}"
    log(f"N={size}: namespace {namespace}; {free} Service IPs free; creating {size} PersistentVolumes")
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "namespace", namespace, f"{BENCH_LABEL}={BENCH_VALUE}")
    cleanup.append(("namespace", namespace))
    add_volumes(cluster, size)

    operator = start_operator(cluster, namespace, opts.workdir / f"operator-{size}.log")
    cleanup.append(("operator", operator))
    before = parse_metrics(operator.metrics(timeout=10))
    operator_pid = operator.pid or 0
    log(f"N={size}: operator up (pid {operator_pid}); applying")

    objects = [slm_deployment(f"bench-{i:05d}-{uuid.uuid4().hex[:4]}") for i in range(size)]
    loads: list[str] = [load_average()]
    cpu_before = cpu_by_process(cluster, operator_pid)
    started = time.monotonic()
    create_in_chunks(
        cluster,
        objects,
        opts.chunk,
        "apply",
        "--server-side",
        "--field-manager=operator-scale",
        "-n",
        namespace,
    )
    applied_s = time.monotonic() - started
    log(f"N={size}: applied in {applied_s:.1f}s; waiting for all Placed and Ready")

    placed_s: float | None = None
    ready_s: float | None = None
    last_report = 0.0
    path = f"/apis/slm.dev/v1alpha1/namespaces/{namespace}/slmdeployments"
    while True:
        now = time.monotonic() - started
        if now > opts.timeout:
            raise RuntimeError(f"N={size}: not all Ready after {opts.timeout:.0f}s")
        if not operator.alive():
            raise RuntimeError(f"the operator exited; log:\n{operator.log_tail()}")
        items = api.items(path)
        placed = sum(1 for o in items if is_true(o, "Placed"))
        ready = sum(1 for o in items if is_true(o, "Placed") and is_true(o, "Ready"))
        if placed_s is None and placed == size:
            placed_s = now
        if now - last_report >= 15:
            last_report = now
            loads.append(load_average())
            log(f"N={size}: t={now:.0f}s placed {placed}/{size}, ready {ready}/{size}, load {loads[-1]}")
        if ready == size:
            names = {o["metadata"]["name"] for o in items}
            deployments = api.items(f"/apis/apps/v1/namespaces/{namespace}/deployments")
            services = api.items(f"/api/v1/namespaces/{namespace}/services")
            available = {d["metadata"]["name"] for d in deployments if deployment_available(d)}
            served = {s["metadata"]["name"] for s in services}
            if names <= available and names <= served:
                ready_s = time.monotonic() - started
                break
        time.sleep(opts.poll_seconds)
    converged = parse_metrics(operator.metrics(timeout=10))
    cpu_converged = cpu_by_process(cluster, operator_pid)
    loads.append(load_average())
    log(f"N={size}: all Ready with children in {ready_s:.1f}s (placed at {placed_s:.1f}s)")

    # Settle: trailing reconciles (the last children's status events) drain first.
    settle_started = time.monotonic()
    previous = converged.total_reconciles
    quiet_since = time.monotonic()
    while time.monotonic() - settle_started < max(opts.settle_seconds * 6, 60):
        time.sleep(1)
        current = parse_metrics(operator.metrics(timeout=10)).total_reconciles
        if current != previous:
            previous, quiet_since = current, time.monotonic()
        elif time.monotonic() - quiet_since >= opts.settle_seconds:
            break
    settled = parse_metrics(operator.metrics(timeout=10))
    settle_s = time.monotonic() - settle_started

    log(f"N={size}: steady-state window of {opts.steady_seconds:.0f}s")
    versions_before = resource_versions(api, namespace)
    window_start = parse_metrics(operator.metrics(timeout=10))
    cpu_steady = cpu_seconds(operator_pid)
    time.sleep(opts.steady_seconds)
    window_end = parse_metrics(operator.metrics(timeout=10))
    cpu_steady = cpu_seconds(operator_pid) - cpu_steady
    versions_after = resource_versions(api, namespace)
    loads.append(load_average())
    changed = sorted(k for k, v in versions_after.items() if versions_before.get(k) != v)
    steady = window_end - window_start

    convergence = converged - before
    through_settle = settled - before
    reconciles = through_settle.total_reconciles
    memory = operator.memory()  # VmHWM is the kernel's own peak: read once, before the stop
    result: dict[str, Any] = {
        "size": size,
        "namespace": namespace,
        "apply_seconds": round(applied_s, 2),
        "all_placed_seconds": round(placed_s or 0.0, 2),
        "all_ready_seconds": round(ready_s or 0.0, 2),
        "settle_seconds": round(settle_s, 2),
        "reconciles": reconciles,
        "reconciles_by_result": dict(through_settle.reconciles),
        "reconciles_per_object": round(reconciles / size, 2),
        "reconciles_per_second": round(convergence.total_reconciles / ready_s, 2) if ready_s else None,
        "reconcile_p50_ms": _ms(through_settle.quantile(0.5)),
        "reconcile_p95_ms": _ms(through_settle.quantile(0.95)),
        "reconcile_mean_ms": _ms(through_settle.duration_sum / through_settle.duration_count)
        if through_settle.duration_count
        else None,
        "requests": sum(through_settle.requests.values()),
        "requests_per_reconcile": round(sum(through_settle.requests.values()) / reconciles, 2)
        if reconciles
        else None,
        "requests_per_reconcile_by_verb": {
            verb: round(v / reconciles, 2) for verb, v in through_settle.by_verb().items()
        }
        if reconciles
        else {},
        "requests_per_object_by_verb_kind": {
            k: round(v / size, 2) for k, v in through_settle.by_verb_kind().items()
        },
        "steady_window_seconds": opts.steady_seconds,
        "steady_reconciles": steady.total_reconciles,
        "steady_requests_by_verb_kind": steady.by_verb_kind(),
        "steady_writes": steady.writes(),
        "steady_changed_resource_versions": len(changed),
        "steady_changed_slmdeployments": sum(1 for k in changed if k.startswith("SLMDeployment/")),
        "steady_changed_examples": changed[:10],
        "convergence_cpu_seconds": {
            name: round(cpu_converged[name] - cpu_before.get(name, 0.0), 1) for name in cpu_converged
        },
        "steady_operator_cpu_seconds": round(cpu_steady, 2),
        "operator_peak_rss_mib": round(memory.peak_kib / 1024, 1),
        "operator_rss_end_mib": round(memory.rss_kib / 1024, 1),
        "load_average_samples": loads,
        "operator_log": str(operator.log_path),
    }
    operator.stop()
    cleanup.remove(("operator", operator))
    # Before the next size the namespace must be gone; a control plane about to stop needs no wait.
    delete_namespace(cluster, namespace, wait=wait_deletion)
    cleanup.remove(("namespace", namespace))
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def delete_namespace(cluster: LocalCluster, namespace: str, wait: bool = True) -> None:
    log(f"deleting namespace {namespace}")
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
    if not wait:
        return
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            return
        time.sleep(2)
    log(f"namespace {namespace} still terminating after 300s; moving on")


# --- output -----------------------------------------------------------------------------------
def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [
        ("N",),
        ("apply (kubectl, s)",),
        ("all Placed (s)",),
        ("all Ready + children (s)",),
        ("reconciles (total / per object)",),
        ("reconciles per second",),
        ("reconcile p50 / p95 (ms)",),
        ("API requests per reconcile",),
        ("  by verb",),
        ("steady: window (s) / reconciles",),
        ("steady: write requests",),
        ("steady: operator CPU (s)",),
        ("steady: changed RVs (SLMDeployments / all)",),
        ("operator peak RSS (MiB)",),
        ("CPU s to converge: operator / apiserver / etcd",),
        ("CPU s to converge: KCM / scheduler / kwok",),
        ("load average (start .. end)",),
    ]
    for r in results:
        verbs = ", ".join(f"{v} {n}" for v, n in r["requests_per_reconcile_by_verb"].items())
        cpu = r["convergence_cpu_seconds"]
        values = (
            str(r["size"]),
            f"{r['apply_seconds']:.1f}",
            f"{r['all_placed_seconds']:.1f}",
            f"{r['all_ready_seconds']:.1f}",
            f"{r['reconciles']:.0f} / {r['reconciles_per_object']:.1f}",
            f"{r['reconciles_per_second']}",
            f"{r['reconcile_p50_ms']} / {r['reconcile_p95_ms']}",
            f"{r['requests_per_reconcile']}",
            verbs,
            f"{r['steady_window_seconds']:.0f} / {r['steady_reconciles']:.0f}",
            f"{r['steady_writes']:.0f}",
            f"{r['steady_operator_cpu_seconds']}",
            f"{r['steady_changed_slmdeployments']} / {r['steady_changed_resource_versions']}",
            f"{r['operator_peak_rss_mib']}",
            f"{cpu['operator']} / {cpu.get('kube-apiserver')} / {cpu.get('etcd')}",
            f"{cpu.get('kube-controller-manager')} / {cpu.get('kube-scheduler')} / {cpu.get('kwok')}",
            f"{r['load_average_samples'][0]} .. {r['load_average_samples'][-1]}",
        )
        rows = [(*row, value) for row, value in zip(rows, values, strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------
@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def reuse_cluster(kubeconfig: Path) -> LocalCluster:
    config = json.loads(kubeconfig.read_text())
    if config.get("current-context") != CONTEXT_NAME:
        raise SystemExit(f"{kubeconfig}: context is not {CONTEXT_NAME}; refusing to use it")
    cluster = localcluster.load(kubeconfig.resolve().parent)
    if cluster is None or not all(pid_alive(p) for p in cluster.pids.values()):
        raise SystemExit(f"{kubeconfig}: no running local control plane next to it")
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000", help="comma-separated numbers of SLMDeployments")
    parser.add_argument("--kubeconfig", type=Path, help="reuse this slm-local control plane")
    parser.add_argument("--state-dir", type=Path, help="state folder of the control plane started here")
    parser.add_argument("--steady-seconds", type=float, default=60, help="steady-state window")
    parser.add_argument("--settle-seconds", type=float, default=5, help="quiet time before that window")
    parser.add_argument("--poll-seconds", type=float, default=2, help="status poll interval")
    parser.add_argument("--timeout", type=float, default=1800, help="per size, until all Ready")
    parser.add_argument("--chunk", type=int, default=200, help="objects per kubectl apply")
    parser.add_argument("--nodes", type=int, default=4, help="roomy fake CPU nodes to add")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    opts = Options(
        args.steady_seconds, args.settle_seconds, args.poll_seconds, args.timeout, args.chunk, workdir
    )
    started_here: Path | None = None
    cluster: LocalCluster | None = None
    cleanup: list[Any] = []
    results: list[dict[str, Any]] = []
    log(f"load average {load_average()} on {os.cpu_count()} CPUs; logs in {workdir}")
    with sigterm_as_interrupt():
        try:
            if args.kubeconfig:
                cluster = reuse_cluster(args.kubeconfig)
                log(f"reusing the control plane in {cluster.state_dir}")
            else:
                started_here = (args.state_dir or workdir / "cluster").resolve()
                log(f"starting a control plane in {started_here}")
                cluster = localcluster.up(started_here, localcluster.DEFAULT_NODES_FILE)
            api = Api(cluster)
            for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
                cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
            cluster.kubectl(
                "wait", "--for=condition=Established", "crd/slmdeployments.slm.dev", "--timeout=60s"
            )
            nodes = bench_nodes(args.nodes)
            cleanup.append(("nodes", [n["metadata"]["name"] for n in nodes]))
            cluster.add_nodes(nodes)
            cluster.wait_nodes_ready([n["metadata"]["name"] for n in nodes])
            cleanup.append(("volumes", None))
            for index, size in enumerate(sizes):
                last = index == len(sizes) - 1
                wait_deletion = started_here is None or not last
                results.append(run_size(cluster, api, size, opts, cleanup, wait_deletion))
                log(f"N={size}: done; {json.dumps(results[-1])}")
        except KeyboardInterrupt:
            log("interrupted; cleaning up")
        except (RuntimeError, localcluster.ClusterError, OSError) as error:
            log(f"error: {error}; cleaning up")
        finally:
            if cluster is not None:
                clean(cluster, cleanup, keep_cluster=started_here is None)
            if started_here is not None:
                localcluster.down(started_here)

    if results:
        print(table(results))
        machine = {"cpus": os.cpu_count(), "load_average_end": load_average()}
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
            log(f"wrote {args.json}")
    return 0 if len(results) == len(sizes) else 1


def clean(cluster: LocalCluster, cleanup: list[Any], keep_cluster: bool) -> None:
    """Undo what the benchmark made (in reverse); errors are logged, never raised."""
    for kind, what in reversed(cleanup):
        try:
            if kind == "operator":
                what.stop()
            elif kind == "namespace":
                # On a cluster about to be stopped there is no need to wait.
                delete_namespace(cluster, what, wait=keep_cluster)
            elif kind == "volumes" and keep_cluster:
                cluster.kubectl(
                    "delete", "pv", "-l", f"{BENCH_LABEL}={BENCH_VALUE}", "--wait=false", check=False
                )
            elif kind == "nodes" and keep_cluster:
                cluster.kubectl("delete", "node", *what, "--wait=false", check=False)
        except Exception as error:
            log(f"cleanup of {kind} failed: {error}")


if __name__ == "__main__":
    sys.exit(main())
