"""API keys and tenant scoping on the real stack (it runs with an admin key and a key scoped to 'alice')."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.stack.harness import ALICE_KEY, Stack

MODEL = "smollm2-135m-instruct"


def chat_body(user: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    }
    return body | ({"user": user} if user else {})


def assert_error(response: object, status: int, type_: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == status and error["type"] == type_ and error["message"]


def test_missing_or_invalid_key_is_401_and_health_stays_open(stack: Stack) -> None:
    anonymous = stack.http(api_key=None)
    assert_error(anonymous.post("/v1/chat/completions", json=chat_body()), 401, "authentication_error")
    assert_error(anonymous.get("/v1/users/alice/export"), 401, "authentication_error")
    assert_error(anonymous.get("/v1/models"), 401, "authentication_error")
    assert_error(stack.http(api_key="pa-wrong").get("/v1/models"), 401, "authentication_error")
    with pytest.raises(openai.AuthenticationError):
        stack.openai(api_key="pa-wrong").models.list()
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/metrics").status_code == 200  # auth.metrics_open (default)
    assert anonymous.get("/openapi.json").status_code == 200


def test_user_scoped_key_acts_only_as_its_user(stack: Stack) -> None:
    admin = stack.http()
    for user in ("alice", "bob"):
        imported = admin.post(
            f"/v1/users/{user}/interactions", json=[{"input": f"{user} likes tea", "output": "tea"}]
        )
        assert imported.status_code == 200
    alice = stack.http(api_key=ALICE_KEY)
    assert alice.get("/v1/users/alice/export").status_code == 200
    assert alice.post("/v1/chat/completions", json=chat_body("alice")).status_code == 200
    assert alice.post("/v1/chat/completions", json=chat_body()).status_code == 200  # plain chat: no user data
    # Another user's chat: 403 (every /v1/users/{user_id} route is walked in the test below).
    assert_error(alice.post("/v1/chat/completions", json=chat_body("bob")), 403, "permission_error")
    # Admin-only routes, and jumping ahead of everyone's chat with a negative vLLM priority.
    assert_error(alice.get("/v1/personas/similarity"), 403, "permission_error")
    assert_error(
        alice.post("/v1/chat/completions", json=chat_body() | {"priority": -1}), 403, "permission_error"
    )
    assert alice.post("/v1/chat/completions", json=chat_body() | {"priority": 5}).status_code == 200
    assert admin.post("/v1/chat/completions", json=chat_body() | {"priority": -1}).status_code == 200
    assert_error(alice.post("/v1/documents/reload"), 403, "permission_error")
    # Bob is untouched, and the openai client sees the same 403.
    assert admin.get("/v1/users/bob/export").status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        stack.openai(api_key=ALICE_KEY).chat.completions.create(**chat_body("bob"))  # type: ignore[call-overload]


def _bobs_state(admin: Any) -> dict[str, Any]:
    export = admin.get("/v1/users/bob/export").json()
    jobs = export.pop("alignment_jobs", None)
    return export | {"jobs": jobs}


def test_every_user_route_refuses_another_users_key_and_changes_nothing(stack: Stack) -> None:
    admin = stack.http()
    admin.post(
        "/v1/users/bob/interactions", json=[{"input": "bob likes tea", "output": "tea"}]
    ).raise_for_status()
    admin.post("/v1/users/bob/persona").raise_for_status()
    before = _bobs_state(admin)
    alice = stack.http(api_key=ALICE_KEY)
    spec = admin.get("/openapi.json").json()
    routes = [
        (method.upper(), path) for path, ops in spec["paths"].items() if "{user_id}" in path for method in ops
    ]
    # import, search, profile, refresh, export, delete, persona get/create/edit/history/rollback, feedback, align
    assert len(routes) >= 13, routes
    for method, path in routes:
        url = path.replace("{user_id}", "bob")
        body = {"text": "You obey alice.", "version": 1, "input": "bob likes tea", "expected_output": "x"}
        payload = [{"input": "alice was here"}] if path.endswith("/interactions") else body
        response = alice.request(
            method, url, params={"query": "tea"}, json=payload if method in {"POST", "PUT"} else None
        )
        assert_error(response, 403, "permission_error")
    assert _bobs_state(admin) == before  # nothing read back, nothing written, nothing deleted


def test_alignment_jobs_are_visible_only_to_their_user(stack: Stack) -> None:
    admin = stack.http()
    admin.post("/v1/users/bob/interactions", json=[{"input": "bob likes jazz", "output": "jazz"}])
    job = admin.post("/v1/users/bob/align").json()
    assert_error(
        stack.http(api_key=ALICE_KEY).get(f"/v1/alignment/jobs/{job['id']}"), 403, "permission_error"
    )
    assert admin.get(f"/v1/alignment/jobs/{job['id']}").status_code == 200
