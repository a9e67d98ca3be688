"""Helpers shared by the stack tests (not fixtures: those live in conftest.py)."""

from __future__ import annotations

import time
from typing import Any

from tests.stack.harness import Stack


def wait_job(stack: Stack, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
    """Poll an alignment job until it is done or failed."""
    deadline = time.monotonic() + timeout_s
    with stack.http() as http:
        while time.monotonic() < deadline:
            job = http.get(f"/v1/alignment/jobs/{job_id}").json()
            if job["state"] in {"done", "failed"}:
                return job
            time.sleep(2)
    raise TimeoutError(f"alignment job {job_id} did not finish")
