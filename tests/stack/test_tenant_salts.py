"""Secret cache salts on the real stack: every user id works, and no client salt reaches a user's cache."""

from __future__ import annotations

import stat

import pytest

from personaagent.salts import SECRET_FILENAME, CacheSalts
from tests.stack.harness import TENANT_B_KEY, Stack
from tests.stack.helpers import wait_job

MODEL = "smollm2-135m-instruct"
PERSONA = " ".join(f"Rule {i}: answer in one short sentence about birds and rivers." for i in range(40))


@pytest.mark.parametrize("user", ["alice.smith+x@example.com", "u" * 120 + "@ex.com"])
def test_email_and_128_character_user_ids_chat_stream_and_align(stack: Stack, user: str) -> None:
    assert len(user) <= 128
    http = stack.http()
    items = [{"input": f"Tag the movie: heist number {i}", "output": "crime"} for i in range(3)]
    http.post(f"/v1/users/{user}/interactions", json=items).raise_for_status()
    client = stack.openai()
    reply = client.chat.completions.create(
        model=MODEL, user=user, max_tokens=8, messages=[{"role": "user", "content": "Tag: a bank robbery"}]
    )
    assert reply.model_extra["persona_agent"]["user"] == user and reply.choices[0].message.content is not None
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            user=user,
            max_tokens=8,
            stream=True,
            messages=[{"role": "user", "content": "Again?"}],
        )
    )
    assert chunks and chunks[0].model_extra["persona_agent"]["user"] == user
    job = http.post(f"/v1/users/{user}/align").json()
    done = wait_job(stack, job["id"])
    assert done["state"] == "done" and done["result"]["llm_calls"] > 0, done
    http.delete(f"/v1/users/{user}").raise_for_status()


def test_the_salt_secret_is_owner_only_and_never_served(stack: Stack) -> None:
    path = stack.data_dir / SECRET_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    with stack.http() as http:
        assert secret not in http.get("/openapi.json").text and secret not in http.get("/metrics").text


def test_a_client_salt_equal_to_a_users_gets_none_of_that_users_prompt(stack: Stack) -> None:
    victim = "salt.victim"  # no `@`: the old salt form `user:<id>` must be sendable to be probed
    http = stack.http()
    http.post(
        f"/v1/users/{victim}/interactions", json=[{"input": "hello", "output": "hi"}]
    ).raise_for_status()
    http.put(f"/v1/users/{victim}/persona", json={"text": PERSONA}).raise_for_status()
    question = [{"role": "user", "content": "One tip?"}]

    def cached(reply: object) -> int:
        details = reply.usage.prompt_tokens_details  # type: ignore[attr-defined]
        return (details.cached_tokens or 0) if details else 0

    no_tools = {"persona_agent_options": {"tools": False}}  # the final prompt is the persona + the question
    stack.openai().chat.completions.create(
        model=MODEL, user=victim, max_tokens=2, messages=question, extra_body=no_tools
    )
    own = stack.openai().chat.completions.create(
        model=MODEL, user=victim, max_tokens=2, messages=question, extra_body=no_tools
    )
    persona_tokens = own.model_extra["persona_agent"]["persona_tokens"]
    assert persona_tokens >= 256 and cached(own) >= persona_tokens - 32  # the prompt is in the cache

    secret = (stack.data_dir / SECRET_FILENAME).read_text().strip()
    # One probe per unscoped key (a key's own earlier probe would be a legitimate hit; a user-scoped key
    # would be answered by its own user's agent, not the plain model probed here).
    probes = [
        (stack.openai(), f"user:{victim}"),  # the old, guessable form
        (stack.openai(api_key=TENANT_B_KEY), CacheSalts(secret).user(victim)),  # the real salt, leaked
    ]
    for client, salt in probes:
        probe = client.chat.completions.create(
            model=MODEL, max_tokens=2, messages=[{"role": "system", "content": PERSONA}, *question],
            extra_body={"cache_salt": salt},
        )  # fmt: skip
        assert cached(probe) == 0, (salt[:12], cached(probe))
    http.delete(f"/v1/users/{victim}").raise_for_status()
