"""The evaluation harness end to end: two methods on synthetic users through the real stack."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.lamp import LAMP_2M_LABELS, task_spec
from evaluation.methods import EvalSettings
from evaluation.metrics import task_metrics
from evaluation.report import write_reports
from evaluation.runner import RunRequest, run
from tests import REPO_ROOT
from tests.stack.harness import Stack

SYNTHETIC = REPO_ROOT / "evaluation" / "data" / "synthetic"


async def test_two_methods_on_synthetic_users_are_well_formed_and_resume(
    stack: Stack, tmp_path: Path
) -> None:
    request = RunRequest(
        base_url=stack.base_url,
        data=SYNTHETIC,
        tasks=["LaMP-2M"],
        methods=["non_personalized", "persona_agent"],
        out=tmp_path,
        limit=2,
        concurrency=4,
        api_key=stack.api_key,
        settings=EvalSettings(k=3),
    )
    [result] = await run(request)
    assert result.synthetic and result.task == "LaMP-2M"
    lines = (tmp_path / "LaMP-2M" / "predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert len(predictions) == 4
    for p in predictions:
        # Structured choice: every answer is a label of the task.
        assert p["prediction"] in LAMP_2M_LABELS, p
        assert p["gold"] in LAMP_2M_LABELS
    agent_rows = [p for p in predictions if p["method"] == "persona_agent"]
    for p in agent_rows:
        assert p["alignment"] is not None and p["alignment"]["metric"] == "label"
        assert p["user_id"].startswith("eval.")
        # The evaluation users are removed afterwards.
        assert stack.http().get(f"/v1/users/{p['user_id']}/export").status_code == 404
    # The reported metrics are the official metrics of exactly these predictions.
    for method in result.methods:
        rows = sorted((p for p in predictions if p["method"] == method.method), key=lambda p: p["id"])
        expected = task_metrics(
            task_spec("LaMP-2M"), [p["prediction"] for p in rows], [p["gold"] for p in rows]
        )
        assert method.metrics == expected and method.errors == 0 and method.n == 2
    paths = write_reports([result], tmp_path)
    assert paths["plot"].stat().st_size > 10_000
    assert "| persona_agent |" in paths["markdown"].read_text()

    # Resume: a second run over the same folder asks the server nothing new and reports the same numbers.
    [again] = await run(request)
    assert (tmp_path / "LaMP-2M" / "predictions.jsonl").read_text().splitlines() == lines
    assert again.methods == result.methods


def test_ablation_options_switch_the_agent_per_request(stack: Stack) -> None:
    client = stack.openai()
    http = stack.http()
    user = "ablation-user"
    http.post(f"/v1/users/{user}/interactions", json=[{"input": "I love sci-fi films", "output": "sci-fi"}])
    base = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Tag: a starship crew"}],
            "max_tokens": 4, "user": user}  # fmt: skip
    full = client.chat.completions.create(**base).model_extra["persona_agent"]
    assert full["persona_version"] is not None and full["tool_calls"]  # persona + memory priming
    bare = client.chat.completions.create(
        **base, extra_body={"persona_agent_options": {"persona": False, "tools": False}}
    ).model_extra["persona_agent"]
    assert bare["persona_version"] is None and bare["tool_calls"] == [] and bare["tool_llm_calls"] == 0
    no_memory = client.chat.completions.create(
        **base, extra_body={"persona_agent_options": {"memory": False}}
    ).model_extra["persona_agent"]
    assert all(c["name"] not in {"search_memory", "get_profile"} for c in no_memory["tool_calls"])

    bad = http.post("/v1/chat/completions", json={**base, "persona_agent_options": {"persona": "maybe"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "persona_agent_options"
    unknown = http.post("/v1/chat/completions", json={**base, "persona_agent_options": {"colour": True}})
    assert unknown.status_code == 400
    no_user = {k: v for k, v in base.items() if k != "user"}
    plain = http.post("/v1/chat/completions", json={**no_user, "persona_agent_options": {"tools": False}})
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "user"
