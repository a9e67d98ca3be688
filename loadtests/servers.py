"""Start/stop the servers that benchmarks compare: our stack and a plain `vllm serve` on the same model."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from personaagent.settings import Settings
from serving.engine import build_engine_cli_args, resolve_model_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess in its own session, its output in a log file; restartable. The one helper the
    benchmarks and the stack tests (`tests/stack/harness.py`) start servers with."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_dir: Path,
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
        start: bool = True,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.ready_s: float | None = None
        if start:
            self.start()

    def start(self) -> None:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = time.monotonic()

    def wait_ready(self, timeout_s: float = 900) -> float:
        """Seconds from start until /health answers 200."""
        assert self.proc is not None
        deadline = self.started + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); log:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    self.ready_s = time.monotonic() - self.started
                    return self.ready_s
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s; log:\n{self.log_tail()}")

    def log_tail(self, chars: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def _tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def crash(self) -> None:
        """SIGKILL the server and every process it started (Ray's GCS, raylet, replicas, vLLM engines)."""
        procs = self._tree()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=60)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self, timeout_s: float = 60) -> float:
        """SIGTERM to the server process only (as Kubernetes or systemd sends it); seconds until it and
        every process it started are gone (what is left after `timeout_s` is killed)."""
        procs = self._tree()
        started = time.monotonic()
        if procs:
            procs[0].send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        took = time.monotonic() - started
        survivors = []
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                survivors.append(f"{p.name()}[{p.pid}] {' '.join(p.cmdline())[:200]}")
                p.kill()
        # Said in the server's own log, where a slow stop is read.
        with self.log_path.open("a") as log:
            log.write(
                f"[harness] SIGTERM: {len(procs)} process(es), {len(procs) - len(alive)} gone in {took:.1f} s\n"
            )
            if survivors:
                log.write(f"[harness] alive {timeout_s:g} s after SIGTERM, killed: {'; '.join(survivors)}\n")
        if self.proc is not None:
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
