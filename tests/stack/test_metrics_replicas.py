"""`/metrics` of a stack with TWO engine replicas: every metric name the Grafana dashboard's queries use
(k8s/monitoring/grafana-dashboard.json, parsed as PromQL) is exposed with a series for each replica of the
deployment that exports it. Before the aggregating `/metrics`, the engine series of only one replica (the
one the ingress's handle happened to reach) were there, and none carried a replica label.

This module starts its own small stack (SmolLM2, a 1024-token context, 1 GiB of KV cache per replica), the
one stack of the suite with custom settings; run it under `flock /tmp/stack.lock` like every stack test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.servers import free_port
from tests.stack.harness import Stack, stack_env
from tests.unit.test_dashboard import dashboard_metric_names

# Starts a stack of its own: runs before the shared stack starts, so two stacks never run at once.
pytestmark = pytest.mark.first

MODEL = "smollm2-135m-instruct"
# Replicas per deployment in this stack (engine.num_replicas=2; the others run one).
REPLICAS = {"engine": 2, "ingress": 1, "memory": 1, "alignment": 1}


@pytest.fixture(scope="module")
def two_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("data-two-engines")
    log_path = tmp_path_factory.mktemp("logs") / "stack-two-engines.log"
    env = stack_env(port, data_dir) | {
        "PERSONAAGENT_ENGINE__NUM_REPLICAS": "2",
        "PERSONAAGENT_ENGINE__MAX_MODEL_LEN": "1024",
        "PERSONAAGENT_ENGINE__MAX_NUM_SEQS": "16",
        "PERSONAAGENT_ENGINE__CPU_KVCACHE_SPACE_GIB": "1",
        "PERSONAAGENT_SERVER__MAX_TOKENS": "256",
    }
    stack = Stack(port, data_dir, log_path, env)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _series(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its series."""
    found: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append(sample.labels)
    return found


def test_every_dashboard_metric_has_a_series_per_replica(two_engines: Stack) -> None:
    client = two_engines.openai()
    question = [{"role": "user", "content": "Name one river."}]
    # A streamed plain chat and a streamed personalized one: the time-to-first-token series of each kind.
    for user in (None, "metrics-alice"):
        extra = {"user": user} if user else {}
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=question, max_tokens=4, stream=True, **extra)
        )
        assert chunks
    with two_engines.http() as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    series = _series(response.text)

    engine_replicas = {labels["replica"] for labels in series["vllm:num_requests_running"]}
    assert len(engine_replicas) == 2, engine_replicas
    problems = []
    for name in sorted(dashboard_metric_names()):
        if not series.get(name):
            problems.append(f"{name}: not exposed")
            continue
        replicas: dict[str, set[str]] = defaultdict(set)
        for labels in series[name]:
            replicas[labels["deployment"]].add(labels["replica"])
        for deployment, seen in replicas.items():
            if len(seen) != REPLICAS[deployment]:
                problems.append(
                    f"{name}: {deployment} replicas {sorted(seen)}, expected {REPLICAS[deployment]}"
                )
        if name.startswith("vllm:") and replicas.get("engine") != engine_replicas:
            problems.append(f"{name}: engine replicas {replicas.get('engine')} != {engine_replicas}")
    assert not problems, "\n".join(problems)
    personalized = {
        labels["personalized"] for labels in series["personaagent_time_to_first_token_seconds_count"]
    }
    assert personalized == {"true", "false"}
    assert not series.get("personaagent_metrics_collect_errors"), "a replica did not answer the scrape"
