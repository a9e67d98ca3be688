"""The alignment job queue on SQLite and on PostgreSQL (a real server: tests/postgres.py): claims under a
lease, lease expiry, completion by the lease's holder only, one open job per user; on PostgreSQL,
concurrent claimers that skip each other's locked rows."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from alignment.jobs import JobQueue, JobStore, PostgresJobStore, open_job_queue
from alignment.loop import AlignmentOutcome
from alignment.scheduler import AlignmentScheduler
from memory.records import PersonaVersion, utcnow
from personaagent.postgres import PostgresDatabase
from personaagent.settings import AlignmentSettings, Settings, StoreSettings

# (lease_s, max_attempts) -> a new handle on the test's one job database
Opener = Callable[..., JobQueue]


@pytest.fixture(params=["sqlite", "postgres"])
def open_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    opened: list[JobQueue] = []

    def open_(lease_s: float = 60, max_attempts: int = 3) -> JobQueue:
        store = StoreSettings(url=url, job_lease_s=max(lease_s, 1), job_max_attempts=max_attempts)
        queue = open_job_queue(Settings(data_dir=tmp_path, store=store))
        queue.lease_s = lease_s  # sub-second leases keep the expiry tests short
        opened.append(queue)
        return queue

    yield open_
    for queue in opened:
        queue.close()


def test_a_claim_takes_the_oldest_queued_jobs_under_a_lease(open_queue: Opener) -> None:
    jobs = open_queue()
    created = [jobs.create(f"u{n}", "forced") for n in range(3)]
    assert [j.id for j in jobs.queued()] == [j.id for j in created]
    claimed = jobs.claim("w1", 2)
    assert [j.id for j in claimed] == [j.id for j in created[:2]]
    assert {j.state for j in claimed} == {"running"} and {j.attempts for j in claimed} == {1}
    assert [j.id for j in jobs.claim("w2", 5)] == [created[2].id]
    assert jobs.claim("w3", 5) == [] and jobs.queued() == []


def test_one_open_job_per_user(open_queue: Opener) -> None:
    a, b = open_queue(), open_queue()
    with ThreadPoolExecutor(6) as pool:  # replicas queueing the same user at the same moment
        results = list(pool.map(lambda n: (a if n % 2 else b).open_or_create("ann", "feedback"), range(6)))
    assert len({job.id for job, _ in results}) == 1 and [c for _, c in results].count(True) == 1
    (job,) = a.claim("w1", 5)
    again, created = b.open_or_create("ann", "forced")  # running is open too
    assert again.id == job.id and not created
    assert a.finish(job.id, "w1", "done", result={"accepted": True})
    fresh, created = b.open_or_create("ann", "forced")  # once it ended, the user may be queued again
    assert created and fresh.id != job.id


def test_a_lease_that_runs_out_lets_another_worker_run_the_job_and_only_it_finishes(
    open_queue: Opener,
) -> None:
    jobs = open_queue(lease_s=0.6)
    job = jobs.create("bo", "forced")
    assert [j.id for j in jobs.claim("w1", 1)] == [job.id]
    assert jobs.claim("w2", 1) == []  # held
    time.sleep(0.7)  # w1 died: its lease runs out
    (again,) = jobs.claim("w2", 1)
    assert again.id == job.id and again.attempts == 2
    assert jobs.finish(job.id, "w1", "done", result={"by": "w1"}) is False  # the late first worker
    assert jobs.finish(job.id, "w2", "done", result={"by": "w2"}) is True
    assert jobs.finish(job.id, "w2", "failed", error="twice") is False  # a job finishes once
    done = jobs.get(job.id)
    assert done is not None and done.state == "done" and done.result == {"by": "w2"} and done.error is None


def test_a_renewed_lease_keeps_the_job_and_too_many_attempts_fail_it(open_queue: Opener) -> None:
    jobs = open_queue(lease_s=0.6, max_attempts=2)
    job = jobs.create("cy", "forced")
    jobs.claim("w1", 1)
    for _ in range(3):  # renewed well within the lease: 3 x 0.2 s outlive one 0.6 s lease
        time.sleep(0.2)
        assert jobs.renew("w1", [job.id]) == 1
        assert jobs.claim("w2", 1) == []
    assert jobs.renew("w2", [job.id]) == 0  # only the holder renews
    time.sleep(0.7)
    assert len(jobs.claim("w2", 1)) == 1  # attempt 2
    time.sleep(0.7)
    assert jobs.claim("w3", 1) == []  # a third claim would pass max_attempts: it fails instead
    failed = jobs.get(job.id)
    assert failed is not None and failed.state == "failed" and "2 times" in (failed.error or "")


def test_deleting_a_user_and_retention(open_queue: Opener) -> None:
    jobs = open_queue()
    gone, kept = jobs.create("dee", "forced"), jobs.create("eve", "forced")
    assert jobs.delete_user("dee") == 1 and jobs.get(gone.id) is None
    (running,) = jobs.claim("w1", 1)
    assert jobs.finish(running.id, "w1", "done", result={}) and running.id == kept.id
    assert jobs.delete_finished_before(utcnow() - timedelta(days=1)) == 0
    assert jobs.delete_finished_before(utcnow() + timedelta(seconds=1)) == 1
    assert jobs.get(kept.id) is None
    queued = jobs.create("fay", "forced")
    assert jobs.delete_finished_before(utcnow() + timedelta(days=1)) == 0  # never an open job
    assert jobs.get(queued.id) is not None


def test_concurrent_claimers_take_every_job_exactly_once(open_queue: Opener) -> None:
    """Four workers (their own connections on PostgreSQL) claim 3 at a time until the queue is empty."""
    first = open_queue()
    created = {first.create(f"user{n}", "import").id for n in range(24)}
    handles = [open_queue() for _ in range(4)]
    start = threading.Barrier(4)

    def worker(n: int) -> list[str]:
        start.wait()
        taken: list[str] = []
        while batch := handles[n].claim(f"w{n}", 3):
            taken += [j.id for j in batch]
        return taken

    with ThreadPoolExecutor(4) as pool:
        taken = [job for batch in pool.map(worker, range(4)) for job in batch]
    assert sorted(taken) == sorted(created)  # all of them, none twice


def test_a_claimer_skips_rows_another_claim_has_locked(postgres_url: str) -> None:
    """SKIP LOCKED: while one claim's transaction holds the oldest job, another claimer takes the next
    one at once instead of waiting for it."""
    db = PostgresDatabase(StoreSettings(url=postgres_url))
    jobs = PostgresJobStore(db)
    try:
        oldest, newer = jobs.create("gil", "forced"), jobs.create("hal", "forced")
        with psycopg.connect(postgres_url) as holder:  # a claimer mid-transaction
            holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (oldest.id,))
            outcome: list[list[str]] = []
            claimer = threading.Thread(target=lambda: outcome.append([j.id for j in jobs.claim("w2", 2)]))
            claimer.start()
            claimer.join(timeout=10)
            assert not claimer.is_alive(), "the claim waited for the locked row"
            holder.rollback()
        assert outcome == [[newer.id]]
    finally:
        jobs.close()


def test_the_sqlite_queue_takes_back_what_a_dead_process_was_running(tmp_path: Path) -> None:
    first = JobStore(tmp_path / "jobs.db")
    job = first.create("ivy", "forced")
    first.claim("w1", 1)
    first.close()  # the process dies mid-job: no other process can be running it
    second = JobStore(tmp_path / "jobs.db")
    (again,) = second.claim("w2", 1)
    assert again.id == job.id and again.attempts == 2
    second.close()


class _Memory:
    async def persona_for(self, user_id: str) -> PersonaVersion | None:
        return PersonaVersion(
            user_id=user_id, version=1, text="p", reason="init", parent=None, created_at=utcnow()
        )

    async def set_persona_if_current(self, *_: object) -> PersonaVersion | None:
        return None


async def test_two_schedulers_on_one_queue_run_every_job_once(open_queue: Opener) -> None:
    runs: list[str] = []

    async def align(
        worker: int, user_id: str, text: str, version: int, faults: int | None
    ) -> AlignmentOutcome:
        runs.append(user_id)
        await asyncio.sleep(0.01)
        return AlignmentOutcome(user_id=user_id, base_version=version, accepted=False)

    schedulers = [
        AlignmentScheduler(open_queue(), _Memory(), align, 1, AlignmentSettings(round_size=3))
        for _ in range(2)
    ]
    queued = [await schedulers[n % 2].enqueue(f"user{n}", "forced") for n in range(10)]

    async def drain(scheduler: AlignmentScheduler) -> None:
        while batch := scheduler.claim_round():
            await scheduler.round(batch)

    await asyncio.gather(*(drain(s) for s in schedulers))
    assert sorted(runs) == sorted(j.user_id for j in queued)
    states = [schedulers[0].jobs.get(j.id) for j in queued]
    assert all(s is not None and s.state == "done" and s.attempts == 1 for s in states)


def test_a_jobs_file_from_before_leases_opens_and_its_jobs_run(tmp_path: Path) -> None:
    path = tmp_path / "old_jobs.db"
    with sqlite3.connect(path) as conn:  # the jobs table as written before 2026-12, one job mid-run
        conn.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT"
            " NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, result TEXT, error TEXT)"
        )
        now = utcnow().isoformat()
        conn.execute(
            "INSERT INTO jobs VALUES ('align-old', 'jo', 'running', 'forced', ?, ?, NULL, NULL)", (now, now)
        )
    jobs = JobStore(path)
    try:
        (job,) = jobs.claim("w1", 5)
        assert job.id == "align-old" and job.attempts == 1
        assert jobs.finish(job.id, "w1", "done", result={"ok": True})
    finally:
        jobs.close()


async def test_a_scheduler_keeps_renewing_the_lease_of_a_job_that_runs_long(open_queue: Opener) -> None:
    """A job that runs two leases long stays with its scheduler: no other worker can claim it."""
    stolen: list[str] = []
    other = open_queue(lease_s=0.6)

    async def align(
        worker: int, user_id: str, text: str, version: int, faults: int | None
    ) -> AlignmentOutcome:
        for _ in range(12):
            await asyncio.sleep(0.1)
            stolen.extend(j.id for j in await asyncio.to_thread(other.claim, "thief", 1))
        return AlignmentOutcome(user_id=user_id, base_version=version, accepted=False)

    scheduler = AlignmentScheduler(open_queue(lease_s=0.6), _Memory(), align, 1, AlignmentSettings())
    job = await scheduler.enqueue("kai", "forced")
    await scheduler.round(scheduler.claim_round())
    done = scheduler.jobs.get(job.id)
    assert stolen == [] and done is not None and done.state == "done" and done.attempts == 1
