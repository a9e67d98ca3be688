"""API keys without the stack: hashing, open paths, and `serve` refusing to run open beyond loopback."""

from __future__ import annotations

import pytest
from fastapi import Request

from personaagent.settings import APIKeySetting, AuthSettings
from serving.auth import Authenticator, hash_key


def _request(path: str, authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request({"type": "http", "method": "GET", "path": path, "headers": headers, "query_string": b""})


def test_authenticator_open_without_keys_and_keys_stored_hashed() -> None:
    assert Authenticator(AuthSettings()).authenticate(_request("/v1/models", None)) is None
    auth = Authenticator(AuthSettings(api_keys=[APIKeySetting(name="ops", sha256=hash_key("secret"))]))
    principal = auth.authenticate(_request("/v1/models", "Bearer secret"))
    assert principal is not None and principal.is_admin and principal.name == "ops"
    assert auth.authenticate(_request("/health", None)) is None
    closed = Authenticator(
        AuthSettings(api_keys=[APIKeySetting(name="ops", sha256=hash_key("s"))], metrics_open=False)
    )
    with pytest.raises(Exception, match="missing API key"):
        closed.authenticate(_request("/metrics", None))
    with pytest.raises(ValueError):
        APIKeySetting(name="ops", sha256="secret")  # a plain key is not a hash


def test_serve_refuses_to_run_open_beyond_loopback() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONAAGENT_AUTH")}
    result = subprocess.run(
        [sys.executable, "-m", "personaagent.cli", "serve", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 2 and "no API keys configured" in result.stderr
