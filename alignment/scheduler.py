"""The alignment queue: jobs in, rounds of users out, every job ending `done` or `failed`. No Ray here.

The deployment (`serving/deployments/alignment.py`) is a thin adapter: it hands this service the job
store, the memory port and a function that aligns one user on a pool worker.

Several schedulers (alignment replicas, on any nodes) may claim from one queue (PostgreSQL). A job runs
again when its first worker stopped renewing its lease, so a job may run twice; its persona is written
at most once all the same: (1) the write is conditional on the persona version the run began from,
decided inside the store's write; (2) just before it, the run renews its lease and writes nothing if
another worker holds the job now, so the write is the holder's and the job's result names it; (3) a
run that finds its job's persona already written (its first worker wrote it and died before finishing
the job) finishes the job with that version instead of aligning again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from alignment.job_errors import short_reason
from alignment.jobs import AlignmentJob, JobQueue, new_worker_id
from alignment.loop import AlignmentOutcome
from memory.records import PersonaVersion, utcnow
from personaagent.settings import AlignmentSettings

logger = logging.getLogger(__name__)

# (worker index, user id, persona text, persona version, injected failure after N calls) -> outcome
AlignOnWorker = Callable[[int, str, str, int, int | None], Awaitable[AlignmentOutcome]]
# How the loop waits out `round_wait_s` (a test passes one it controls instead of racing the clock).
Sleep = Callable[[float], Awaitable[None]]


class SchedulerMemory(Protocol):
    """What the queue needs from memory (a handle adapter in serving, a fake in unit tests)."""

    async def persona_for(self, user_id: str) -> PersonaVersion | None: ...
    async def persona_history(self, user_id: str) -> list[PersonaVersion] | None: ...
    async def set_persona_if_current(
        self, user_id: str, text: str, base_version: int, details: dict[str, Any]
    ) -> PersonaVersion | None: ...


class AlignmentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge(
            "personaagent_alignment_queue_depth", "Users waiting for alignment.", registry=r
        )
        self.rounds = Counter("personaagent_alignment_rounds_total", "Alignment rounds run.", registry=r)
        self.users = Counter("personaagent_alignment_users_total", "Users aligned.", ["outcome"], registry=r)
        self.tokens = Counter(
            "personaagent_alignment_tokens_total", "Tokens spent on alignment.", ["kind"], registry=r
        )


class AlignmentScheduler:
    def __init__(
        self,
        jobs: JobQueue,
        memory: SchedulerMemory,
        align: AlignOnWorker,
        workers: int,
        settings: AlignmentSettings,
        sleep: Sleep = asyncio.sleep,
        worker_id: str | None = None,
    ) -> None:
        self.jobs = jobs
        self.worker = worker_id or new_worker_id()  # whose leases this scheduler's claims hold
        self.memory = memory
        self.align = align
        self.workers = workers
        self.settings = settings
        self._sleep = sleep
        self.metrics = AlignmentMetrics()
        self._wakeup = asyncio.Event()
        self._faults: dict[str, int] = {}
        self._running: dict[str, asyncio.Task[dict[str, Any] | None]] = {}  # user id -> its job's work
        self._held: set[str] = set()  # ids of the claimed jobs not finished yet: their leases are renewed
        self.prune()
        if self.jobs.queued():
            self._wakeup.set()

    async def enqueue(self, user_id: str, reason: str, fail_after_calls: int | None = None) -> AlignmentJob:
        """Queue an alignment for the user; a user already queued or running keeps its one job."""
        job, created = self.jobs.open_or_create(user_id, reason)  # one decision, across replicas too
        if not created:
            return job
        if fail_after_calls is not None:
            self._faults[job.id] = fail_after_calls
        self.metrics.queue_depth.set(len(self.jobs.queued()))
        self._wakeup.set()
        return job

    def forget_user(self, user_id: str) -> int:
        """The user was deleted: their job rows go, queued ones with them; a running one is cancelled (its
        engine calls too), so a deleted user's alignment neither writes nor holds up the rest of its round."""
        removed = self.jobs.delete_user(user_id)
        work = self._running.pop(user_id, None)
        if work is not None:
            work.cancel()
        self.metrics.queue_depth.set(len(self.jobs.queued()))
        return removed

    def prune(self) -> int:
        """Finished jobs older than the retention go (their results hold answers and candidate personas)."""
        cutoff = utcnow() - timedelta(days=self.settings.job_retention_days)
        return self.jobs.delete_finished_before(cutoff)

    def metrics_text(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def held(self) -> list[str]:
        """Ids of the jobs this scheduler holds (claimed, not finished)."""
        return sorted(self._held)

    # -- the rounds --------------------------------------------------------------------------------

    def claim_round(self) -> list[AlignmentJob]:
        """The next round's jobs, claimed under this scheduler's lease (oldest first)."""
        return self.jobs.claim(self.worker, self.settings.round_size)

    async def run_forever(self) -> None:
        while True:
            try:  # woken by an enqueue; else a look once per lease, for jobs whose worker died elsewhere
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.jobs.lease_s)
            except TimeoutError:
                pass
            if self._wakeup.is_set():
                await self._sleep(self.settings.round_wait_s)  # let the rest of a batch arrive
            self._wakeup.clear()
            try:
                while batch := self.claim_round():
                    await self.round(batch)
                self.prune()
            except Exception:  # a broken job store must not end the loop for good
                logger.exception("alignment round failed")

    async def round(self, jobs: list[AlignmentJob]) -> None:
        """Run jobs this scheduler claimed (`claim_round`), renewing their leases until each ends."""
        self.metrics.rounds.inc()
        self._held.update(job.id for job in jobs)
        self.metrics.queue_depth.set(len(self.jobs.queued()))
        renewal = asyncio.ensure_future(self._renew_leases())
        try:
            await asyncio.gather(*(self.run_job(n, job) for n, job in enumerate(jobs)))
        finally:
            renewal.cancel()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.jobs.lease_s / 3)
            try:
                self.jobs.renew(self.worker, sorted(self._held))
            except Exception:  # the next renewal tries again; a lease lost meanwhile ends in `finish`
                logger.exception("renewing alignment job leases failed")

    async def run_job(self, n: int, job: AlignmentJob) -> None:
        """One user's alignment, its persona write included; whatever fails, fails this job alone."""
        limit = self.settings.job_timeout_s
        work = asyncio.ensure_future(self._align_and_store(n, job))
        self._running[job.user_id] = work
        try:
            result = await asyncio.wait_for(work, timeout=limit)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the scheduler itself is being stopped
            logger.info("alignment job %s cancelled: its user was deleted", job.id)  # its row is gone
        except TimeoutError:
            self._fail(job, f"TimeoutError: not done within alignment.job_timeout_s={limit:g} s")
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc  # Ray wraps a worker's error; keep the real one
            logger.warning("alignment job %s failed: %r", job.id, cause)
            self._fail(job, short_reason(cause))  # the log above keeps the whole error
        else:
            if result is not None:
                self.metrics.users.labels("accepted" if result.get("accepted") else "rejected").inc()
                self._finish(job, "done", result=result)
            else:  # no such user (any more): its row is usually gone with it; if not, it ends here
                self.jobs.finish(job.id, self.worker, "failed", error="the user was deleted")
        finally:
            self._faults.pop(job.id, None)
            self._held.discard(job.id)
            if self._running.get(job.user_id) is work:
                self._running.pop(job.user_id)

    def _finish(
        self, job: AlignmentJob, state: Literal["done", "failed"], result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:  # fmt: skip
        if not self.jobs.finish(job.id, self.worker, state, result=result, error=error):
            # Its lease ran out and another worker took it (or its user was deleted): that run ends it.
            logger.warning(
                "alignment job %s was no longer held by %s: its result is not stored", job.id, self.worker
            )

    def _fail(self, job: AlignmentJob, error: str) -> None:
        self.metrics.users.labels("failed").inc()
        self._finish(job, "failed", error=error[:500])

    async def _written_before(self, job: AlignmentJob) -> dict[str, Any] | None:
        """A job taken again (its worker died): the result of an earlier run that wrote its persona."""
        if job.attempts <= 1:
            return None
        for version in reversed(await self.memory.persona_history(job.user_id) or []):
            if version.reason == "alignment" and version.details.get("job_id") == job.id:
                logger.info(
                    "alignment job %s: persona v%d was written by its earlier run", job.id, version.version
                )
                return {**version.details, "accepted": True, "persona_version": version.version,
                        "base_version": version.parent, "candidate": version.text, "recovered": True}  # fmt: skip
        return None

    async def _align_and_store(self, n: int, job: AlignmentJob) -> dict[str, Any] | None:
        written = await self._written_before(job)
        if written is not None:
            return written
        # The current persona, or the initial one created now; never re-creates a user deleted since the
        # job was queued, nor while its initial persona is written (checked inside that write).
        current = await self.memory.persona_for(job.user_id)
        if current is None:
            return None  # deleted: its job row is gone too
        outcome = await self.align(
            n % self.workers, job.user_id, current.text, current.version, self._faults.get(job.id)
        )
        self.metrics.tokens.labels("prompt").inc(outcome.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(outcome.completion_tokens)
        result = outcome.model_dump()
        if outcome.accepted and outcome.candidate:
            details = {
                "feedback": outcome.feedback, "score_before": outcome.score_before, "score_after": outcome.score_after,
                "metric": outcome.metric, "interactions": outcome.interactions, "prompt_tokens": outcome.prompt_tokens,
                "completion_tokens": outcome.completion_tokens, "seconds": outcome.seconds, "job_id": job.id,
            }  # fmt: skip
            if not self.jobs.renew(self.worker, [job.id]):  # another worker runs the job now: it writes
                result["accepted"] = False
                result["skipped"] = "the job's lease was lost: another worker runs it"
                return result
            stored = await self.memory.set_persona_if_current(
                job.user_id, outcome.candidate, outcome.base_version, details
            )
            result["persona_version"] = stored.version if stored else None
            if stored is None:
                result["accepted"] = False
                result["skipped"] = "the persona changed (or the user was deleted) while aligning"
        return result
