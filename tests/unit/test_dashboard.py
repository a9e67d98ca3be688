"""The Grafana dashboard and the PodMonitor in k8s/monitoring/, checked offline.

Every query of the dashboard is parsed as PromQL (`promql-parser`, the Rust parser of the Prometheus
grammar) and its metric names extracted: each name of ours must be one the code's own registries expose,
and the panels the operations guide promises must be there. Whether every name is exposed with a series
per replica on a running stack (vLLM's included) is tests/stack/test_metrics_replicas.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from alignment.scheduler import AlignmentMetrics
from memory.index import EpisodicIndex
from serving.metrics import EngineGateMetrics, HTTPMetrics, MemoryMetrics
from tests import REPO_ROOT
from tests.unit.test_k8s import render

MONITORING = REPO_ROOT / "k8s" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PODMONITOR_SCHEMA = json.loads(
    (REPO_ROOT / "k8s" / "schemas" / "podmonitor-monitoring.coreos.com-v1.json").read_text()
)
# Grafana's own variables, as Grafana substitutes them before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h"}

# What the dashboard must show (the list), as the metric each panel reads.
REQUIRED = {
    "TTFT": "vllm:time_to_first_token_seconds_bucket",
    "TPOT": "vllm:request_time_per_output_token_seconds_bucket",
    "request rate": "vllm:request_success_total",
    "prefix-cache hits": "vllm:prefix_cache_hits_total",
    "prefix-cache queries": "vllm:prefix_cache_queries_total",
    "personalized vs plain TTFT": "personaagent_time_to_first_token_seconds_bucket",
    "memory search latency": "personaagent_memory_search_seconds_bucket",
    "alignment queue": "personaagent_alignment_queue_depth",
    "alignment rounds": "personaagent_alignment_rounds_total",
}


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    """Every target expression of every panel (rows' nested panels included)."""
    dashboard = json.loads(path.read_text())
    panels = [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its parsed syntax tree."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            by_matcher = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            names.update([node.name] if node.name else by_matcher)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    return {name for expr in dashboard_queries(path) for name in metric_names(expr)}


def exposed_names(*registries: CollectorRegistry | Collector) -> set[str]:
    """The sample names a registry's families write (`_total`, `_bucket`, ...), labelled ones included."""
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(
                family.type, [""]
            )
            names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_extraction_reads_the_syntax_tree_and_refuses_broken_queries() -> None:
    expr = 'sum by (replica) (rate(a_total{x="b_total"}[$__rate_interval])) / on () group_left {__name__="c"}'
    assert metric_names(expr) == {"a_total", "c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(a_total[5m])")


def test_every_query_parses_and_every_name_of_ours_is_exposed_by_our_registries() -> None:
    ours = exposed_names(
        HTTPMetrics().registry,
        MemoryMetrics(EpisodicIndex(4, "cpu")).registry,
        AlignmentMetrics().registry,
        EngineGateMetrics(None).registry,
    )
    used = dashboard_metric_names()
    unknown = {name for name in used if not name.startswith("vllm:")} - ours
    assert not unknown, f"the dashboard reads metrics nobody exposes: {sorted(unknown)}"
    assert {name for name in used if name.startswith("vllm:")}, (
        "no engine metric: the stack test checks those"
    )


def test_the_dashboard_shows_what_the_operations_guide_promises() -> None:
    used = dashboard_metric_names()
    missing = {what: name for what, name in REQUIRED.items() if name not in used}
    assert not missing
    plain_vs_personalized = [e for e in dashboard_queries() if "personaagent_time_to_first_token" in e]
    assert all("personalized" in expr for expr in plain_vs_personalized)
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    # Per-replica panels split by the label the aggregating /metrics adds.
    engine_panels = [e for e in dashboard_queries() if "vllm:" in e and "sum" in e]
    assert engine_panels and all("replica" in expr for expr in engine_panels)


def test_the_podmonitor_validates_and_scrapes_the_head_pods_serve_port() -> None:
    [monitor] = render(MONITORING)
    jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for variant in ("cpu", "gpu"):
        [service] = [d for d in render(REPO_ROOT / "k8s" / variant) if d["kind"] == "RayService"]
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        ports = {
            p["name"]: p["containerPort"] for c in head["spec"]["containers"] for p in c.get("ports", [])
        }
        assert ports[endpoint["port"]] == 8000, variant
        assert monitor["spec"]["selector"]["matchLabels"].items() <= head["metadata"]["labels"].items(), (
            variant
        )
        workers = service["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])
        for group in workers:  # one target only: the aggregate of every replica, not once per pod
            labels = group["template"]["metadata"]["labels"]
            assert not monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), variant


@pytest.mark.parametrize(
    ("path", "value"),
    [(("spec", "podMetricsEndpoints", 0, "interval"), "30 seconds"),
     (("spec", "podMetricsEndpoints", 0, "scrapeInterval"), "30s"),
     (("spec", "selektor"), {})],
    ids=["bad-duration", "unknown-endpoint-field", "unknown-spec-field"],
)  # fmt: skip
def test_the_schema_rejects_broken_podmonitors(path: tuple[Any, ...], value: Any) -> None:
    [monitor] = render(MONITORING)
    broken = copy.deepcopy(monitor)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PODMONITOR_SCHEMA)


def test_the_operations_guide_names_every_file_it_ships() -> None:
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    assert "## Metrics" in guide
    for name in ("k8s/monitoring/grafana-dashboard.json", "k8s/monitoring/podmonitor.yaml"):
        assert name in guide
    documented = set(re.findall(r"`(personaagent_[a-z_]+|vllm:[a-z_]+)`", guide))
    families = {re.sub(r"_(bucket|total)$", "", n) for n in dashboard_metric_names()}
    assert families <= {re.sub(r"_(bucket|total)$", "", n) for n in documented}, families - documented


def test_the_dashboard_is_valid_json_a_grafana_import_takes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {"title", "uid", "panels", "schemaVersion"} <= set(dashboard)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert yaml.safe_load(DASHBOARD.read_text()) == dashboard  # plain JSON, no comments
