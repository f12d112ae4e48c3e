"""Prometheus metrics of the operator itself (one registry per process, passed around)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "slm_operator_reconciles_total",
            "Reconciles of SLMDeployments, by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "slm_operator_reconcile_errors_total",
            "Reconciles that failed (an API error, a lost connection, any exception) and were retried with backoff.",
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "slm_operator_reconcile_duration_seconds",
            "Time one reconcile took, API calls included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.placements = Counter(
            "slm_operator_placements_total",
            "Placement decisions made (a new or changed decision), by tier.",
            ["tier"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "slm_operator_api_requests_total",
            "Requests the reconciler sent to the Kubernetes API, by verb and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.nodes = Gauge(
            "slm_operator_nodes",
            "Nodes in the operator's inventory (from its Node watch).",
            registry=self.registry,
        )
        self.managed = Gauge(
            "slm_operator_slmdeployments", "SLMDeployments the operator reconciles.", registry=self.registry
        )
