"""A short, bounded Locust run (loopback only) against the session stack: reports written, TTFT reported."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

from tests import REPO_ROOT
from tests.stack.harness import MAX_INFLIGHT, Stack

RUNNER = REPO_ROOT / "loadtests" / "run_locust.py"


def run_locust(stack: Stack, out: Path, *extra: str) -> tuple[int, dict[str, dict[str, str]]]:
    command = [
        sys.executable,
        str(RUNNER),
        "--host",
        stack.base_url,
        "--out",
        str(out),
        "--api-key",
        stack.api_key,
        *extra,
    ]
    code = subprocess.run(command, timeout=120, capture_output=True, text=True).returncode
    rows = {}
    stats = out / "locust_stats.csv"
    if stats.exists():
        with stats.open() as f:
            rows = {f"{r['Type']} {r['Name']}": r for r in csv.DictReader(f)}
    return code, rows


def test_bounded_locust_run_reports_ttft_and_passes(stack: Stack, tmp_path: Path) -> None:
    code, rows = run_locust(
        stack, tmp_path, "--users", "4", "--spawn-rate", "4", "--run-time", "25s", "--stop-timeout", "20",
        "--feedback-weight", "2", "--import-weight", "1", "--max-tokens", "8",
    )  # fmt: skip
    assert code == 0, rows
    assert (tmp_path / "locust.html").stat().st_size > 1000
    chat = rows["POST /v1/chat/completions"]
    assert int(chat["Request Count"]) >= 1 and int(chat["Failure Count"]) == 0
    ttft = rows["TTFT chat first content"]
    assert int(ttft["Request Count"]) >= 1 and float(ttft["Median Response Time"]) > 0
    # The stream ends after its first content: the whole stream takes at least as long.
    assert float(rows["STREAM chat whole stream"]["Max Response Time"]) >= float(ttft["Min Response Time"])
    assert int(rows["POST /v1/users/[id]/interactions"]["Failure Count"]) == 0


def test_failures_above_the_threshold_exit_non_zero(stack: Stack, tmp_path: Path) -> None:
    code, rows = run_locust(
        stack, tmp_path, "--users", "2", "--spawn-rate", "2", "--run-time", "10s", "--stop-timeout", "5",
        "--model", "no-such-model", "--max-fail-ratio", "0.05", "--feedback-weight", "0", "--import-weight", "0",
        # No history import on start: the first request is a chat (answered 404 at once), however slow the
        # machine is; a run that sends no chat at all exits 1 too.
        "--history-items", "0",
    )  # fmt: skip
    assert code == 1
    assert int(rows["POST /v1/chat/completions"]["Failure Count"]) >= 1


def test_overload_gets_429_never_5xx_and_the_server_keeps_answering(stack: Stack, tmp_path: Path) -> None:
    # About four times what the stack admits at once (server.max_inflight_requests in the test stack).
    users = str(4 * MAX_INFLIGHT)
    code, _ = run_locust(
        stack, tmp_path, "--users", users, "--spawn-rate", users, "--run-time", "20s", "--stop-timeout", "30",
        "--model", "smollm2-135m-instruct", "--max-fail-ratio", "1.0", "--feedback-weight", "0",
        "--import-weight", "0", "--max-tokens", "8",
    )  # fmt: skip
    assert code == 0
    with (tmp_path / "locust_failures.csv").open() as f:
        failures = list(csv.DictReader(f))
    errors = " | ".join(row["Error"] for row in failures)
    assert "429" in errors, errors
    assert not re.search(r"\b5\d\d\b", errors), errors
    # Still answering afterwards.
    assert stack.http().get("/health").status_code == 200
    reply = stack.openai().chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
