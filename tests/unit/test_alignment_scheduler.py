"""The alignment queue without Ray: every job ends done or failed, within its time limit, alone."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from alignment.jobs import JobStore
from alignment.loop import AlignmentOutcome
from alignment.scheduler import AlignmentScheduler
from memory.records import PersonaVersion, utcnow
from personaagent.settings import AlignmentSettings


class FakeMemory:
    def __init__(self, users: set[str], fail_write_for: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.users = set(users)
        self.fail_write_for = set(fail_write_for)
        self.personas: dict[str, PersonaVersion] = {}

    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        if user_id not in self.users:
            return None
        first = PersonaVersion(
            user_id=user_id, version=1, text="p", reason="init", parent=None, created_at=utcnow()
        )
        return self.personas.setdefault(user_id, first)

    async def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None:
        if user_id in self.fail_write_for:
            raise OSError("disk full")
        if user_id not in self.users:
            return None
        new = self.personas[user_id].model_copy(update={"version": base_version + 1, "text": text})
        self.personas[user_id] = new
        return new


def _scheduler(
    tmp_path: Path, memory: FakeMemory, align: Any, sleep: Any = asyncio.sleep, **settings: Any
) -> tuple[AlignmentScheduler, JobStore]:
    jobs = JobStore(tmp_path / "jobs.db")
    return AlignmentScheduler(jobs, memory, align, 2, AlignmentSettings(**settings), sleep=sleep), jobs


def _accepting(cancelled: list[str] | None = None, slow: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    async def align(
        worker: int, user_id: str, text: str, version: int, faults: int | None
    ) -> AlignmentOutcome:
        if user_id in slow:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if cancelled is not None:
                    cancelled.append(user_id)
                raise
        if user_id.startswith("boom"):
            raise RuntimeError("engine exploded")
        return AlignmentOutcome(
            user_id=user_id, base_version=version, accepted=True, candidate=f"new {user_id}"
        )

    return align


async def test_a_failing_persona_write_fails_that_job_only_and_frees_the_user(tmp_path: Path) -> None:
    memory = FakeMemory({"ok", "diskfull", "boom1"}, fail_write_for={"diskfull"})
    scheduler, jobs = _scheduler(tmp_path, memory, _accepting())
    queued = [await scheduler.enqueue(u, "forced") for u in ("ok", "diskfull", "boom1")]
    await scheduler.round(scheduler.claim_round())
    states = {j.user_id: jobs.get(j.id) for j in queued}
    assert states["ok"].state == "done" and states["ok"].result["persona_version"] == 2  # type: ignore[union-attr,index]
    assert states["diskfull"].state == "failed" and "OSError: disk full" in states["diskfull"].error  # type: ignore[union-attr,operator]
    assert states["boom1"].state == "failed" and "RuntimeError" in states["boom1"].error  # type: ignore[union-attr,operator]
    # Nothing stays `running`: a failed user can be aligned again.
    again = await scheduler.enqueue("diskfull", "forced")
    assert again.id != states["diskfull"].id and again.state == "queued"  # type: ignore[union-attr]


async def test_a_job_past_its_time_limit_fails_and_its_work_is_cancelled(tmp_path: Path) -> None:
    cancelled: list[str] = []
    memory = FakeMemory({"slow", "fast"})
    scheduler, jobs = _scheduler(tmp_path, memory, _accepting(cancelled, slow={"slow"}), job_timeout_s=0.3)
    queued = [await scheduler.enqueue(u, "forced") for u in ("slow", "fast")]
    await asyncio.wait_for(scheduler.round(scheduler.claim_round()), timeout=10)
    slow, fast = (jobs.get(j.id) for j in queued)
    assert slow.state == "failed" and "job_timeout_s=0.3" in slow.error  # type: ignore[union-attr,operator]
    assert fast.state == "done"  # type: ignore[union-attr]
    assert cancelled == ["slow"]


async def test_a_user_deleted_while_aligning_gets_nothing_written(tmp_path: Path) -> None:
    memory = FakeMemory({"gone"})

    async def align(
        worker: int, user_id: str, text: str, version: int, faults: int | None
    ) -> AlignmentOutcome:
        memory.users.discard(user_id)  # DELETE arrives mid-alignment
        return AlignmentOutcome(user_id=user_id, base_version=version, accepted=True, candidate="x")

    scheduler, jobs = _scheduler(tmp_path, memory, align)
    job = await scheduler.enqueue("gone", "forced")
    await scheduler.round(scheduler.claim_round())
    assert memory.personas["gone"].version == 1
    assert jobs.get(job.id).result["accepted"] is False  # type: ignore[union-attr,index]


async def test_finished_jobs_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    memory = FakeMemory({"old", "new", "waiting"})
    scheduler, jobs = _scheduler(tmp_path, memory, _accepting(), job_retention_days=1)
    old, new = await scheduler.enqueue("old", "forced"), await scheduler.enqueue("new", "forced")
    await scheduler.round(scheduler.claim_round())
    waiting = await scheduler.enqueue("waiting", "forced")
    stale = (utcnow() - timedelta(days=2)).isoformat()
    jobs._db.execute("UPDATE jobs SET updated_at = ? WHERE id IN (?, ?)", (stale, old.id, waiting.id))
    assert scheduler.prune() == 1
    assert jobs.get(old.id) is None and jobs.get(new.id) is not None
    assert jobs.get(waiting.id) is not None  # a queued job is never pruned, however old


@pytest.mark.parametrize("days", [0, -1])
def test_retention_must_be_positive(days: float) -> None:
    with pytest.raises(ValueError):
        AlignmentSettings(job_retention_days=days)


async def test_jobs_queued_together_form_one_round(tmp_path: Path) -> None:
    """A batch arriving over a few requests is one round, not a round of the first job plus the rest.

    The loop's batch wait is a sleep this test controls: the round wait "ends" only once every job is
    queued, however slowly a busy machine runs the enqueues (no 20 ms sleeps racing a 0.3 s window)."""
    users = [f"u{i}" for i in range(5)]
    waits: list[float] = []
    waiting, wait_over = asyncio.Event(), asyncio.Event()

    async def batch_wait(seconds: float) -> None:
        waits.append(seconds)
        waiting.set()
        await wait_over.wait()

    scheduler, jobs = _scheduler(
        tmp_path, FakeMemory(set(users)), _accepting(), sleep=batch_wait, round_wait_s=0.3
    )
    loop = asyncio.create_task(scheduler.run_forever())
    try:
        queued = [await scheduler.enqueue(users[0], "forced")]
        await asyncio.wait_for(waiting.wait(), timeout=30)  # the first job woke the loop: it is waiting
        for user in users[1:]:  # as the evaluation's POSTs arrive: one after another, within the wait
            queued.append(await scheduler.enqueue(user, "forced"))
        wait_over.set()
        for _ in range(3000):
            if all(jobs.get(j.id).state == "done" for j in queued):  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        assert all(jobs.get(j.id).state == "done" for j in queued)  # type: ignore[union-attr]
        assert scheduler.metrics.rounds._value.get() == 1
        assert waits == [0.3]  # the one wait was the configured round wait
    finally:
        loop.cancel()


async def test_deleting_a_user_cancels_its_running_alignment_and_the_round_goes_on(tmp_path: Path) -> None:
    cancelled: list[str] = []
    memory = FakeMemory({"slow", "ok"})
    scheduler, jobs = _scheduler(tmp_path, memory, _accepting(cancelled, slow={"slow"}))
    queued = [await scheduler.enqueue(u, "forced") for u in ("slow", "ok")]
    round_ = asyncio.create_task(scheduler.round(scheduler.claim_round()))
    await asyncio.sleep(0.05)
    memory.users.discard("slow")
    assert scheduler.forget_user("slow") == 1
    await asyncio.wait_for(round_, timeout=2)  # without the cancel, "slow" would hold the round for an hour
    assert cancelled == ["slow"]
    assert jobs.get(queued[0].id) is None and jobs.get(queued[1].id).state == "done"  # type: ignore[union-attr]
