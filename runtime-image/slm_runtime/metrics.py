"""Prometheus metrics, vLLM-style names under `slm_`, OTel GenAI bucket boundaries, one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_MODEL = ("model_name",)


class RuntimeMetrics:
    """All metrics of one app, labelled by the served model name."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        r = self.registry
        self.time_to_first_token = Histogram(
            "slm_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
            _MODEL,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "slm_inter_token_latency_seconds",
            "Time between consecutive output tokens of a request.",
            _MODEL,
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "slm_e2e_request_latency_seconds",
            "Time from request arrival to its last token.",
            _MODEL,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "slm_request_queue_time_seconds",
            "Time a request waited for a free slot.",
            _MODEL,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("slm_prompt_tokens", "Prompt tokens processed.", _MODEL, registry=r)
        self.generation_tokens = Counter("slm_generation_tokens", "Tokens generated.", _MODEL, registry=r)
        self.prefix_cache_queries = Counter(
            "slm_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", _MODEL, registry=r
        )
        self.prefix_cache_hits = Counter(
            "slm_prefix_cache_hits", "Prompt tokens reused from the prefix cache.", _MODEL, registry=r
        )
        self.request_success = Counter(
            "slm_request_success",
            "Finished generation requests by finish reason.",
            (*_MODEL, "finished_reason"),
            registry=r,
        )
        self.embedding_inputs = Counter("slm_embedding_inputs", "Inputs embedded.", _MODEL, registry=r)
        self.requests_running = Gauge(
            "slm_num_requests_running", "Requests holding a generation slot.", _MODEL, registry=r
        )
        self.requests_waiting = Gauge(
            "slm_num_requests_waiting", "Requests queued for a slot.", _MODEL, registry=r
        )
        self.model_load_time = Gauge(
            "slm_model_load_time_seconds", "Seconds the model took to load.", _MODEL, registry=r
        )
        self.model_loaded = Gauge("slm_model_loaded", "1 once the model serves.", _MODEL, registry=r)
        self.provider_fallback = Gauge(
            "slm_execution_provider_fallback",
            "1 when the requested execution provider or device was unavailable and a fallback is used.",
            (*_MODEL, "backend", "execution_provider"),
            registry=r,
        )
        self.rejected = Counter(
            "slm_requests_rejected", "Requests refused because the queue was full.", _MODEL, registry=r
        )
        for metric in (self.requests_running, self.requests_waiting, self.model_loaded):
            metric.labels(model_name).set(0)

    def set_queue(self, running: int, waiting: int) -> None:
        self.requests_running.labels(self.model_name).set(running)
        self.requests_waiting.labels(self.model_name).set(waiting)
