"""One user identity for chat and responses (`serving.identity`): the function, then the chat route."""

from __future__ import annotations

from typing import Any

import pytest

from serving.auth import Principal
from serving.errors import APIError
from serving.identity import resolve_user
from tests.unit.test_http_validation import HI, MODEL, _app

ADMIN = Principal(name="ops")
ALICE_KEY = Principal(name="alice-key", user_id="alice")


@pytest.mark.parametrize(
    ("principal", "fields", "user"),
    [
        (None, {}, None),
        (ADMIN, {}, None),
        (None, {"user": "bob"}, "bob"),
        (None, {"safety_identifier": "bob"}, "bob"),
        (None, {"safety_identifier": "bob", "user": "bob"}, "bob"),
        (None, {"safety_identifier": None, "user": "bob"}, "bob"),
        (ADMIN, {"user": "bob"}, "bob"),
        (ALICE_KEY, {}, "alice"),  # a user-scoped key is its user, with no field at all
        (ALICE_KEY, {"safety_identifier": "alice", "user": "alice"}, "alice"),
        (None, {"prompt_cache_key": "run-42"}, None),  # a cache hint never names a user
        (ALICE_KEY, {"prompt_cache_key": "run-42"}, "alice"),
    ],
)
def test_precedence(principal: Principal | None, fields: dict[str, Any], user: str | None) -> None:
    assert resolve_user(principal, fields) == user


def test_two_fields_naming_different_users_are_a_400_naming_both() -> None:
    with pytest.raises(APIError) as caught:
        resolve_user(ADMIN, {"safety_identifier": "bob", "user": "carol"})
    assert caught.value.status == 400 and caught.value.param == "safety_identifier"
    assert "safety_identifier" in caught.value.message and "user" in caught.value.message


@pytest.mark.parametrize("field", ["safety_identifier", "user"])
def test_a_user_scoped_key_naming_another_user_is_a_403_naming_the_field(field: str) -> None:
    with pytest.raises(APIError) as caught:
        resolve_user(ALICE_KEY, {field: "bob"})
    assert caught.value.status == 403 and caught.value.param == field


@pytest.mark.parametrize("field", ["safety_identifier", "user"])
@pytest.mark.parametrize("value", ["bob\n", "", "b" * 129, "bob smith", 7])
def test_ids_are_checked_whole_and_named(field: str, value: Any) -> None:
    with pytest.raises(APIError) as caught:
        resolve_user(None, {field: value})
    assert caught.value.status == 400 and caught.value.param == field


# -- the chat route uses it -----------------------------------------------------------------------------


def test_chat_safety_identifier_selects_the_agent_and_the_engine_never_sees_the_identity_fields() -> None:
    client, backend, personalized = _app()
    body = {"model": MODEL, "messages": HI, "safety_identifier": "bob", "prompt_cache_key": "run-1"}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert personalized.bodies[-1]["user"] == "bob" and not backend.bodies
    handed = personalized.bodies[-1]
    assert "safety_identifier" not in handed and "prompt_cache_key" not in handed


def test_chat_prompt_cache_key_alone_is_a_plain_chat() -> None:
    client, backend, personalized = _app()
    body = {"model": MODEL, "messages": HI, "prompt_cache_key": "run-1"}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert not personalized.bodies and "prompt_cache_key" not in backend.bodies[-1]


def test_chat_disagreeing_fields_are_a_400_before_any_work() -> None:
    client, backend, personalized = _app()
    body = {"model": MODEL, "messages": HI, "safety_identifier": "bob", "user": "carol"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "safety_identifier"
    assert not personalized.bodies and not backend.bodies
