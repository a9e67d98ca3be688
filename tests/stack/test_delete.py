"""Delete is total and final: job rows go, and neither a streaming chat nor a queued job brings the user back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.stack.harness import Stack
from tests.stack.helpers import wait_job

MODEL = "smollm2-135m-instruct"
HISTORY = [{"input": f"Tag the movie: heist number {i}", "output": "crime"} for i in range(3)]


def test_delete_during_a_stream_and_with_a_job_queued_leaves_nothing(stack: Stack) -> None:
    user, witness = "del.victim@example.com", "del-witness"
    http = stack.http()
    for u in (user, witness):
        http.post(f"/v1/users/{u}/interactions", json=HISTORY).raise_for_status()
    stream = stack.openai().chat.completions.create(
        model=MODEL, user=user, stream=True, max_tokens=64, messages=[{"role": "user", "content": "A long story?"}],
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(stream)
    next(chunks)  # the chat has started: its user exists, its write-back is still to come
    job = http.post(f"/v1/users/{user}/align").json()
    assert http.delete(f"/v1/users/{user}").status_code == 200
    list(chunks)  # the stream ends normally; its write-back comes after the delete
    assert http.get(f"/v1/alignment/jobs/{job['id']}").status_code == 404  # the job row is gone
    # Rounds run one after another: once a job queued after the delete is done, the victim's is too.
    done = wait_job(stack, http.post(f"/v1/users/{witness}/align").json()["id"])
    assert done["state"] == "done"
    for path in ("export", "persona/history", "profile"):
        assert http.get(f"/v1/users/{user}/{path}").status_code == 404, path
    assert http.get(f"/v1/users/{user}/memories", params={"query": "heist"}).status_code == 404
    # The id may be used again on purpose: a new import makes a new, empty user.
    http.post(f"/v1/users/{user}/interactions", json=HISTORY[:1]).raise_for_status()
    assert len(http.get(f"/v1/users/{user}/export").json()["interactions"]) == 1
    for u in (user, witness):
        http.delete(f"/v1/users/{u}")


def test_explicit_persona_and_alignment_racing_a_delete_never_bring_the_user_back(stack: Stack) -> None:
    """POST /persona (waiting on the import's profile) and an alignment's setup, each racing a DELETE.

    Whatever the order the server runs them in, neither may re-create the user: the invariant checked
    here holds for every interleaving, so the test needs no sleep to aim at the window (the unit tests in
    tests/unit/test_memory_service.py hold each window open deterministically)."""
    users = [f"del.race-{n}" for n in range(3)]
    witness = "del-race-witness"
    http = stack.http()
    for u in (*users, witness):
        http.post(f"/v1/users/{u}/interactions", json=HISTORY).raise_for_status()
    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        posts = [pool.submit(stack.http().post, f"/v1/users/{u}/persona") for u in users]
        jobs = [http.post(f"/v1/users/{u}/align").json() for u in users]
        deletes = [http.delete(f"/v1/users/{u}").status_code for u in users]
        statuses = [p.result(timeout=300).status_code for p in posts]
    assert deletes == [200] * len(users)
    assert set(statuses) <= {200, 404}, statuses  # done before the delete, or refused: never a 500
    done = wait_job(stack, http.post(f"/v1/users/{witness}/align").json()["id"])
    assert done["state"] in {"done", "failed"}
    for u, job in zip(users, jobs, strict=True):
        assert http.get(f"/v1/alignment/jobs/{job['id']}").status_code == 404
        for path in ("export", "persona/history", "profile"):
            assert http.get(f"/v1/users/{u}/{path}").status_code == 404, (u, path)
    http.delete(f"/v1/users/{witness}")
