"""The shared API client of evaluation/ and loadtests/: 429s retried, 404s where asked, typed results."""

from __future__ import annotations

import httpx
import pytest

from evaluation.client import ServeAPIError, ServeClient

PERSONA = {"user_id": "u", "version": 2, "text": "p", "reason": "init", "parent": None,
           "created_at": "2026-01-01T00:00:00Z"}  # fmt: skip


def _client(handler: object) -> ServeClient:
    return ServeClient("http://test", "k", transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


async def test_a_429_is_retried_after_retry_after_and_the_result_is_typed() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "0"}, json={"error": {}})
        return httpx.Response(200, json=PERSONA)

    persona = await _client(handler).create_persona("u")
    assert persona.version == 2 and calls == ["Bearer k", "Bearer k"]


async def test_missing_user_is_false_and_other_errors_raise() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status = 404 if request.method == "DELETE" else 500
        return httpx.Response(status, json={"error": {"message": "x"}})

    client = _client(handler)
    assert await client.delete_user("nobody") is False
    with pytest.raises(ServeAPIError, match="500"):
        await client.create_persona("u")
