"""The no-weights GPU benchmark, run whole on the CPU with its tiny architecture, so that it cannot rot
(loadtests/bench_gpu.py; on a GPU it runs Mistral-Small-24B's architecture the same way)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO_ROOT

# Starts a stack of its own: runs before the shared stack starts, so two stacks never run at once.
pytestmark = pytest.mark.first

# The script's own target on the CPU is 3 minutes; a shared CI machine gets some room.
TIMEOUT_S = 900


def test_the_benchmark_runs_the_small_architecture_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench_gpu.json"
    command = [sys.executable, "-m", "loadtests.bench_gpu", "--arch", "small", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, timeout=TIMEOUT_S, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    print(f"bench_gpu --arch small: {summary['elapsed_s']:.0f} s ({summary['phase_s']})")

    assert summary["architecture"]["architectures"] == ["MistralForCausalLM"]
    assert summary["engine"]["extra_engine_args"]["load_format"] == "dummy"
    levels = {f"c{c}" for c in (1, 8)}
    for side in ("raw", "stack"):
        assert set(summary["serving"][side]) == levels
        for level in summary["serving"][side].values():
            assert level["req_per_s"] > 0 and level["ttft_p50_ms"] > 0 and math.isfinite(level["tpot_p50_ms"])
    for level in levels:
        # Both sides got the same prompts: the stack's usage counts what raw vLLM was fed.
        raw, ours = summary["serving"]["raw"][level], summary["serving"]["stack"][level]
        assert raw["requests"] == ours["requests"]
        assert ours["prompt_tokens_mean"] == raw["prompt_tokens_mean"]
    pers = summary["personalization"]
    assert pers["questions"] == 2 and pers["ttft_p50_ms"]["personalized"] > 0
    assert 0 <= pers["persona_token_hit_rate"] <= 1
    align = summary["alignment"]
    assert align["jobs_done"] == align["users"] == 4 and align["jobs_failed"] == 0
    assert align["sequential_done"] == align["sequential_users"] == 1
    assert align["chat_ttft_p50_ms"]["idle"] > 0 and align["chat_ttft_p50_ms"]["pool_running"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000
