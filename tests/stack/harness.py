"""The real stack (Ray Serve + vLLM-CPU + SmolLM2) as a server process the stack tests drive over HTTP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
from openai import OpenAI

from loadtests.servers import ServerProcess
from serving.auth import hash_key, new_key
from tests import REPO_ROOT

STACK_START_TIMEOUT_S = float(os.environ.get("PERSONAAGENT_TEST_START_TIMEOUT", "900"))


# The test stack runs with API keys, as a deployment would: an admin key for the tests, a key scoped to the
# user "alice" for the tenant-scoping tests, and a second unscoped key (another tenant's app) for the
# cache-isolation tests.
ADMIN_KEY = new_key()
ALICE_KEY = new_key()
TENANT_B_KEY = new_key()
API_KEYS = [
    {"name": "tests-admin", "sha256": hash_key(ADMIN_KEY)},
    {"name": "alice", "sha256": hash_key(ALICE_KEY), "user_id": "alice"},
    {"name": "tenant-b", "sha256": hash_key(TENANT_B_KEY)},
]


MAX_INFLIGHT = 16


class Stack(ServerProcess):
    """The session's server process, exactly as README line 1 starts it, plus the test clients; `crash()`,
    `terminate()` and `start()` let one test kill and restart it."""

    def __init__(self, port: int, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        argv = [sys.executable, "-m", "personaagent.cli", "serve"]
        super().__init__(log_path.stem, argv, port, log_path.parent, env, cwd=REPO_ROOT, start=False)
        self.data_dir = data_dir
        self.api_key = ADMIN_KEY

    def openai(self, api_key: str = ADMIN_KEY, **kwargs: object) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def http(self, api_key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.base_url, timeout=120, headers=headers)

    def start(self) -> None:
        """Start and wait until healthy."""
        super().start()
        self.wait_ready(STACK_START_TIMEOUT_S)


def stack_env(port: int, data_dir: Path) -> dict[str, str]:
    """The test stack's settings: a deployment's (API keys), plus what the tests need to observe."""
    env = dict(os.environ)
    env.update(
        PERSONAAGENT_SERVER__PORT=str(port),
        PERSONAAGENT_DATA_DIR=str(data_dir),
        PERSONAAGENT_ALIGNMENT__ALLOW_FAULT_INJECTION="true",
        PERSONAAGENT_AUTH__API_KEYS=json.dumps(API_KEYS),
        # Low enough that the overload test reaches it with a few dozen Locust users.
        PERSONAAGENT_SERVER__MAX_INFLIGHT_REQUESTS=str(MAX_INFLIGHT),
        # A cap above the 4096-token context: past the context is vLLM's 400, past the cap ours.
        PERSONAAGENT_SERVER__MAX_TOKENS="8192",
        # Imports with outputs would queue background alignments in every test; the feedback path and
        # forced alignments are tested explicitly instead.
        PERSONAAGENT_ALIGNMENT__SCHEDULE_ON_IMPORT="false",
        # The prompt the model got, in every personalized response: tests check what reached the model.
        PERSONAAGENT_AGENT__TRACE_FINAL_PROMPT="true",
        # Tests run concurrent requests with the one admin key; the per-key share has its unit tests.
        PERSONAAGENT_SERVER__MAX_INFLIGHT_SHARE_PER_KEY="1.0",
        # A first chat waits for its user's profile at most this long (2 s by default, then a stand-in
        # persona): the tests that check the stored persona after a first chat need the wait on a busy CPU.
        PERSONAAGENT_MEMORY__PERSONA_PROFILE_WAIT_S="120",
        PYTHONUNBUFFERED="1",
    )
    return env
