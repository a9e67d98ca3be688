"""SIGKILL the whole server while clients stream imports and feedback: every acknowledged write survives;
SIGTERM stops it all within 15 s.

Runs last: it kills the shared stack (Ray, replicas, engine, all of it) and restarts it on the same data.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from tests.stack.harness import Stack

WORDS = ("amber basil cedar delta ember fjord garnet harbor iris juniper kelp lumen maple nectar onyx "
         "pepper quartz raven saffron tundra umber violet willow xenon yarrow zephyr").split()  # fmt: skip


def writer(stack: Stack, n: int, stop: threading.Event, imports: list, feedback: list) -> None:
    """One client: imports distinctive notes one by one; every third, gives feedback on an earlier one."""
    rng = random.Random(n)
    user = f"crash-{n}"
    mine: list[str] = []
    with stack.http() as http:
        i = 0
        while not stop.is_set():
            text = f"note {n}-{i}: " + " ".join(rng.sample(WORDS, 6))
            try:
                response = http.post(f"/v1/users/{user}/interactions", json=[{"input": text}], timeout=30)
                if response.status_code == 200:
                    imports.append((user, response.json()["ids"][0], text))
                    mine.append(text)
                if i % 3 == 2 and mine:
                    truth = f"truth {n}-{i}"
                    target = mine[-2] if len(mine) > 1 else mine[-1]
                    response = http.post(
                        f"/v1/users/{user}/feedback",
                        json={"input": target, "expected_output": truth},
                        timeout=30,
                    )
                    if response.status_code == 200:
                        feedback.append((user, response.json()["interaction_id"], truth))
            except httpx.HTTPError:
                pass  # in flight when the server died: never acknowledged
            i += 1


@pytest.mark.last
def test_every_acknowledged_write_survives_sigkill(stack: Stack) -> None:
    imports: list[tuple[str, int, str]] = []
    feedback: list[tuple[str, int, str]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(stack, n, stop, imports, feedback)) for n in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while (len(imports) < 30 or len(feedback) < 5) and time.monotonic() < deadline:
        time.sleep(0.2)
    stack.crash()  # mid-stream: the writers are still sending
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(imports) >= 30 and len(feedback) >= 5, (len(imports), len(feedback))

    stack.start()
    http = stack.http()
    rows: dict[int, dict] = {}
    for user in {u for u, _, _ in imports}:
        export = http.get(f"/v1/users/{user}/export")
        assert export.status_code == 200
        rows.update({row["id"]: row for row in export.json()["interactions"]})
    for user, interaction_id, text in imports:
        assert rows[interaction_id]["input"] == text
        # The index agrees with the database: the note's own text finds it first.
        hits = http.get(f"/v1/users/{user}/memories", params={"query": text, "k": 1}).json()["hits"]
        assert hits[0]["interaction"]["id"] == interaction_id, (text, hits)
    latest_truth = {interaction_id: truth for _, interaction_id, truth in feedback}
    for interaction_id, truth in latest_truth.items():
        assert rows[interaction_id]["output"] == truth
    # And the restarted stack serves.
    assert http.get("/health").status_code == 200

    # SIGTERM stops the whole stack within 15 s, and what it acknowledged before is there after.
    last = http.post("/v1/users/crash-0/interactions", json=[{"input": "written before SIGTERM"}])
    assert last.status_code == 200
    took = stack.terminate()
    assert took <= 15, f"SIGTERM took {took:.1f} s to stop every process"
    stack.start()
    export = stack.http().get("/v1/users/crash-0/export").json()
    assert last.json()["ids"][0] in {row["id"] for row in export["interactions"]}
