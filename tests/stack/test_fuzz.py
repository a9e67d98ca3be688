"""schemathesis against the live stack's OpenAPI document, with the admin key and a user-scoped key.

Checks: no server errors (5xx), no timeouts, every status one the document declares, responses matching
their declared schemas. The driver is `loadtests/fuzz.py` (its own run: >= 5,000 cases); here a quick
budget per route.
"""

from __future__ import annotations

import pytest

from loadtests.fuzz import fuzz
from tests.stack.harness import ALICE_KEY, Stack


@pytest.mark.parametrize(("key", "user_id", "per_route"), [("admin", None, 12), ("alice", "alice", 6)])
def test_api_conforms_and_never_errors(stack: Stack, key: str, user_id: str | None, per_route: int) -> None:
    tally = fuzz(stack.base_url, stack.api_key if key == "admin" else ALICE_KEY, per_route, 120, user_id)
    # Every operation was driven (Hypothesis generates fewer cases where the inputs allow fewer).
    assert tally.operations >= 18 and tally.cases >= 3 * tally.operations
    assert not tally.server_errors and not tally.timeouts and not tally.nonconforming, tally.summary()


@pytest.mark.parametrize("body", [{"messages": None}, {"model": None, "messages": None}])
def test_a_null_messages_field_is_a_400_naming_it(stack: Stack, body: dict[str, None]) -> None:
    # vLLM's request validators iterated the null before pydantic checked its type: a 500 until fixed.
    response = stack.http().post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "messages" and error["code"] == 400
