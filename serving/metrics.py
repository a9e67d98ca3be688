"""Prometheus metrics of every replica, merged into the one `/metrics` page (no Ray here).

Why an aggregating `/metrics` and not Ray's per-node metrics export: Ray's node agents export only metrics
made with `ray.util.metrics`; vLLM's engine metrics and ours are `prometheus_client` metrics in each
replica's own process, so that route would mean vLLM's Ray stat logger (its names turn into
`ray_vllm_*`), every metric of ours rewritten against Ray's API (which the Ray-free layers cannot import),
Ray's metrics-agent port opened on every pod, and a scrape target per node. Instead the ingress asks every replica
of every deployment (Ray Serve's `DeploymentHandle.broadcast`, `serving/deployments/handles.py`) for its
exposition text and merges them here, each series labelled with its `deployment` and `replica`: one
scrape target, the same with `personaagent serve` on one machine as on KubeRay, and the `prometheus_client`
objects each layer already has. The price is a fan-out per scrape (one small call per replica, every
scrape interval) and a replica that does not answer within `server.metrics_timeout_s` missing from that
scrape (`personaagent_metrics_collect_errors` counts those).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from pydantic import BaseModel

from memory.index import EpisodicIndex
from serving.backend import ChatBackend
from serving.background_gate import BackgroundGate
from serving.ports import AlignmentPort

FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ReplicaMetrics(BaseModel):
    """One replica's exposition text and where it came from."""

    deployment: str
    replica: str
    text: str


class MetricsScrape(BaseModel):
    """Every replica's answer to one scrape, and per deployment how many answers are missing."""

    parts: list[ReplicaMetrics]
    errors: dict[str, int] = {}


class MetricsSource(Protocol):
    async def collect(self) -> MetricsScrape: ...


class HTTPMetrics:
    """Request counts and latencies of one ingress replica (its own registry: no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "personaagent_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "personaagent_http_request_duration_seconds",
            "HTTP request latency (until headers for streamed responses).",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        # Measured where both paths meet, so personalized and plain compare like for like: vLLM's own
        # time_to_first_token_seconds starts when the engine gets a request, after the agent's preparation.
        self.first_token = Histogram(
            "personaagent_time_to_first_token_seconds",
            "Streamed responses: arrival at the ingress until the first event leaves (it carries the first "
            "generated token), by route and by whether a user's agent answered (personalized).",
            ["route", "personalized"],
            registry=self.registry,
            buckets=FIRST_TOKEN_BUCKETS,
        )

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class _IndexCache(Collector):
    """The episodic index's RAM cache, read at scrape time (the index keeps plain counts)."""

    def __init__(self, index: EpisodicIndex) -> None:
        self.index = index

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "personaagent_memory_index_cache_users",
            "Users whose episodic index is in RAM (memory.index_cache_users at most).",
            value=len(self.index.users()),
        )
        yield CounterMetricFamily(
            "personaagent_memory_index_cache_hits",
            "Index reads that found the user's index in RAM.",
            value=self.index.cache_hits,
        )
        yield CounterMetricFamily(
            "personaagent_memory_index_cache_loads",
            "User indexes rebuilt from the stored embeddings (first use, or after eviction).",
            value=self.index.cache_loads,
        )


class MemoryMetrics:
    """Metrics of one memory replica: search latency, the index cache, embeddings served."""

    def __init__(self, index: EpisodicIndex) -> None:
        self.registry = CollectorRegistry()
        self.search_latency = Histogram(
            "personaagent_memory_search_seconds",
            "Episodic memory searches as the replica answers them: batching wait, embedding, FAISS search.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.embedded_inputs = Counter(
            "personaagent_embeddings_inputs_total",
            "Inputs embedded for /v1/embeddings.",
            registry=self.registry,
        )
        self.registry.register(_IndexCache(index))

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class EngineGateMetrics:
    """One engine replica's background gate (alignment held back while chat runs), read at scrape time;
    without a gate the gauges stay 0."""

    def __init__(self, gate: BackgroundGate | None) -> None:
        self.registry = CollectorRegistry()
        for field, doc in (
            ("foreground_running", "Chat requests running in this engine replica."),
            ("background_running", "Alignment requests admitted and running in this engine replica."),
            ("background_waiting", "Alignment requests held back while chat runs (alignment.yield_to_chat)."),
        ):
            gauge = Gauge(f"personaagent_engine_{field}", doc, registry=self.registry)
            if gate is not None:
                gauge.set_function(lambda f=field: getattr(gate.stats(), f))

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class LocalMetrics:
    """`MetricsSource` without Ray (an app built in-process, the unit tests): this process's parts."""

    def __init__(self, http: HTTPMetrics, backend: ChatBackend, alignment: AlignmentPort | None) -> None:
        self.http, self.backend, self.alignment = http, backend, alignment

    async def collect(self) -> MetricsScrape:
        parts = [
            ReplicaMetrics(deployment="ingress", replica="local", text=self.http.text()),
            ReplicaMetrics(deployment="engine", replica="local", text=await self.backend.metrics_text()),
        ]
        if self.alignment is not None:
            text = await self.alignment.metrics_text()
            parts.append(ReplicaMetrics(deployment="alignment", replica="local", text=text))
        return MetricsScrape(parts=parts)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _registry_of(families: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return registry


def merge_replica_metrics(scrape: MetricsScrape) -> str:
    """One exposition of every replica's text, each series labelled `deployment` and `replica` (a label of
    the same name already there is kept as `exported_<name>`, as Prometheus does on a clash), and the
    scrape's own errors."""
    families: dict[str, Metric] = {}
    for part in scrape.parts:
        for family in text_string_to_metric_families(part.text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            added = {"deployment": part.deployment, "replica": part.replica}
            for sample in family.samples:
                labels = {(f"exported_{k}" if k in added else k): v for k, v in sample.labels.items()}
                merged.samples.append(sample._replace(labels=added | labels))
    errors = GaugeMetricFamily(
        "personaagent_metrics_collect_errors",
        "Replicas whose metrics this scrape lacks: one per failed answer, or 1 for a deployment that did not "
        "answer at all within server.metrics_timeout_s.",
        labels=["deployment"],
    )
    for deployment, count in sorted(scrape.errors.items()):
        errors.add_metric([deployment], count)
    return generate_latest(_registry_of([*families.values(), errors])).decode()
