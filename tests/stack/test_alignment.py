"""Test-time alignment through the real stack: feedback scheduling, forced alignment, gate, faults."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from tests.stack.harness import Stack
from tests.stack.helpers import wait_job

MODEL = "smollm2-135m-instruct"
HISTORY = [
    {"input": "Tag the movie: a hitman avenges his brother in a bloody shootout", "output": "violence"},
    {"input": "Tag the movie: soldiers massacre a village in a brutal war", "output": "violence"},
]
QUESTIONS = [
    "Tag the movie: gangsters fight over a city with knives and guns. One tag.",
    "Tag the movie: a boxer beats a rival to death. One tag.",
    "Tag the movie: a soldier survives a bloody battle. One tag.",
]


def test_k_feedbacks_schedule_one_alignment_that_records_feedback_and_scores(stack: Stack) -> None:
    user = "al-user"
    client = stack.openai()
    with stack.http() as http:
        # History without outputs: only the three feedbacks below count towards K.
        http.post(
            f"/v1/users/{user}/interactions", json=[{"input": h["input"]} for h in HISTORY]
        ).raise_for_status()
        http.post(f"/v1/users/{user}/persona").raise_for_status()
        contradicting = http.put(
            f"/v1/users/{user}/persona",
            json={"text": "You are a cheerful assistant. Always tag every movie as comedy."},
        ).json()
    jobs = []
    for question in QUESTIONS:
        resp = client.chat.completions.create(
            model=MODEL, user=user, messages=[{"role": "user", "content": question}], max_tokens=8
        )
        with stack.http() as http:
            fb = http.post(
                f"/v1/users/{user}/feedback", json={"completion_id": resp.id, "expected_output": "violence"}
            )
        assert fb.status_code == 200, fb.text
        jobs.append(fb.json()["alignment_job"])
    assert jobs[0] is None and jobs[1] is None and jobs[2] is not None, (
        "K=3 feedbacks must schedule exactly one"
    )
    job = wait_job(stack, jobs[2]["id"])
    assert job["state"] == "done", job
    result = job["result"]
    assert len(result["feedback"]) == 3 and all(f["truth"] == "violence" for f in result["feedback"])
    assert result["metric"] == "label" and result["score_before"] is not None
    with stack.http() as http:
        history = http.get(f"/v1/users/{user}/persona/history").json()
    if result["accepted"]:
        latest = history[-1]
        assert latest["reason"] == "alignment" and latest["parent"] == contradicting["version"]
        assert (
            latest["details"]["feedback"]
            and latest["details"]["score_after"] >= latest["details"]["score_before"]
        )
        assert latest["details"]["prompt_tokens"] > 0
    else:  # the gate's rejection is recorded with both scores, and the persona stays
        assert (
            result["score_after"] is None
            or result["score_after"] < result["score_before"]
            or result["skipped"]
        )
        assert history[-1]["version"] == contradicting["version"]
    # A fourth feedback alone does not schedule another alignment.
    resp = client.chat.completions.create(
        model=MODEL, user=user, messages=[{"role": "user", "content": "Tag: a duel."}], max_tokens=4
    )
    with stack.http() as http:
        assert (
            http.post(
                f"/v1/users/{user}/feedback", json={"completion_id": resp.id, "expected_output": "violence"}
            ).json()["alignment_job"]
            is None
        )


def _engine_gauges(stack: Stack) -> tuple[float, float, float]:
    """(chat running, alignment running, alignment waiting) in the engine replica, from /metrics."""
    with stack.http() as http:
        text = http.get("/metrics").text

    def gauge(name: str) -> float:
        match = re.search(rf"^personaagent_engine_{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
        assert match, f"personaagent_engine_{name} missing from /metrics"
        return float(match.group(1))

    return gauge("foreground_running"), gauge("background_running"), gauge("background_waiting")


def test_alignment_yields_to_a_running_chat(stack: Stack) -> None:
    """While a chat streams, the engine admits at most `inflight_calls_during_chat` alignment-class calls.

    The background load is four requests at the alignment priority (10, what the pool's calls carry), so
    the count is known; they are held back, not dropped, and all finish once the chat is over.
    """
    limit = 2  # alignment.inflight_calls_during_chat (default)
    chat_body = {
        "model": MODEL, "stream": True, "max_tokens": 1200, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
    }  # fmt: skip
    background_body = {  # long enough that the two admitted ones are still running at the next sample
        "model": MODEL, "max_tokens": 200, "ignore_eos": True, "priority": 10,
        "messages": [{"role": "user", "content": "Name a colour."}],
    }  # fmt: skip
    statuses: list[int] = []

    def long_chat() -> None:
        with stack.http() as http, http.stream("POST", "/v1/chat/completions", json=chat_body) as resp:
            for _ in resp.iter_lines():
                pass

    def background() -> None:
        with stack.http() as http:
            statuses.append(http.post("/v1/chat/completions", json=background_body).status_code)

    chat = threading.Thread(target=long_chat)
    chat.start()
    deadline = time.monotonic() + 60
    while _engine_gauges(stack)[0] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [threading.Thread(target=background) for _ in range(4)]
    for worker in workers:
        worker.start()
    samples = []
    while chat.is_alive():
        samples.append(_engine_gauges(stack))
        time.sleep(0.2)
    for thread in (chat, *workers):
        thread.join(timeout=300)
    during_chat = [s for s in samples if s[0] >= 1]
    assert during_chat, "no sample caught the chat running"
    assert max(s[1] for s in during_chat) <= limit, samples
    assert max(s[2] for s in during_chat) >= 1, f"no background call was held back: {samples}"
    assert statuses == [200] * 4  # held back, not dropped
    assert _engine_gauges(stack) == (0, 0, 0)


def test_failure_mid_alignment_leaves_the_persona_unchanged(stack: Stack) -> None:
    user = "al-fault"
    with stack.http() as http:
        http.post(f"/v1/users/{user}/interactions", json=HISTORY).raise_for_status()
        before = http.post(f"/v1/users/{user}/persona").json()
        job = http.post(f"/v1/users/{user}/align", params={"inject_failure_after": 2}).json()
    done = wait_job(stack, job["id"])
    assert done["state"] == "failed" and "injected" in done["error"]
    with stack.http() as http:
        after = http.get(f"/v1/users/{user}/persona").json()
    assert after["version"] == before["version"] and after["text"] == before["text"]


def test_alignment_errors_and_similarity(stack: Stack, tmp_path: Path) -> None:
    with stack.http() as http:
        assert http.post("/v1/users/al-nobody/align").status_code == 404
        assert (
            http.post("/v1/users/al-nobody/feedback", json={"input": "x", "expected_output": "y"}).status_code
            == 404
        )
        assert http.get("/v1/alignment/jobs/align-doesnotexist").status_code == 404
        http.post("/v1/users/al-sim/interactions", json=HISTORY).raise_for_status()
        http.post("/v1/users/al-sim/persona").raise_for_status()
        assert (
            http.post(
                "/v1/users/al-sim/feedback", json={"input": "never asked", "expected_output": "y"}
            ).status_code
            == 404
        )
        assert http.post("/v1/users/al-sim/feedback", json={"expected_output": "y"}).status_code == 400
        assert (
            http.post(
                "/v1/users/al-sim/feedback", json={"input": "a", "completion_id": "b", "expected_output": "y"}
            ).status_code
            == 400
        )
        sim = http.get("/v1/personas/similarity").json()
        metrics = http.get("/metrics").text
    users, matrix = sim["users"], sim["matrix"]
    assert len(users) >= 2 and len(matrix) == len(users)
    for i in range(len(users)):
        assert matrix[i][i] == 1.0
        for j in range(len(users)):
            assert matrix[i][j] == pytest.approx(matrix[j][i]) and 0.0 <= matrix[i][j] <= 1.0
    assert (
        "personaagent_alignment_rounds_total" in metrics and "personaagent_alignment_queue_depth" in metrics
    )
