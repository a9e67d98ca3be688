"""Delete is total and final: job rows go, and neither a streaming chat nor a queued job brings the user back."""

from __future__ import annotations

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
