"""Start/stop the servers that benchmarks compare: our stack and a plain `vllm serve` on the same model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from personaagent.settings import Settings
from serving.engine import build_engine_cli_args, resolve_model_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess in its own process group, with its log in a file."""

    def __init__(
        self, name: str, argv: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
        self.ready_s: float | None = None

    def wait_ready(self, timeout_s: float = 900) -> float:
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    self.ready_s = time.monotonic() - self.started
                    return self.ready_s
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def start_our_stack(
    settings: Settings, log_dir: Path, data_dir: Path, extra_env: dict[str, str] | None = None
) -> ServerProcess:
    port = free_port()
    env = {
        "PERSONAAGENT_SERVER__PORT": str(port),
        "PERSONAAGENT_DATA_DIR": str(data_dir),
        **(extra_env or {}),
    }
    return ServerProcess(
        "personaagent", [sys.executable, "-m", "personaagent.cli", "serve"], port, log_dir, env
    )


def start_plain_vllm(settings: Settings, log_dir: Path) -> ServerProcess:
    """`vllm serve` with exactly the engine arguments our stack uses (the module: the CLI is broken)."""
    port = free_port()
    args = build_engine_cli_args(settings, resolve_model_path(settings))
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args, "--port", str(port),
            "--host", "127.0.0.1", "--disable-uvicorn-access-log"]  # fmt: skip
    env = {"VLLM_USE_AOT_COMPILE": "0", "VLLM_CPU_KVCACHE_SPACE": str(settings.engine.cpu_kvcache_space_gib)}
    return ServerProcess("plain-vllm", argv, port, log_dir, env)
