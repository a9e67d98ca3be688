"""500 bodies carry a request id, never the exception's text, an actor name or a traceback."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.errors import install_error_handlers

INSIDE = (
    "ray::ServeReplica:personaagent:memory.handle_request() Traceback (most recent call last): KeyError 'bob'"
)


def test_an_unexpected_error_is_an_opaque_500_with_a_logged_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(INSIDE)

    with caplog.at_level(logging.ERROR, logger="serving.errors"):
        response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == 500
    assert (
        "ray::" not in response.text
        and "Traceback" not in response.text
        and "RuntimeError" not in response.text
    )
    request_id = error["message"].rsplit(" ", 1)[-1].rstrip(")")
    assert len(request_id) == 16 and any(request_id in r.getMessage() for r in caplog.records)
