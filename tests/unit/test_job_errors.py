"""A failed alignment job stores (and GET /v1/alignment/jobs/{id} returns) a short reason: the exception's
type and first line, clipped, without a traceback or a node address; the log keeps the whole error."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from alignment.job_errors import MAX_REASON_CHARS, short_reason
from alignment.jobs import JobStore
from alignment.scheduler import AlignmentScheduler
from memory.records import PersonaVersion, utcnow
from personaagent.settings import AlignmentSettings

RAY_TEXT = (
    "ray::AlignmentWorker.align() (pid=4242, ip=10.0.3.7, actor_id=9f1c2a, repr=<AlignmentWorker>)\n"
    "Traceback (most recent call last):\n"
    '  File "/app/alignment/loop.py", line 88, in align\n'
    "    raise ConnectionError(...)\n"
    "ConnectionError: judge at 10.0.3.9:8000 refused the connection"
)


class RayTaskError(Exception):
    """Shaped like Ray's: the remote traceback in its text, the worker's own exception as `.cause`."""

    def __init__(self, text: str, cause: BaseException | None) -> None:
        super().__init__(text)
        self.cause = cause


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RayTaskError(RAY_TEXT, ConnectionError("judge at 10.0.3.9:8000 refused\nretry 3 of 3")),
         "ConnectionError: judge at <redacted> refused"),
        (RayTaskError(RAY_TEXT, None), "RayTaskError: ConnectionError: judge at <redacted> refused the connection"),
        (RuntimeError("The actor died unexpectedly (pid=12, ip=10.0.0.2)"), "RuntimeError: The actor died unexpectedly"),
        (OSError("connect to [fd00::7]:6379 failed"), "OSError: connect to <redacted> failed"),
        (ValueError(""), "ValueError"),
    ],
)  # fmt: skip
def test_a_short_reason_has_no_traceback_and_no_address(exc: BaseException, expected: str) -> None:
    assert short_reason(exc) == expected


def test_a_long_reason_is_clipped() -> None:
    reason = short_reason(ValueError("x" * 5_000))
    assert len(reason) == MAX_REASON_CHARS and reason.endswith("…")


class _Memory:
    """Any memory call answers the persona (truthy where a bool is asked): the job reaches `align`."""

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> PersonaVersion:
            return PersonaVersion(user_id="alice", version=1, text="p", reason="init", parent=None,
                                  created_at=utcnow())  # fmt: skip

        return call


async def test_a_failed_job_stores_the_short_reason_and_logs_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def align(*_: Any) -> Any:
        raise RayTaskError(RAY_TEXT, ConnectionError("judge at 10.0.3.9:8000 refused\nretry 3 of 3"))

    jobs = JobStore(tmp_path / "jobs.db")
    scheduler = AlignmentScheduler(jobs, _Memory(), align, 1, AlignmentSettings())  # type: ignore[arg-type]
    jobs.create("alice", "forced")
    (job,) = scheduler.claim_round()
    with caplog.at_level(logging.WARNING, logger="alignment.scheduler"):
        await scheduler.run_job(0, job)
    stored = jobs.get(job.id)
    assert stored is not None and stored.state == "failed"
    assert stored.error == "ConnectionError: judge at <redacted> refused"
    assert any("10.0.3.9:8000" in r.getMessage() for r in caplog.records)  # the detail is in the log
